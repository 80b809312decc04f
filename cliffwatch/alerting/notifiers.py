"""Deliver alert transitions to Slack (slack-sdk) and PagerDuty (Events API v2).

A notifier's ``send(alert, memo)`` delivers one transition. ``memo`` holds what earlier
sends for the same incident returned (the worker keeps it in Redis from firing to
resolve, so it survives restarts); ``send`` returns the entries to keep. Each notifier
uses its own keys (``slack_*``, ``pagerduty_*``), so the worker can merge them into one
mapping.

Every failure to deliver, after bounded retries, raises
:class:`~cliffwatch.errors.DeliveryError`. Secrets (Slack token, webhook URL, PagerDuty
routing key) never appear in those errors, in log records or in ``repr()``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from http.client import HTTPException
from typing import Any, Protocol
from urllib.parse import urlsplit

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry import (
    BackoffRetryIntervalCalculator,
    ConnectionErrorRetryHandler,
    HttpRequest,
    HttpResponse,
    RateLimitErrorRetryHandler,
    RetryHandler,
    RetryState,
)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
from slack_sdk.web import SlackResponse
from slack_sdk.webhook import WebhookClient

from cliffwatch.alerting.alert import Alert
from cliffwatch.errors import ConfigError, DeliveryError

__all__ = [
    "PAGERDUTY_DEDUP_KEY",
    "SLACK_CHANNEL",
    "SLACK_TS",
    "Notifier",
    "PagerDutyNotifier",
    "SlackNotifier",
    "escape_mrkdwn",
    "headline",
    "pagerduty_dedup_key",
    "reminder_text",
    "sparkline",
    "subject",
]

logger = logging.getLogger(__name__)

SLACK_CHANNEL = "slack_channel"
"""Memo key: id of the Slack channel the firing message went to."""
SLACK_TS = "slack_ts"
"""Memo key: ``ts`` of the firing Slack message."""
PAGERDUTY_DEDUP_KEY = "pagerduty_dedup_key"
"""Memo key: the PagerDuty ``dedup_key`` of the incident."""

PAGERDUTY_SEVERITY = {"page": "critical", "notify": "warning"}
SUMMARY_LIMIT = 1024  # characters PagerDuty accepts in payload.summary
SPARK_BARS = "▁▂▃▄▅▆▇█"
SPARK_GAP = "·"


class Notifier(Protocol):
    """What the worker needs of a notifier."""

    def send(self, alert: Alert, memo: Mapping[str, str]) -> dict[str, str]:
        """Deliver ``alert``; return the memo entries to keep. Raises DeliveryError."""
        ...


# -- wording ----------------------------------------------------------------------------


def escape_mrkdwn(text: str) -> str:
    """Escape ``&``, ``<`` and ``>`` so Slack shows ``text`` literally.

    Slack reads ``<...>`` as links and mentions (``<!channel>``, ``<@U123>``); escaped,
    a metric name can neither ping anyone nor inject a link.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    """``text`` as escaped inline code (a backtick inside would end the code span)."""
    return "`" + escape_mrkdwn(text.replace("`", "'")) + "`"


def _rate(value: float) -> str:
    """An events/s figure in a few significant digits: ``0.4``, ``19.8``, ``1234``."""
    if value == 0:
        return "0"
    if abs(value) < 1:
        return f"{value:.2g}"
    if abs(value) < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _change(rate: float, baseline: float) -> str:
    """The relative change from ``baseline`` to ``rate``: ``−98%``; empty without a baseline."""
    if baseline <= 0:
        return ""
    percent = round((rate - baseline) / baseline * 100)
    return f"−{-percent}%" if percent < 0 else f"+{percent}%"


