"""Deliver alert transitions to Prometheus Alertmanager, or to anything that accepts
Alertmanager's webhook JSON.

- :class:`AlertmanagerNotifier` pushes each alert to an Alertmanager
  (``POST {url}/api/v2/alerts``), so a team keeps its own routing, grouping and
  silences there. Alertmanager treats an alert as resolved once its ``endsAt`` has
  passed, so a firing alert carries ``endsAt`` :attr:`AlertmanagerNotifier.hold_s`
  seconds ahead and is re-sent by the worker's reminders (``[defaults] reminder``) while
  it fires; the resolve sends ``endsAt`` = the resolve time.
- :class:`WebhookNotifier` POSTs the JSON body Alertmanager itself sends to a webhook
  receiver (``version: "4"``), one alert per request.

Both send the labels ``alertname="CliffwatchDrop"`` (``"CliffwatchNoData"`` for a metric's
"no data" alert, see :mod:`cliffwatch.alerting.blind`), ``metric``, ``severity`` plus the
configured ones, and keep no memo. Any 2xx is success; 429, 5xx and connection errors
are retried with capped exponential backoff (0.5 s, 1 s, 2 s ... at most 8 s, or the
answer's Retry-After), ``attempts`` tries in all and no wait past ``max_elapsed``
seconds; then, or at once for any other 4xx, :class:`~cliffwatch.errors.DeliveryError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from cliffwatch.alerting.alert import Alert
from cliffwatch.alerting.notifiers import (
    JsonPoster,
    _check_http_url,
    _check_retries,
    _iso,
    _rate,
    headline,
    subject,
)
from cliffwatch.errors import ConfigError
from cliffwatch.rules.config import label_problem

__all__ = [
    "ALERTMANAGER",
    "ALERTNAME",
    "NO_DATA_ALERTNAME",
    "WEBHOOK",
    "AlertmanagerNotifier",
    "WebhookNotifier",
    "alert_annotations",
    "alert_labels",
    "fingerprint",
    "hold_for",
]

logger = logging.getLogger(__name__)

ALERTMANAGER = "alertmanager"
"""Channel name of :class:`AlertmanagerNotifier`."""
WEBHOOK = "webhook"
"""Channel name of :class:`WebhookNotifier`."""
ALERTNAME = "CliffwatchDrop"
NO_DATA_ALERTNAME = "CliffwatchNoData"
ALERTS_PATH = "/api/v2/alerts"
HOLD_WITHOUT_REMINDERS_S = 86_400
"""``endsAt`` horizon of a firing alert when reminders are off: nothing re-sends it."""
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert in webhooks


def hold_for(reminder_s: int) -> int:
    """How far ahead a firing alert's ``endsAt`` is put when the worker reminds every
    ``reminder_s`` seconds: two intervals (one lost reminder is survived), at least 5
    min; :data:`HOLD_WITHOUT_REMINDERS_S` when reminders are off (``0``)."""
    if reminder_s <= 0:
        return HOLD_WITHOUT_REMINDERS_S
    return max(300, 2 * reminder_s)


def alert_labels(alert: Alert, extra: Mapping[str, str]) -> dict[str, str]:
    """The alert's identity in Alertmanager: alertname, metric, severity and ``extra``.
    A "no data" alert is ``alertname="CliffwatchNoData"`` with the metric it is about."""
    name = ALERTNAME if alert.no_data_of is None else NO_DATA_ALERTNAME
    return {**extra, "alertname": name, "metric": subject(alert), "severity": alert.severity}


def alert_annotations(alert: Alert) -> dict[str, str]:
    """``summary`` (one line in words) and ``description`` (rate, normal rate, score)."""
    summary = headline(alert, subject(alert))
    description = (
        f"rate {_rate(alert.rate)}/s, normal {_rate(alert.baseline)}/s,"
        f" score {alert.score:.1f} (threshold {alert.threshold:.1f}),"
        f" since {_iso(alert.started_at)}"
    )
    return {"summary": summary, "description": description, "incident": alert.incident_id}


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable 16-hex-digit id of a label set (Alertmanager's fingerprint is one too)."""
    text = "\xff".join(f"{k}\xfe{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _poster(url: str, what: str, timeout: float, attempts: int, max_elapsed: float) -> JsonPoster:
    _check_http_url(url, f"{what} url")
    _check_retries(timeout, attempts)
    return JsonPoster(url, what, timeout, attempts, max_elapsed)


def _where(url: str) -> str:
    """Scheme and host of ``url`` only (a webhook path or query may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class AlertmanagerNotifier:
    """Pushes alerts to an Alertmanager through its API v2 (``POST {url}/api/v2/alerts``).

    A firing alert has ``startsAt`` = when the incident started and ``endsAt`` =
    ``hold_s`` seconds after now (see :func:`hold_for`); :meth:`remind` sends it again
    with a fresh ``endsAt``, so it stays firing while the worker reminds. The resolve
    sends ``endsAt`` = the resolve time. ``generator_url``, if given, links back (e.g.
    to a dashboard). ``send`` returns ``{}`` (no memo: the labels are the identity).

    Raises :class:`ConfigError` for a URL that is not http(s), unusable ``labels``
    (:func:`~cliffwatch.rules.config.label_problem`), ``hold_s`` < 60, a timeout <= 0
    or attempts < 1; ``send`` and ``remind`` raise :class:`DeliveryError` as the module
    docstring says.
    """

    def __init__(
        self,
        *,
        url: str,
        labels: Mapping[str, str] | None = None,
        hold_s: int = 3600,
        generator_url: str = "",
        timeout: float = 5.0,
        attempts: int = 4,
        max_elapsed: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_http_url(url, "AlertmanagerNotifier url")
        self._poster = _poster(
            url.rstrip("/") + ALERTS_PATH, "Alertmanager", timeout, attempts, max_elapsed
        )
        self.labels = dict(labels or {})
        problem = label_problem(self.labels)
        if problem:
            raise ConfigError(f"AlertmanagerNotifier labels: {problem}")
        if hold_s < 60:
            raise ConfigError(f"AlertmanagerNotifier hold_s must be >= 60, not {hold_s!r}")
        if generator_url:
            _check_http_url(generator_url, "AlertmanagerNotifier generator_url")
        self.url = url
        self.hold_s = hold_s
        self.generator_url = generator_url
        self.clock = clock

    def __repr__(self) -> str:
        return f"AlertmanagerNotifier(url={self.url!r}, labels={self.labels!r})"

    def send(self, alert: Alert, memo: Mapping[str, str]) -> dict[str, str]:
        """Push the firing or resolved alert; return ``{}``. Raises DeliveryError."""
        self._poster.post(json.dumps([self.payload(alert)]).encode())
        return {}

    def remind(self, alert: Alert, memo: Mapping[str, str]) -> None:
        """Push the still-firing alert again, moving its ``endsAt`` ahead. Raises
        DeliveryError."""
        self._poster.post(json.dumps([self.payload(alert)]).encode())

    def payload(self, alert: Alert) -> dict[str, Any]:
        """The API v2 ``postableAlert`` for ``alert``."""
        if alert.state == "firing":
            ends = max(float(alert.at), self.clock()) + self.hold_s
        else:
            ends = alert.at
        out: dict[str, Any] = {
            "labels": alert_labels(alert, self.labels),
            "annotations": alert_annotations(alert),
            "startsAt": _iso(alert.started_at),
            "endsAt": _iso(int(ends)),
        }
        if self.generator_url:
            out["generatorURL"] = self.generator_url
        return out


class WebhookNotifier:
    """POSTs each alert to ``url`` in Alertmanager's webhook JSON shape (``version:
    "4"``, ``status``, ``receiver``, ``groupLabels``, ``commonLabels``,
    ``commonAnnotations``, ``externalURL``, ``alerts``), one alert per request. A firing
    alert's ``endsAt`` is ``0001-01-01T00:00:00Z``, as Alertmanager sends it. ``send``
    returns ``{}``. ``repr`` shows only the URL's scheme and host.

    Raises :class:`ConfigError` for a URL that is not http(s), unusable ``labels``, a
    timeout <= 0 or attempts < 1; ``send`` raises :class:`DeliveryError` as the module
    docstring says (the error names the host, never the URL's path).
    """

    def __init__(
        self,
        *,
        url: str,
        labels: Mapping[str, str] | None = None,
        receiver: str = "cliffwatch",
        external_url: str = "",
        timeout: float = 5.0,
        attempts: int = 4,
        max_elapsed: float = 30.0,
    ) -> None:
        _check_http_url(url, "WebhookNotifier url", show=False)
        self._poster = _poster(url, f"webhook {_where(url)}", timeout, attempts, max_elapsed)
        self.labels = dict(labels or {})
        problem = label_problem(self.labels)
        if problem:
            raise ConfigError(f"WebhookNotifier labels: {problem}")
        self.receiver = receiver
        self.external_url = external_url

    def __repr__(self) -> str:
        return f"WebhookNotifier(url='{self._poster.what.removeprefix('webhook ')}/...')"

    def send(self, alert: Alert, memo: Mapping[str, str]) -> dict[str, str]:
        """POST the firing or resolved alert; return ``{}``. Raises DeliveryError."""
        self._poster.post(json.dumps(self.payload(alert)).encode())
        return {}

    def payload(self, alert: Alert) -> dict[str, Any]:
        """The webhook body for ``alert``."""
        labels = alert_labels(alert, self.labels)
        annotations = alert_annotations(alert)
        group = {"alertname": ALERTNAME, "metric": alert.metric}
        group_key = "{}:{" + ",".join(f"{k}={json.dumps(v)}" for k, v in group.items()) + "}"
        return {
            "version": "4",
            "groupKey": group_key,
            "truncatedAlerts": 0,
            "status": alert.state,
            "receiver": self.receiver,
            "groupLabels": group,
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": self.external_url,
            "alerts": [
                {
                    "status": alert.state,
                    "labels": labels,
                    "annotations": annotations,
                    "startsAt": _iso(alert.started_at),
                    "endsAt": _iso(alert.at) if alert.state == "resolved" else ZERO_TIME,
                    "generatorURL": "",
                    "fingerprint": fingerprint(labels),
                }
            ],
        }
