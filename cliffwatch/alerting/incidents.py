"""Incidents: each metric's alert state in Redis, and the delivery of its alerts.

A transition is written to the metric's state hash *before* it is delivered, and each
notifier's delivery is recorded there once it succeeded. So a worker that restarts
neither pages an open incident again nor forgets it, and a delivery that failed (or was
cut short by a crash) is retried on later ticks until it goes through.

State hash fields: ``state`` (``ok`` / ``firing``), ``incident_id``, ``started_at``,
``severity``, ``threshold``, ``score``, ``rate``, ``baseline``, ``resolved_at``,
``pending`` (transitions not yet delivered everywhere, e.g. ``firing,resolved``),
``sent:<notifier>:<state>`` = ``1``, ``silenced`` (``1`` when the incident started
inside a silence) and ``silence_id``, and the notifiers' own memo (e.g. the Slack
message's ``ts``, so the resolve updates the same message).

An incident that starts inside a silence (see :mod:`cliffwatch.alerting.silences`) is
recorded but delivered nowhere, and its resolve is not delivered either, even when the
silence has ended by then: nothing is paged retroactively.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..errors import CliffwatchError
from ..metrics.store import Store
from .alert import Alert
from .notifiers import Notifier
from .silences import Silence, Silences

log = logging.getLogger("cliffwatch.alerting")

RETRY_MIN_S, RETRY_MAX_S = 2.0, 60.0


@dataclass
class Route:
    """The notifiers each severity goes to: ``page`` to the pager and Slack, ``notify``
    to Slack only."""

    notifiers: Mapping[str, Notifier]
    by_severity: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"page": ("pagerduty", "slack"), "notify": ("slack",)}
    )

    def targets(self, severity: str) -> list[tuple[str, Notifier]]:
        return [
            (name, self.notifiers[name])
            for name in self.by_severity.get(severity, ())
            if name in self.notifiers
        ]


class Incidents:
    """Opens and closes incidents in Redis and delivers their alerts.

    :param store: where the state hashes live.
    :param route: which notifiers get which severity.
    :param on_alert: called with every alert as it is decided (before delivery), e.g. to
        print it; silenced alerts too.
    :param silences: checked when an incident opens; ``None``: nothing is silenced.
    """

    def __init__(
        self,
        store: Store,
        route: Route,
        on_alert: Callable[[Alert], None] | None = None,
        clock: Callable[[], float] = time.time,
        silences: Silences | None = None,
    ) -> None:
        self.store = store
        self.route = route
        self.on_alert = on_alert
        self.clock = clock
        self.silences = silences
        self._retry_at: dict[str, tuple[float, float]] = {}  # metric -> (when, backoff)

    def state(self, metric: str) -> dict[str, str]:
        """The metric's state hash (``{}`` when it never fired)."""
        return self.store.get_state(metric)

    def fire(
        self,
        metric: str,
        at: int,
        severity: str,
        threshold: float,
        score: float,
        rate: float,
        baseline: float,
    ) -> Alert:
        """Open an incident (written first, then delivered). What the notifiers kept of
        an earlier incident of the metric (sent flags, message ts, dedup key) is blanked,
        so the new one is delivered afresh. An incident starting inside a silence is
        written with ``silenced=1`` and not delivered (if the silences cannot be read, it
        is delivered: better a page too many than a missed one)."""
        incident_id = f"{metric}@{at}"
        silence = self._silence(metric, at)
        stale = tuple(f"{name}_" for name in self.route.notifiers)
        earlier = {
            k: "" for k in self.state(metric) if k.startswith("sent:") or k.startswith(stale)
        }
        self.store.set_state(
            metric,
            {
                **earlier,
                "state": "firing",
                "incident_id": incident_id,
                "started_at": at,
                "severity": severity,
                "threshold": threshold,
                "score": round(score, 3),
                "rate": round(rate, 4),
                "baseline": round(baseline, 4),
                "pending": "" if silence else "firing",
                "resolved_at": "",
                "silenced": 1 if silence else "",
                "silence_id": silence.id if silence else "",
            },
        )
        alert = Alert(
            metric, "firing", at, severity, score, rate, baseline, incident_id, at, threshold
        )
        self._announce(alert, silence.id if silence else "")
        if silence is None:
            self.deliver(metric)
        return alert

    def resolve(self, metric: str, at: int, score: float, rate: float) -> Alert | None:
        """Close the metric's open incident, if it has one."""
        st = self.state(metric)
        if st.get("state") != "firing":
            return None
        silenced = st.get("silenced") == "1"
        pending = [p for p in st.get("pending", "").split(",") if p]
        if not silenced:
            pending.append("resolved")
        self.store.set_state(
            metric, {"state": "ok", "resolved_at": at, "pending": ",".join(pending)}
        )
        alert = Alert(
            metric,
            "resolved",
            at,
            st.get("severity", "page"),
            score,
            rate,
            float(st.get("baseline", "nan")),
            st.get("incident_id", ""),
            int(st.get("started_at", at)),
            float(st.get("threshold", "-3")),
        )
        self._announce(alert, st.get("silence_id", "?") if silenced else "")
        if not silenced:
            self.deliver(metric)
        return alert

    def retry_pending(self, metrics: list[str]) -> None:
        """Try again the deliveries that failed before, when their backoff has passed."""
        now = self.clock()
        for metric in metrics:
            when = self._retry_at.get(metric)
            if when is not None and when[0] <= now:
                self.deliver(metric)

    def deliver(self, metric: str) -> bool:
        """Send the metric's pending transitions to every notifier that has not had them;
        True when nothing is left pending."""
        st = self.state(metric)
        pending = [p for p in st.get("pending", "").split(",") if p]
        if not pending:
            self._retry_at.pop(metric, None)
            return True
        memo = {k: v for k, v in st.items() if not k.startswith("sent:")}
        failed = False
        for state in pending:
            alert = self._alert_from(metric, st, state)
            for name, notifier in self.route.targets(alert.severity):
                flag = f"sent:{name}:{state}"
                if st.get(flag):
                    continue
                try:
                    update = notifier.send(alert, memo)
                except CliffwatchError as exc:
                    log.warning("delivering %s of %s to %s failed: %s", state, metric, name, exc)
                    failed = True
                    continue
                except Exception:  # a notifier bug must not stop the worker
                    log.exception("delivering %s of %s to %s failed", state, metric, name)
                    failed = True
                    continue
                memo.update(update)
                st[flag] = "1"
                self.store.set_state(metric, {**update, flag: "1"})
        if failed:
            _, backoff = self._retry_at.get(metric, (0.0, RETRY_MIN_S / 2))
            backoff = min(backoff * 2, RETRY_MAX_S)
            self._retry_at[metric] = (self.clock() + backoff, backoff)
            return False
        self.store.set_state(metric, {"pending": ""})
        self._retry_at.pop(metric, None)
        return True

    def _alert_from(self, metric: str, st: Mapping[str, str], state: str) -> Alert:
        started = int(st.get("started_at") or 0)
        at = int(st.get("resolved_at") or started) if state == "resolved" else started
        return Alert(
            metric,
            "firing" if state == "firing" else "resolved",
            at,
            st.get("severity", "page"),
            float(st.get("score", "nan")),
            float(st.get("rate", "nan")),
            float(st.get("baseline", "nan")),
            st.get("incident_id", ""),
            started,
            float(st.get("threshold", "-3")),
        )

    def _silence(self, metric: str, at: int) -> Silence | None:
        if self.silences is None:
            return None
        try:
            return self.silences.covering(metric, at)
        except CliffwatchError as exc:
            log.warning("could not read silences, delivering %s: %s", metric, exc)
            return None

    def _announce(self, alert: Alert, silence_id: str = "") -> None:
        log.warning(
            "%s %s: score %.2f, %.3g/s against %.3g/s normal%s",
            alert.metric,
            alert.state,
            alert.score,
            alert.rate,
            alert.baseline,
            f" (silenced by {silence_id}: not delivered)" if silence_id else "",
        )
        if self.on_alert is not None:
            self.on_alert(alert)