def _iso(epoch: int) -> str:
    """UTC ISO 8601 of an epoch second: ``2024-05-01T12:00:00Z``."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: int) -> str:
    """``45 s``, ``12 min``, ``3 h 5 min``."""
    seconds = max(0, seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _fell(alert: Alert) -> str:
    """``fell to 0.4/s from 19.8/s (−98%)``."""
    change = _change(alert.rate, alert.baseline)
    words = f"fell to {_rate(alert.rate)}/s from {_rate(alert.baseline)}/s"
    return f"{words} ({change})" if change else words


def _recovered(alert: Alert) -> str:
    """``is back to 18.7/s (normal 19.8/s) after 12 min``."""
    return (
        f"is back to {_rate(alert.rate)}/s (normal {_rate(alert.baseline)}/s)"
        f" after {_duration(alert.at - alert.started_at)}"
    )


def _no_data_for(alert: Alert) -> str:
    """How long a "no data" alert's metric had no data when it fired: ``12 s``."""
    seconds = -alert.score
    return _duration(int(seconds)) if math.isfinite(seconds) else "a while"


def subject(alert: Alert) -> str:
    """The name an alert is about: the metric, also for its "no data" alert."""
    return alert.no_data_of or alert.metric


def headline(alert: Alert, name: str) -> str:
    """What happened, after the (formatted) ``name`` of :func:`subject`: for a drop
    ``orders.created fell to 0.4/s from 19.8/s (−98%)`` or ``... is back to 18.7/s
    (normal 19.8/s) after 12 min``; for a "no data" alert ``orders.created: no data for
    12 s — the app processes that send it stopped reporting ...`` or ``orders.created has
    data again after 3 min: 49.2/s (normal 50.0/s)``."""
    if alert.no_data_of is None:
        return f"{name} {_fell(alert) if alert.state == 'firing' else _recovered(alert)}"
    if alert.state == "firing":
        return (
            f"{name}: no data for {_no_data_for(alert)} — the app processes that send it"
            " stopped reporting (other apps still flush); not a drop of the business,"
            " not paged"
        )
    again = f"{name} has data again after {_duration(alert.at - alert.started_at)}"
    if not math.isfinite(alert.rate):
        return again
    normal = f" (normal {_rate(alert.baseline)}/s)" if math.isfinite(alert.baseline) else ""
    return f"{again}: {_rate(alert.rate)}/s{normal}"


def reminder_text(alert: Alert) -> str:
    """``still down: 0.4/s vs 19.8/s normal, for 30 min`` (``alert.at`` is now); for a
    "no data" alert ``still no data, for 30 min (normally 19.8/s)``."""
    if alert.no_data_of is not None:
        normal = f" (normally {_rate(alert.baseline)}/s)" if math.isfinite(alert.baseline) else ""
        return f"still no data, for {_duration(alert.at - alert.started_at)}{normal}"
    return (
        f"still down: {_rate(alert.rate)}/s vs {_rate(alert.baseline)}/s normal,"
        f" for {_duration(alert.at - alert.started_at)}"
    )


def sparkline(rates: Iterable[float]) -> str:
    """One character per rate, ``▁`` (zero) to ``█`` (the largest), ``·`` where a rate is
    NaN (no data); ``""`` when no rate is known. Negative rates count as zero."""
    values = [float(r) for r in rates]
    known = [max(0.0, r) for r in values if math.isfinite(r)]
    if not known:
        return ""
    top = max(known)
    top_bar = len(SPARK_BARS) - 1
    out = []
    for r in values:
        if not math.isfinite(r):
            out.append(SPARK_GAP)
        else:
            out.append(SPARK_BARS[round(max(0.0, r) / top * top_bar) if top > 0 else 0])
    return "".join(out)


def _picture(alert: Alert) -> str:
    """``Last 30 min, events/s per minute (0 to 52/s): `▇▇█▇▁▁```; ``""`` without data."""
    line = sparkline(alert.recent)
    if not line:
        return ""
    known = [r for r in alert.recent if math.isfinite(r)]
    scale = f"{_rate(max(0.0, min(known)))} to {_rate(max(known))}/s"
    return f"*Last {len(alert.recent)} min*, events/s per minute ({scale}): `{line}`"


