"""Incidents: each metric's alert state in Redis, and the hand-over of its alerts to the
outbox.

A transition is written to the metric's state hash, then appended to the durable outbox
(:mod:`cliffwatch.alerting.outbox`), which delivers it and records each notifier's
delivery in the state hash. So a worker that restarts neither pages an open incident
again nor forgets it, and a delivery that failed (or was cut short by a crash) is
retried until it goes through. If the worker died between writing the state and
appending to the outbox, :meth:`Incidents.undelivered` finds the transition still
``pending`` and the next leader queues it again.

State hash fields: ``state`` (``ok`` / ``firing``), ``incident_id``, ``started_at``,
``severity``, ``threshold``, ``score``, ``rate``, ``baseline``, ``resolved_at``,
``pending`` (transitions not yet delivered everywhere, e.g. ``firing,resolved``),
``sent:<notifier>:<state>`` = ``1`` (or ``dropped`` when the notifier refused it for
good, ``digest`` when the quiet-hours digest told it, see
:mod:`cliffwatch.alerting.quiet`), ``channels`` (the notifiers the incident goes to),
``epoch`` (the leader's fencing epoch when it wrote the transition, see
:mod:`cliffwatch.alerting.leader`) or, for a metric judged by a shard's holder,
``shard_epoch`` (the fencing epoch of the metric's shard, see
:mod:`cliffwatch.alerting.shards`; the holder need not lead, so its leader epoch says
nothing),
``silenced`` (``1`` when the incident started inside a silence) and ``silence_id``,
``reminded_at`` (epoch second of the last Slack reminder, see :meth:`Incidents.remind`),
and the notifiers' own memo (e.g. the Slack message's ``ts``, so the resolve updates the
same message).

Each incident goes to the notifiers its :class:`Route` picks for its severity and its
rule (a rule's own Slack channel or PagerDuty service), listed in ``channels``.

An incident that starts inside a silence (see :mod:`cliffwatch.alerting.silences`) is
recorded but delivered nowhere, and its resolve is not delivered either, even when the
silence has ended by then: nothing is paged retroactively.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from ..errors import CliffwatchError
from ..metrics.store import Store
from ..rules.config import RuleSet
from .alert import Alert
from .alertmanager import ALERTMANAGER, WEBHOOK
from .notifiers import Notifier
from .outbox import PAGER, SLACK, Fence, Outbox, is_pager
from .silences import Silence, Silences

log = logging.getLogger("cliffwatch.alerting")


def slack_channel_notifier(channel: str) -> str:
    """The notifier (and outbox channel) name of a rule's own Slack channel."""
    return f"{SLACK}:{channel}"


def pagerduty_service_notifier(service: str) -> str:
    """The notifier (and outbox channel) name of a ``[pagerduty.services]`` service."""
    return f"{PAGER}:{service}"


class MetricFence(Protocol):
    """What incidents need of the shard leases (:class:`~.shards.ShardMap`)."""

    def check(self, metric: str, seen: int | str | None = None) -> None:
        """Raise LostShard unless this worker holds the metric's shard and ``seen`` (a
        shard epoch found in Redis) is not newer."""
        ...

    def epoch_of(self, metric: str) -> int:
        """The fencing epoch of the metric's shard."""
        ...


@dataclass
class Route:
    """The notifiers each severity goes to: ``page`` to the pager and Slack, ``notify``
    to Slack only; both to an Alertmanager and a webhook sink, if there are any.

    With ``rules`` (called for the rules in force), a metric whose rule names its own
    ``slack_channel`` goes to the notifier ``slack:<channel>`` instead of ``slack`` (to
    ``slack`` when there is no such notifier, e.g. with a webhook), and one whose rule
    names a PagerDuty service to ``pagerduty:<service>`` instead of ``pagerduty``
    (nowhere when that service has no notifier: never another team's pager).
    """

    notifiers: Mapping[str, Notifier]
    by_severity: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "page": (PAGER, SLACK, ALERTMANAGER, WEBHOOK),
            "notify": (SLACK, ALERTMANAGER, WEBHOOK),
        }
    )
    rules: Callable[[], RuleSet] | None = None

    def targets(self, severity: str, metric: str | None = None) -> list[tuple[str, Notifier]]:
        """The (name, notifier) pairs an alert of ``severity`` (of ``metric``) goes to."""
        rule = self.rules().match(metric) if self.rules is not None and metric else None
        out = []
        for name in self.by_severity.get(severity, ()):
            if rule is not None and name == SLACK and rule.slack_channel:
                own = slack_channel_notifier(rule.slack_channel)
                name = own if own in self.notifiers else name
            elif rule is not None and name == PAGER and rule.pagerduty:
                name = pagerduty_service_notifier(rule.pagerduty)
            if name in self.notifiers:
                out.append((name, self.notifiers[name]))
        return out

    def links(self, metric: str) -> tuple[tuple[str, str], ...]:
        """``(href, text)`` of ``metric``'s runbook and dashboard (see
        :meth:`~cliffwatch.rules.config.RuleSet.links`); none without ``rules``."""
        return self.rules().links(metric) if self.rules is not None else ()


