"""A local HTTP stand-in for Slack and PagerDuty that records every request.

::

    with Recorder() as stub:
        notifier = PagerDutyNotifier(routing_key="k" * 32, url=stub.pagerduty_url)
        ...
        stub.fail_next(1, 500)                      # the next request gets HTTP 500
        [event] = stub.wait_for(lambda rs: len(rs) >= 1, timeout=5)

One :class:`Recorder` serves, on 127.0.0.1 and a free port, in a daemon thread:

- the Slack Web API under ``/api/``: ``chat.postMessage`` answers
  ``{"ok": true, "channel": <id>, "ts": <unique>}`` (a ``#name`` becomes a stable
  ``C...`` id, as Slack does), ``chat.update`` of a known ``ts`` answers ok and of an
  unknown one ``message_not_found``, ``auth.test`` answers ok, other methods
  ``unknown_method``; without ``Authorization: Bearer ...`` everything is ``not_authed``;
- a Slack incoming webhook under ``/services/``: ``200 ok``, or ``400 no_text``;
- the PagerDuty Events API v2 at ``/v2/enqueue``: ``202 {"status": "success", ...}``,
  or ``400 invalid event`` when the event lacks what PagerDuty requires;
- Alertmanager's API at ``/api/v2/alerts``: ``200`` for a JSON list of alerts that each
  have string ``labels`` (and RFC 3339 ``startsAt``/``endsAt`` when given), else ``400``;
- a webhook receiver at ``/hooks/alertmanager``: ``200 ok`` for a body shaped like
  Alertmanager's webhook JSON (``version`` ``"4"``, ``status``, ``alerts``), else ``400``.

A request is recorded before it is answered, so once a client call has returned its
request is in :attr:`Recorder.requests`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

SLACK_API_PATH = "/api/"
SLACK_WEBHOOK_PATH = "/services/T0000CLIFF/B0000CLIFF/hooksecretXXXXXXXXXXXXXXX"
PAGERDUTY_PATH = "/v2/enqueue"
PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")
ALERTMANAGER_PATH = "/api/v2/alerts"
WEBHOOK_PATH = "/hooks/alertmanager"


@dataclass(frozen=True)
class Request:
    """One recorded request. Header names are lower case."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    """The parsed body, if it was JSON."""
    form: dict[str, str] | None = None
    """The parsed body, if it was form-encoded (first value of each field)."""
    received_at: float = 0.0
    """``time.monotonic()`` when it arrived."""

    @property
    def data(self) -> Any:
        """The parsed body, JSON or form, whichever it was (None if neither)."""
        return self.json if self.json is not None else self.form


@dataclass
class _Failure:
    remaining: int
    status: int
    headers: dict[str, str]
    body: Any
    path: str | None = None


@dataclass
class _SlackState:
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    ts: Iterator[int] = field(default_factory=lambda: itertools.count(1))


def slack_channel_id(channel: str) -> str:
    """The id the stub gives ``channel``: itself if it looks like an id, else a stable ``C...``."""
    if channel[:1] in ("C", "G", "D") and channel.isalnum() and channel.isupper():
        return channel
    return "C" + hashlib.sha1(channel.encode()).hexdigest()[:10].upper()


class Recorder:
    """Local Slack + PagerDuty stand-in; see the module docstring. Use as a context manager.

    Raises OSError from ``start()`` if it cannot bind a port.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._requests: list[Request] = []
        self._failures: list[_Failure] = []
        self._slack = _SlackState()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Recorder:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread; return self."""
        recorder = self

        class Handler(_Handler):
            owner = recorder

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"httpstub:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port (waits at most 5 s for the thread)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- addresses ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port served on."""
        assert self._server is not None, "Recorder is not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def slack_api_url(self) -> str:
        """For ``SlackNotifier(base_url=...)`` / ``WebClient(base_url=...)``."""
        return self.base_url + SLACK_API_PATH

    @property
    def slack_webhook_url(self) -> str:
        """An incoming-webhook URL (its path looks secret, as real ones are)."""
        return self.base_url + SLACK_WEBHOOK_PATH

    @property
    def webhook_url(self) -> str:
        """For ``WebhookNotifier(url=...)``; Alertmanager's is :attr:`base_url`."""
        return self.base_url + WEBHOOK_PATH

    @property
    def pagerduty_url(self) -> str:
        """For ``PagerDutyNotifier(url=...)``."""
        return self.base_url + PAGERDUTY_PATH

    # -- recorded requests -------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        """A copy of every request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[Request]:
        """The requests whose path is ``path`` (e.g. ``"/api/chat.update"``)."""
        return [r for r in self.requests if r.path == path]

    def clear(self) -> None:
        """Forget the recorded requests and pending failures (posted Slack messages stay)."""
        with self._lock:
            self._requests.clear()
            self._failures.clear()

    def wait_for(
        self, predicate: Callable[[list[Request]], bool], timeout: float = 5.0
    ) -> list[Request]:
        """Wait until ``predicate(requests)`` is true; return the requests.

        Re-checked on every new request. Raises AssertionError listing what was received
        when ``timeout`` seconds pass first.
        """
        with self._lock:
            if self._lock.wait_for(lambda: predicate(list(self._requests)), timeout):
                return list(self._requests)
            seen = [f"{r.method} {r.path}" for r in self._requests]
        raise AssertionError(f"condition not met within {timeout} s; requests: {seen}")

    # -- scripted failures -------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests (to ``path``, if given) with ``status``.

        ``body`` (JSON-encoded unless bytes or str) defaults to a Slack-style
        ``{"ok": false, "error": ...}`` that also carries PagerDuty-style ``status`` and
        ``message``. A 429 gets ``Retry-After: 1`` unless ``headers`` say otherwise.
        Rules queue up; each request uses the first that matches.
        """
        merged = {"Retry-After": "1"} if status == 429 else {}
        merged.update(headers or {})
        if body is None:
            error = "ratelimited" if status == 429 else f"http_{status}"
            body = {"ok": False, "error": error, "status": error, "message": f"stub {status}"}
        with self._lock:
            self._failures.append(_Failure(count, status, merged, body, path))

    # -- serving (called from the handler threads) -------------------------------------

    def _record(self, request: Request) -> _Failure | None:
        """Record ``request``; return the scripted failure it gets, if any."""
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            for failure in self._failures:
                if failure.remaining > 0 and failure.path in (None, request.path):
                    failure.remaining -= 1
                    return failure
            return None

    def _answer(self, request: Request) -> tuple[int, dict[str, str], Any]:
        """The real service's answer to ``request``: (status, headers, body)."""
        if request.path == ALERTMANAGER_PATH:
            return _alertmanager(request)
        if request.path == WEBHOOK_PATH:
            return _webhook(request)
        if request.path.startswith(SLACK_API_PATH):
            return 200, {}, self._slack_api(request)
        if request.path.startswith("/services/"):
            data = request.json
            if not isinstance(data, dict) or not (data.get("text") or data.get("blocks")):
                return 400, {}, "no_text"
            return 200, {}, "ok"
        if request.path == PAGERDUTY_PATH:
            return self._pagerduty(request)
        return 404, {}, {"error": "not_found"}

    def _slack_api(self, request: Request) -> dict[str, Any]:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return {"ok": False, "error": "not_authed"}
        method = request.path[len(SLACK_API_PATH) :]
        data = request.data if isinstance(request.data, dict) else {}
        if method == "auth.test":
            return {"ok": True, "team_id": "T0000CLIFF", "user_id": "U0000CLIFF"}
        if method not in ("chat.postMessage", "chat.update"):
            return {"ok": False, "error": "unknown_method"}
        channel = str(data.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not (data.get("text") or data.get("blocks")):
            return {"ok": False, "error": "no_text"}
        channel = slack_channel_id(channel)
        with self._lock:
            if method == "chat.update":
                key = (channel, str(data.get("ts")))
                if key not in self._slack.messages:
                    return {"ok": False, "error": "message_not_found"}
                self._slack.messages[key] = data
                return {"ok": True, "channel": channel, "ts": key[1], "text": data.get("text")}
            ts = f"{int(time.time())}.{next(self._slack.ts):06d}"
            self._slack.messages[(channel, ts)] = data
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": data.get("text")}}

    def _pagerduty(self, request: Request) -> tuple[int, dict[str, str], Any]:
        event = request.json if isinstance(request.json, dict) else {}
        errors = []
        if not event.get("routing_key"):
            errors.append("'routing_key' is missing or blank")
        action = event.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid")
        if action in ("acknowledge", "resolve") and not event.get("dedup_key"):
            errors.append("'dedup_key' is missing or blank")
        if action == "trigger":
            payload = event.get("payload")
            if not isinstance(payload, dict):
                payload = {}
            for name in ("summary", "source"):
                if not payload.get(name):
                    errors.append(f"'payload.{name}' is missing or blank")
            if payload.get("severity") not in PAGERDUTY_SEVERITIES:
                errors.append("'payload.severity' is invalid")
            if len(str(payload.get("summary", ""))) > 1024:
                errors.append("'payload.summary' is longer than 1024 characters")
        if errors:
            answer = {"status": "invalid event", "message": "Event object is invalid"}
            return 400, {}, {**answer, "errors": errors}
        dedup_key = event.get("dedup_key") or hashlib.sha1(request.body).hexdigest()
        answer = {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
        return 202, {}, answer


def _rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _alertmanager(request: Request) -> tuple[int, dict[str, str], Any]:
    """Alertmanager's ``POST /api/v2/alerts``: 200 (empty body), or 400 and why."""
    alerts = request.json
    if not isinstance(alerts, list) or not all(isinstance(a, dict) for a in alerts):
        return 400, {}, {"code": 400, "message": "body must be a list of alerts"}
    for alert in alerts:
        labels = alert.get("labels")
        if not isinstance(labels, dict) or not labels or not all(
            isinstance(v, str) for v in labels.values()
        ):
            return 400, {}, {"code": 400, "message": "labels must be a non-empty string map"}
        for name in ("startsAt", "endsAt"):
            if name in alert and not _rfc3339(alert[name]):
                return 400, {}, {"code": 400, "message": f"{name} is not RFC 3339"}
    return 200, {}, ""


def _webhook(request: Request) -> tuple[int, dict[str, str], Any]:
    """A receiver of Alertmanager's webhook JSON: 200 ok, or 400 and why."""
    data = request.json
    if not isinstance(data, dict) or data.get("version") != "4":
        return 400, {}, "expected Alertmanager webhook JSON, version 4"
    if data.get("status") not in ("firing", "resolved") or not isinstance(
        data.get("alerts"), list
    ):
        return 400, {}, "status and alerts are required"
    return 200, {}, "ok"


class _Handler(BaseHTTPRequestHandler):
    owner: Recorder

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle()

    def do_GET(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        parsed_json: Any = None
        form: dict[str, str] | None = None
        if content_type == "application/json":
            try:
                parsed_json = json.loads(body)
            except ValueError:
                parsed_json = None
        elif content_type == "application/x-www-form-urlencoded":
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        request = Request(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            json=parsed_json,
            form=form,
            received_at=time.monotonic(),
        )
        failure = self.owner._record(request)
        if failure is not None:
            status, headers, answer = failure.status, failure.headers, failure.body
        else:
            status, headers, answer = self.owner._answer(request)
        if isinstance(answer, bytes | str):
            payload = answer.encode() if isinstance(answer, str) else answer
            content = "text/plain; charset=utf-8"
        else:
            payload = json.dumps(answer).encode()
            content = "application/json; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", content)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Keep test output quiet."""


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A started :class:`Recorder`, closed after the test."""
    with Recorder() as stub:
        yield stub


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``condition()`` until true; raise AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