def _link(href: str, text: str) -> str:
    """A Slack mrkdwn link whose URL and text cannot break out of ``<...|...>``."""
    safe = escape_mrkdwn(href).replace("|", "%7C")
    return f"<{safe}|{escape_mrkdwn(text).replace('|', '/')}>"


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: Slack must not auto-link URLs or parse @here-style mentions in the text.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _slack_message(alert: Alert) -> tuple[str, list[dict[str, Any]]]:
    """The plain-text fallback and the Block Kit blocks for ``alert``, all data escaped."""
    metric = _code(subject(alert))
    score = f"{alert.score:.1f} (threshold {alert.threshold:.1f})"
    if alert.no_data_of is not None:
        score = f"{_no_data_for(alert)} (after {_duration(int(-alert.threshold))})"
    if alert.state == "firing":
        icon = ":rotating_light:" if alert.severity == "page" else ":warning:"
        label = alert.severity.upper()
        said = headline(alert, metric)
        text = f"{icon} {label}: {said}, since {_iso(alert.started_at)}"
        fields = [
            f"*Started*\n{_iso(alert.started_at)}",
            f"*Severity*\n{alert.severity}",
            f"*Rate now / normal*\n{_rate(alert.rate)}/s / {_rate(alert.baseline)}/s",
            f"*Score*\n{score}",
        ]
        if alert.no_data_of is not None:
            fields[2:] = [
                f"*Normal rate*\n{_rate(alert.baseline)}/s",
                f"*No data for*\n{score}",
            ]
    else:
        icon, label = ":white_check_mark:", "RESOLVED"
        said = headline(alert, metric)
        text = f"{icon} {label}: {said}"
        fields = [
            f"*Started*\n{_iso(alert.started_at)}",
            f"*Resolved*\n{_iso(alert.at)}",
            f"*Severity*\n{alert.severity}",
            f"*Rate now / normal*\n{_rate(alert.rate)}/s / {_rate(alert.baseline)}/s"
            if alert.no_data_of is not None
            else f"*Score*\n{score}",
        ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": _mrkdwn(f"{icon} *{label}* {said}")},
        {"type": "section", "fields": [_mrkdwn(field) for field in fields]},
    ]
    picture = _picture(alert)
    if picture:
        blocks.append({"type": "section", "text": _mrkdwn(picture)})
    context = [f"incident {_code(alert.incident_id)}"]
    context += [_link(href, link_text) for href, link_text in alert.links]
    blocks.append({"type": "context", "elements": [_mrkdwn(" · ".join(context))]})
    return text, blocks


def _pagerduty_summary(alert: Alert) -> str:
    """One line for the page, at most 1024 characters."""
    summary = (
        f"{alert.metric} {_fell(alert)}, score {alert.score:.1f}"
        f" (threshold {alert.threshold:.1f}), since {_iso(alert.started_at)}"
    )
    if len(summary) > SUMMARY_LIMIT:
        summary = summary[: SUMMARY_LIMIT - 1] + "…"
    return summary


# -- secrets ----------------------------------------------------------------------------