class Incidents:
    """Opens and closes incidents in Redis and queues their alerts in the outbox.

    :param store: where the state hashes live.
    :param route: which notifiers get which severity.
    :param on_alert: called with every alert as it is decided (before delivery), e.g. to
        print it; silenced alerts too.
    :param silences: checked when an incident opens; ``None``: nothing is silenced.
    :param fence: the leader election; ``None``: this worker is the only one. With a
        fence, :meth:`fire` and :meth:`resolve` raise
        :class:`~cliffwatch.alerting.leader.LostLeadership` (and write nothing) unless
        this worker leads and the state hash carries no newer epoch than its own.
    :param judge: the shard leases of sharded workers; with one, a metric's incident is
        fenced by its shard instead: :meth:`fire`, :meth:`resolve` and :meth:`remind`
        raise :class:`~cliffwatch.alerting.shards.LostShard` (and write nothing) unless
        this worker holds the metric's shard and the state hash carries no newer
        ``shard_epoch``. The metrics in :attr:`leader_only` (the "monitoring blind"
        pseudo-metric) stay fenced by the leader.

    The outbox (:attr:`outbox`) delivers; see :mod:`cliffwatch.alerting.outbox`.
    """

    def __init__(
        self,
        store: Store,
        route: Route,
        on_alert: Callable[[Alert], None] | None = None,
        clock: Callable[[], float] = time.time,
        silences: Silences | None = None,
        fence: Fence | None = None,
        judge: MetricFence | None = None,
    ) -> None:
        self.store = store
        self.judge = judge
        self.leader_only: set[str] = set()
        self.on_alert = on_alert
        self.clock = clock
        self.silences = silences
        self.outbox = Outbox(store, route.notifiers, clock=clock, fence=fence)
        self._route = route
        self.recent: Callable[[str], Sequence[float]] | None = None
        """Gives a metric's events/s of each of its last minutes (oldest first), to be
        carried on its alerts (:attr:`Alert.recent`); ``None``: no picture."""

    @property
    def route(self) -> Route:
        """Which notifiers get which severity; setting it also changes the outbox's
        channels (e.g. after the rules are reloaded)."""
        return self._route

    @route.setter
    def route(self, route: Route) -> None:
        self._route = route
        self.outbox.use(route.notifiers)

    @property
    def fence(self) -> Fence | None:
        """The leader election this worker's writes are fenced by, if any."""
        return self.outbox.fence

    @fence.setter
    def fence(self, fence: Fence | None) -> None:
        self.outbox.fence = fence

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
        *,
        silence_as: str | None = None,
    ) -> Alert:
        """Open an incident (written first, then queued in the outbox). What the
        notifiers kept of an earlier incident of the metric (sent flags, message ts,
        dedup key) is blanked, so the new one is delivered afresh. An incident starting
        inside a silence is written with ``silenced=1`` and not delivered (if the
        silences cannot be read, it is delivered: better a page too many than a missed
        one); silences are matched against ``silence_as`` when given (the business
        metric a "no data" incident is about), else against ``metric``. Raises
        ``StoreError``, or ``LostLeadership`` as the class says."""
        incident_id = f"{metric}@{at}"
        st = self.state(metric)
        self._check_fence(metric, st)
        silence = self._silence(metric if silence_as is None else silence_as, at)
        stale = tuple(f"{name.split(':')[0]}_" for name in self.route.notifiers)
        earlier = {k: "" for k in st if k.startswith("sent:") or k.startswith(stale)}
        channels = [name for name, _ in self.route.targets(severity, metric)]
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
                "reminded_at": "",
                "channels": ",".join(channels),
                **self._epoch(metric),
            },
        )
        alert = Alert(
            metric,
            "firing",
            at,
            severity,
            score,
            rate,
            baseline,
            incident_id,
            at,
            threshold,
            self._recent(metric),
            self.route.links(metric),
        )
        self._announce(alert, silence.id if silence else "")
        if silence is None:
            self.outbox.append(alert, channels)
        return alert

    def resolve(self, metric: str, at: int, score: float, rate: float) -> Alert | None:
        """Close the metric's open incident, if it has one (written, then queued in the
        outbox). Raises ``StoreError``, or ``LostLeadership`` as the class says."""
        st = self.state(metric)
        if st.get("state") != "firing":
            return None
        self._check_fence(metric, st)
        silenced = st.get("silenced") == "1"
        pending = [p for p in st.get("pending", "").split(",") if p]
        if not silenced:
            pending.append("resolved")
        self.store.set_state(
            metric,
            {"state": "ok", "resolved_at": at, "pending": ",".join(pending), **self._epoch(metric)},
        )
        alert = replace(
            self._alert_from(metric, st, "resolved"),
            at=at,
            score=score,
            rate=rate,
            recent=self._recent(metric),
        )
        self._announce(alert, st.get("silence_id", "?") if silenced else "")
        if not silenced:
            self.outbox.append(alert, self._channels(metric, st))
        return alert

    def remind(self, metric: str, at: int, score: float, rate: float, every: int) -> Alert | None:
        """Queue a Slack reminder that the metric's incident is still firing, when
        ``every`` seconds (> 0) have passed since it started or since its last reminder
        (``reminded_at`` in the state hash, so a restarted worker keeps the rhythm);
        return the reminder, or ``None`` when none is due. Reminders go to the
        incident's notifiers that can remind (Slack; Alertmanager, which needs a
        firing alert re-sent), never to the pager (PagerDuty escalates on its own),
        and not for an incident that started inside a silence. Raises ``StoreError``,
        or ``LostLeadership`` as the class says."""
        if every <= 0:
            return None
        st = self.state(metric)
        if st.get("state") != "firing" or st.get("silenced") == "1":
            return None
        targets = [
            name
            for name in self._channels(metric, st)
            if not is_pager(name)
            and name in self.outbox.channels
            and hasattr(self.outbox.channels[name].notifier, "remind")
        ]
        if not targets:
            return None
        started = int(st.get("started_at") or at)
        if at - int(st.get("reminded_at") or started) < every:
            return None
        self._check_fence(metric, st)
        self.store.set_state(metric, {"reminded_at": at, **self._epoch(metric)})
        alert = replace(self._alert_from(metric, st, "firing"), at=at, score=score, rate=rate)
        log.info(
            "%s still firing after %d s: reminding %s", metric, at - started, ", ".join(targets)
        )
        self.outbox.append(alert, targets, reminder=True)
        return alert

    def retry_pending(self, metrics: Sequence[str] = ()) -> None:
        """Deliver, in this thread, whatever the outbox holds whose backoff has passed
        (for every metric: ``metrics`` is not needed). Nothing when the outbox runs its
        own delivery threads."""
        if not self.outbox.running:
            self.outbox.deliver_due()

    def undelivered(self, metrics: Sequence[str]) -> list[tuple[Alert, list[str]]]:
        """The transitions of ``metrics`` that their state hashes say are not delivered
        everywhere yet (``pending``), oldest first, each with its channels. Raises
        ``StoreError``."""
        out: list[tuple[Alert, list[str]]] = []
        for metric, st in zip(metrics, self.store.get_states(metrics), strict=True):
            if st.get("silenced") == "1":
                continue
            for state in (p for p in st.get("pending", "").split(",") if p):
                if state in ("firing", "resolved"):
                    out.append((self._alert_from(metric, st, state), self._channels(metric, st)))
        return out

    def _channels(self, metric: str, st: Mapping[str, str]) -> list[str]:
        listed = [c for c in st.get("channels", "").split(",") if c]
        severity = st.get("severity", "page")
        return listed or [name for name, _ in self.route.targets(severity, metric)]

    def _check_fence(self, metric: str, st: Mapping[str, str]) -> None:
        if self.judge is not None and metric not in self.leader_only:
            self.judge.check(metric, st.get("shard_epoch"))
        elif self.fence is not None:
            self.fence.check(st.get("epoch"))

    def _epoch(self, metric: str) -> dict[str, int]:
        """The epoch that fences ``metric``'s incident: its shard's, or the leader's."""
        if self.judge is not None and metric not in self.leader_only:
            return {"shard_epoch": self.judge.epoch_of(metric)}
        return {} if self.fence is None else {"epoch": self.fence.epoch}

    def _alert_from(self, metric: str, st: Mapping[str, str], state: str) -> Alert:
        """The ``state`` transition of the incident a state hash holds."""
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
            links=self.route.links(metric),
        )

    def _recent(self, metric: str) -> tuple[float, ...]:
        """The metric's recent per-minute rates, if :attr:`recent` can tell (a failure
        there costs the picture, never the alert)."""
        if self.recent is None:
            return ()
        try:
            return tuple(float(r) for r in self.recent(metric))
        except Exception:  # noqa: BLE001 (a picture is not worth an alert)
            log.warning("no recent rates for %s", metric, exc_info=True)
            return ()

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