class _Redactor(logging.Filter):
    """Replaces secrets in strings and in the log records of the SDK logger it filters.

    As a filter it also lowers the SDK's ERROR records to WARNING: a failed attempt that
    will be retried is a warning; the final failure is the DeliveryError we raise.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a URL is replaced before its own path.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = self(message), None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _sdk_logger(redactor: _Redactor) -> logging.Logger:
    """A logger for one slack-sdk client: redacted, WARNING and up, into ours.

    Made outside the logging registry so its filter belongs to one notifier only.
    """
    sdk_logger = logging.Logger(f"{__name__}.slack_sdk", logging.WARNING)
    sdk_logger.parent = logger
    sdk_logger.addFilter(redactor)
    return sdk_logger


def _check_http_url(url: str, what: str, *, show: bool = True) -> None:
    """Raise ConfigError unless ``url`` is an http(s) URL (echoing it only if ``show``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        shown = f", not {url!r}" if show else ""
        raise ConfigError(f"{what} must be an http:// or https:// URL{shown}")


def _check_retries(timeout: float, attempts: int) -> None:
    if not timeout > 0:
        raise ConfigError(f"timeout must be > 0 seconds, not {timeout!r}")
    if attempts < 1:
        raise ConfigError(f"attempts must be >= 1, not {attempts!r}")


# -- Slack ------------------------------------------------------------------------------


class _BoundedRateLimitRetry(RateLimitErrorRetryHandler):
    """The SDK's 429 handler (sleeps Retry-After), but gives up when that is over ``max_wait``."""

    def __init__(self, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        assert response is not None  # the parent retries only responses with status 429
        values = [v for k, vs in response.headers.items() if k.lower() == "retry-after" for v in vs]
        if not values:
            return True  # the SDK then waits 1-2 s
        value = str(values[0]).strip()
        return value.isdigit() and int(value) <= self.max_wait


class _TransientApiErrorRetry(RetryHandler):
    """Retries an HTTP 200 answer whose ``error`` says Slack itself had a passing problem."""

    TRANSIENT = frozenset(
        {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
    )

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 200 or not response.body:
            return False
        return response.body.get("ok") is False and response.body.get("error") in self.TRANSIENT


def _slack_retry_handlers(attempts: int, max_retry_after: float) -> list[RetryHandler]:
    """Bounded retries: connection errors, 429 (after Retry-After), 500/503, transient errors."""
    retries = attempts - 1
    backoff = BackoffRetryIntervalCalculator(backoff_factor=0.5)
    return [
        ConnectionErrorRetryHandler(
            max_retry_count=retries,
            interval_calculator=backoff,
            error_types=[urllib.error.URLError, ConnectionError, TimeoutError],
        ),
        _BoundedRateLimitRetry(max_retry_count=retries, max_wait=max_retry_after),
        ServerErrorRetryHandler(max_retry_count=retries, interval_calculator=backoff),
        _TransientApiErrorRetry(max_retry_count=retries, interval_calculator=backoff),
    ]


class _SlackRefused(DeliveryError):
    """Slack answered HTTP 200 with ``ok: false`` (e.g. ``message_not_found``)."""


class SlackNotifier:
    """Posts alerts to Slack with a bot token (Web API) or an incoming webhook.

    With a bot ``token`` (and a ``channel``), firing posts a message and returns
    ``{"slack_channel": <channel id>, "slack_ts": <ts>}``; resolved edits that message
    to show the recovery and replies in its thread (also broadcast to the channel). If
    the memo has no ``slack_ts``, resolved posts a new message instead. With a
    ``webhook_url``, every transition is a new message and the memo stays empty.

    Connection errors, 500/503, ``internal_error``-like answers and 429 (after its
    Retry-After, if at most ``max_retry_after`` seconds) are retried by slack-sdk
    retry handlers with exponential backoff, ``attempts`` tries in all;
    then, or on any other error, :class:`DeliveryError` is raised. Raises
    :class:`ConfigError` when given neither or both of ``token`` and ``webhook_url``, a
    token without a channel, or a URL that is not http(s). ``timeout`` is per request,
    in seconds (rounded up to whole seconds).
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        webhook_url: str | None = None,
        channel: str | None = None,
        base_url: str = "https://slack.com/api/",
        timeout: float = 5.0,
        attempts: int = 3,
        max_retry_after: float = 10.0,
    ) -> None:
        if (token is None) == (webhook_url is None):
            raise ConfigError("SlackNotifier needs exactly one of token= and webhook_url=")
        _check_retries(timeout, attempts)
        secrets = [token or "", webhook_url or "", urlsplit(webhook_url or "").path]
        self._redact = _Redactor(s for s in secrets if len(s) > 1)
        sdk_logger = _sdk_logger(self._redact)
        handlers = _slack_retry_handlers(attempts, max_retry_after)
        seconds = max(1, math.ceil(timeout))
        self._channel = channel
        self._base_url = base_url
        self._client: WebClient | None = None
        self._webhook: WebhookClient | None = None
        if token is not None:
            if not token.strip():
                raise ConfigError("SlackNotifier token= is empty")
            if not channel:
                raise ConfigError("SlackNotifier with token= needs channel=")
            _check_http_url(base_url, "SlackNotifier base_url")
            self._client = WebClient(
                token=token,
                base_url=base_url,
                timeout=seconds,
                logger=sdk_logger,
                retry_handlers=handlers,
            )
        else:
            assert webhook_url is not None
            _check_http_url(webhook_url, "SlackNotifier webhook_url", show=False)
            self._webhook = WebhookClient(
                webhook_url, timeout=seconds, logger=sdk_logger, retry_handlers=handlers
            )

    def __repr__(self) -> str:
        if self._webhook is not None:
            return "SlackNotifier(webhook_url='***')"
        return f"SlackNotifier(channel={self._channel!r}, base_url={self._base_url!r})"

    def send(self, alert: Alert, memo: Mapping[str, str]) -> dict[str, str]:
        """Deliver one transition of ``alert``; return the memo entries to keep.

        Raises DeliveryError when Slack refuses or cannot be reached after retries.
        """
        text, blocks = _slack_message(alert)
        if self._webhook is not None:
            self._post_webhook(text, blocks)
            return {}
        assert self._channel is not None
        channel, ts = memo.get(SLACK_CHANNEL) or self._channel, memo.get(SLACK_TS)
        if alert.state == "firing" or not ts:
            return self.post(text, blocks)
        try:
            self._call("chat.update", channel=channel, ts=ts, text=text, blocks=blocks)
        except _SlackRefused as refused:
            # The message is gone or can no longer be edited: the thread reply still tells.
            logger.warning("%s; replying in its thread anyway", refused)
        self._call(
            "chat.postMessage",
            channel=channel,
            thread_ts=ts,
            reply_broadcast=True,
            text=text,
            blocks=blocks[:1],
            unfurl_links=False,
            unfurl_media=False,
        )
        return {SLACK_CHANNEL: channel, SLACK_TS: ts}

    def remind(self, alert: Alert, memo: Mapping[str, str]) -> None:
        """Say that ``alert``'s incident is still firing (:func:`reminder_text`): a reply
        in the firing message's thread (not broadcast) when the memo has its ``ts``, else
        a new message. Raises DeliveryError as :meth:`send` does."""
        text = f":hourglass: {_code(subject(alert))} {reminder_text(alert)}"
        blocks = [{"type": "section", "text": _mrkdwn(text)}]
        if self._webhook is not None:
            self._post_webhook(text, blocks)
            return
        ts = memo.get(SLACK_TS)
        thread = {"thread_ts": ts} if ts else {}
        self._call(
            "chat.postMessage",
            channel=memo.get(SLACK_CHANNEL) or self._channel,
            text=text,
            blocks=blocks,
            unfurl_links=False,
            unfurl_media=False,
            **thread,
        )

    def edit(self, alert: Alert, memo: Mapping[str, str]) -> bool:
        """Edit the incident's firing message (the memo's ``slack_ts``) to show ``alert``,
        without a thread reply; False when there is no message to edit (webhook, no
        ``ts``, or Slack refused, e.g. it is gone). Raises DeliveryError when Slack
        cannot be reached."""
        ts, channel = memo.get(SLACK_TS), memo.get(SLACK_CHANNEL) or self._channel
        if self._client is None or not ts:
            return False
        text, blocks = _slack_message(alert)
        try:
            self._call("chat.update", channel=channel, ts=ts, text=text, blocks=blocks)
        except _SlackRefused as refused:
            logger.warning("%s; not edited", refused)
            return False
        return True

    def post(self, text: str, blocks: list[dict[str, Any]]) -> dict[str, str]:
        """Post one new message (e.g. a digest) to the channel; return its
        ``{"slack_channel": ..., "slack_ts": ...}`` (empty through a webhook). Raises
        DeliveryError as :meth:`send` does."""
        if self._webhook is not None:
            self._post_webhook(text, blocks)
            return {}
        answer = self._call(
            "chat.postMessage",
            channel=self._channel,
            text=text,
            blocks=blocks,
            unfurl_links=False,
            unfurl_media=False,
        )
        return {SLACK_CHANNEL: str(answer["channel"]), SLACK_TS: str(answer["ts"])}

    def _call(self, method: str, **arguments: Any) -> SlackResponse:
        """Call a Web API method; raise DeliveryError (never chained to the SDK's error)."""
        assert self._client is not None
        refused = False
        try:
            if method == "chat.update":
                return self._client.chat_update(**arguments)
            return self._client.chat_postMessage(**arguments)
        except SlackApiError as error:
            answer = error.response
            code = answer.get("error") if isinstance(answer.data, dict) else None
            refused = answer.status_code == 200
            failure = f"Slack {method} failed: HTTP {answer.status_code}, error {code!r}"
        except (SlackClientError, OSError, HTTPException, ValueError) as error:
            failure = f"Slack {method} could not be reached: {type(error).__name__}: {error}"
        # Raised outside the except block: the SDK's error carries the request headers.
        raise (_SlackRefused if refused else DeliveryError)(self._redact(failure))

    def _post_webhook(self, text: str, blocks: list[dict[str, Any]]) -> None:
        """POST one message to the incoming webhook; raise DeliveryError unless it is taken."""
        assert self._webhook is not None
        try:
            answer = self._webhook.send(text=text, blocks=blocks, unfurl_links=False)
        except (SlackClientError, OSError, HTTPException, ValueError) as error:
            failure = f"Slack webhook could not be reached: {type(error).__name__}: {error}"
        else:
            if answer.status_code == 200:
                return
            failure = f"Slack webhook answered HTTP {answer.status_code}: {answer.body[:200]!r}"
        raise DeliveryError(self._redact(failure))


# -- PagerDuty --------------------------------------------------------------------------


def pagerduty_dedup_key(alert: Alert) -> str:
    """The PagerDuty ``dedup_key`` of ``alert``'s incident: the same on trigger and resolve."""
    return f"cliffwatch/{alert.metric}/{alert.started_at}"


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class JsonPoster:
    """POSTs JSON bodies to one URL: any 2xx is success; 429, 5xx and connection errors
    are retried with capped exponential backoff (0.5 s, 1 s, 2 s ... at most 8 s; the
    answer's Retry-After instead, when it has one), ``attempts`` tries in all and no wait
    past ``max_elapsed`` seconds from the first; then :class:`DeliveryError`. Any other
    4xx raises :class:`DeliveryError` at once. ``what`` names the service in messages,
    ``redact`` cleans them of secrets and ``detail`` shortens an error body."""

    def __init__(
        self,
        url: str,
        what: str,
        timeout: float,
        attempts: int,
        max_elapsed: float,
        *,
        redact: Callable[[str], str] = str,
        detail: Callable[[bytes], str] = lambda answer: repr(
            answer[:200].decode("utf-8", "replace").strip()
        ),
    ) -> None:
        self.url, self.what = url, what
        self.timeout, self.attempts, self.max_elapsed = timeout, attempts, max_elapsed
        self._redact, self._detail = redact, detail

    def post(self, body: bytes) -> None:
        """POST ``body`` (JSON); raise DeliveryError as the class docstring says."""
        deadline = time.monotonic() + self.max_elapsed
        for attempt in range(1, self.attempts + 1):
            wait = min(8.0, 0.5 * 2 ** (attempt - 1))
            try:
                status, retry_after, answer = self._post_once(body)
            except (OSError, HTTPException) as error:
                problem = f"{self.what} could not be reached: {type(error).__name__}: {error}"
            else:
                if 200 <= status < 300:
                    return
                problem = f"{self.what} answered HTTP {status}: {self._detail(answer)}"
                if status != 429 and status < 500:
                    raise DeliveryError(self._redact(problem))
                if retry_after is not None:
                    wait = retry_after
            problem = self._redact(problem)
            if attempt == self.attempts or time.monotonic() + wait > deadline:
                raise DeliveryError(f"{problem} (gave up after {attempt} attempts)")
            logger.warning("%s; retrying in %.1f s (attempt %d)", problem, wait, attempt)
            time.sleep(wait)

    def _post_once(self, body: bytes) -> tuple[int, float | None, bytes]:
        """One POST: (status, Retry-After seconds or None, response body)."""
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "cliffwatch"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, None, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, _retry_after(error.headers.get("Retry-After")), error.read()


class PagerDutyNotifier:
    """Triggers and resolves PagerDuty incidents through the Events API v2.

    The ``dedup_key`` is :func:`pagerduty_dedup_key` (``cliffwatch/<metric>/<started_at>``),
    so trigger and resolve match across worker restarts; ``send`` returns
    ``{"pagerduty_dedup_key": key}``.

    Any 2xx is success. 429 and 5xx answers and connection errors are retried with
    capped exponential backoff (0.5 s, 1 s, 2 s ... at most 8 s; the answer's
    Retry-After instead, when it has one), ``attempts`` tries in all and no wait past
    ``max_elapsed`` seconds from the first try; then :class:`DeliveryError`. Any other
    4xx (400: invalid event) raises :class:`DeliveryError` at once. Raises
    :class:`ConfigError` for an empty routing key, a URL that is not http(s), a timeout
    <= 0 or attempts < 1.
    """

    def __init__(
        self,
        *,
        routing_key: str,
        url: str = "https://events.pagerduty.com/v2/enqueue",
        source: str = "cliffwatch",
        timeout: float = 5.0,
        attempts: int = 4,
        max_elapsed: float = 30.0,
    ) -> None:
        if not routing_key or not routing_key.strip():
            raise ConfigError("PagerDutyNotifier routing_key= is empty")
        _check_http_url(url, "PagerDutyNotifier url")
        _check_retries(timeout, attempts)
        self._routing_key = routing_key
        self._redact = _Redactor([routing_key])
        self._url = url
        self._poster = JsonPoster(
            url,
            "PagerDuty",
            timeout,
            attempts,
            max_elapsed,
            redact=self._redact,
            detail=_pagerduty_detail,
        )
        self._source = source

    def __repr__(self) -> str:
        return f"PagerDutyNotifier(url={self._url!r}, source={self._source!r})"

    def send(self, alert: Alert, memo: Mapping[str, str]) -> dict[str, str]:
        """Trigger (firing) or resolve (resolved) the incident; return the memo to keep.

        Raises DeliveryError when PagerDuty refuses the event or cannot be reached after
        retries.
        """
        dedup_key = memo.get(PAGERDUTY_DEDUP_KEY) or pagerduty_dedup_key(alert)
        event: dict[str, Any] = {"routing_key": self._routing_key, "dedup_key": dedup_key}
        if alert.state == "firing":
            event["event_action"] = "trigger"
            event["payload"] = {
                "summary": _pagerduty_summary(alert),
                "source": self._source,
                "severity": PAGERDUTY_SEVERITY[alert.severity],
                "timestamp": _iso(alert.at),
                "component": alert.metric,
                "class": "rate drop",
                "custom_details": {
                    "rate": alert.rate,
                    "baseline": alert.baseline,
                    "score": alert.score,
                    "threshold": alert.threshold,
                    "incident_id": alert.incident_id,
                    "started_at": _iso(alert.started_at),
                },
            }
            if alert.links:
                event["links"] = [{"href": href, "text": text} for href, text in alert.links]
        else:
            event["event_action"] = "resolve"
        self._poster.post(json.dumps(event).encode())
        return {PAGERDUTY_DEDUP_KEY: dedup_key}


def _pagerduty_detail(answer: bytes) -> str:
    """The useful part of a PagerDuty error body, short."""
    try:
        parsed = json.loads(answer)
    except ValueError:
        return repr(answer[:200].decode("utf-8", "replace"))
    if not isinstance(parsed, dict):
        return repr(parsed)[:200]
    parts = [str(parsed.get(key)) for key in ("status", "message") if parsed.get(key)]
    errors = parsed.get("errors")
    if isinstance(errors, list) and errors:
        parts.append("; ".join(str(e) for e in errors[:5]))
    return ": ".join(parts)[:500] or repr(parsed)[:200]
