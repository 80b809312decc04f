"""Monitoring blind and no data: telling "the apps stopped sending" apart from "the
business stopped".

Every app process records the epoch second of its last flush in ``Pemitters`` (see
:mod:`cliffwatch.metrics.keys`), about once a second, and zero-fills every metric it
knows (:meth:`~cliffwatch.metrics.counter.Counter.register`). So in the per-second counts
a missing field means *no process that knows this metric flushed that second* — no
data, which the detector reads as NaN and never pages on — while ``0`` means zero
events. Two alerts, both with severity ``notify`` (Slack, Alertmanager, the webhook;
never PagerDuty), say when monitoring lost sight of the business:

**Monitoring blind** (all apps silent). The worker is *blind* when

- at least one emitter is known (a store no app ever flushed to is not blind: it has
  nothing to lose sight of), and
- none of them has flushed within :data:`BLIND_AFTER_S` seconds, and
- a watched metric has no data for the latest closed second.

Then ONE incident is opened for the pseudo-metric :data:`BLIND_METRIC`, resolved as
soon as an emitter flushes again or data is back. Its alert reuses the
:class:`~cliffwatch.alerting.alert.Alert` fields: ``rate`` is the events/s across the
watched metrics in the latest closed second (0 while blind; on the resolve, in the
newest second with data), ``baseline`` their summed normal rate, ``score`` minus the
seconds since the newest emitter's last flush and ``threshold`` minus
:data:`BLIND_AFTER_S`.

**No data** (one metric's apps silent, others still flushing). A watched metric

- that had data within the last :data:`NO_DATA_MEMORY_S` seconds, and
- has had none for the last :data:`BLIND_AFTER_S` closed seconds, counted from its
  newest second with data or from when the apps flush again after the store was blind,
  whichever is later (so a store coming back gives each metric that long to show up),
- while some app process flushed within :data:`FLUSHING_S` seconds (the store is not
  blind, nor about to be: a fleet going down host by host is one blind alert, not one
  per metric),

gets its own incident, ``cliffwatch.no-data:<metric>``
(:func:`~cliffwatch.alerting.alert.no_data_incident`), resolved on the first tick whose
closed seconds show data of it again. Its alert has ``rate`` 0 (firing) or the events/s
of its recent seconds with data (resolved), ``baseline`` the metric's normal rate,
``score`` minus the seconds without data and ``threshold`` minus :data:`BLIND_AFTER_S`.
A silence covering the metric (:mod:`cliffwatch.alerting.silences`) silences its no-data
alert too. While it is open, it is reminded like a page (``[defaults] reminder``: a reply
in the Slack thread, the alert re-sent to an Alertmanager; see :meth:`BlindWatch.remind`),
and the metric's status hash carries ``no_data_since`` (``cliffwatch status`` shows
``no data``). A no-data incident of a metric that stops being watched (its rule removed)
stays open, like a page of such a metric.

With sharded workers (:mod:`cliffwatch.alerting.shards`) a metric's no-data incident is
decided by the worker that judges the metric (it is fenced by the metric's shard), and
the one "monitoring blind" incident by the leader.

Cost per tick: the decision for every metric is one vectorized comparison of the
detector's :attr:`~cliffwatch.rules.detector.Detector.last_data` with the closed end,
against a mask of the open no-data incidents kept in memory. Redis is read (one HGETALL
of the incident's state, then the writes of :meth:`Incidents.fire` or ``resolve``) only
for the metrics that change state, and for reminders only when one is due by the
rhythm kept in memory; the mask is loaded from Redis (one pipelined round trip of
HGETALLs) when the watched metrics change and when the worker starts acting (after a
restart or a leader change), so a restarted worker neither announces an open incident
twice nor forgets to resolve it.

What it cannot tell: emitters are not tracked per metric. A metric that only one app
process emits, lazily (``emit`` before any ``@event`` registers it), has no data after
that process restarts until its first event: if that takes longer than
:data:`BLIND_AFTER_S` (a quiet metric), it is announced as no data and resolved by its
first event. A metric only a periodic job emits is announced each time the job ends.
Silence such metrics, or register them at start. Many metrics losing their only app at
once while others flush are as many Slack messages: no-data alerts are not grouped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from ..metrics.store import Store
from ..rules.detector import Detector
from .alert import BLIND_METRIC, Alert, no_data_incident
from .incidents import Incidents

log = logging.getLogger("cliffwatch.worker")

__all__ = [
    "BLIND_AFTER_S",
    "BLIND_METRIC",
    "BLIND_SEVERITY",
    "FLUSHING_S",
    "NO_DATA_MEMORY_S",
    "BlindWatch",
]

BLIND_SEVERITY = "notify"
"""Slack only: the business is not known to be down, so nobody is woken up."""

BLIND_AFTER_S = 10
"""Seconds without a flush from any emitter after which missing data means blind; and
closed seconds without data after which a metric has *no data*."""

FLUSHING_S = 5.0
"""Some app process flushed this recently: the store is not blind and a metric without
data is announced on its own."""

NO_DATA_MEMORY_S = 3600
"""A metric without data for longer than this (and no no-data incident open) is not
announced: it is gone, not silent. A restarted worker knows as much of a metric's past
as its detector's history reaches (at least
:data:`~cliffwatch.rules.detector.HISTORY_S`, about 18 min, before its snapshot)."""


class BlindWatch:
    """Opens and resolves the "monitoring blind" incident and the metrics' "no data"
    incidents, once per worker tick.

    :param store: where ``Pemitters`` and the counts are read.
    :param incidents: where the incidents are recorded and delivered (its route sends
        the ``notify`` severity to Slack, never to the pager).
    :param after_s: seconds of silence from every emitter before missing data is blind,
        and closed seconds without data before a metric has no data.
    :param flushing_s: a flush this recent from any app means the others still flush.
    :param memory_s: a metric is announced only if it had data within this many seconds.

    :meth:`check` raises :class:`~cliffwatch.errors.StoreError` when Redis fails (what
    was decided before stays decided: the incidents are in Redis), and
    :class:`~cliffwatch.alerting.leader.LostLeadership` as :class:`Incidents` does.
    Delivery (and its retries) is the outbox's, as for every incident.
    """

    def __init__(
        self,
        store: Store,
        incidents: Incidents,
        *,
        after_s: float = BLIND_AFTER_S,
        flushing_s: float = FLUSHING_S,
        memory_s: float = NO_DATA_MEMORY_S,
    ) -> None:
        self.store = store
        self.incidents = incidents
        self.after_s = after_s
        self.flushing_s = flushing_s
        self.memory_s = memory_s
        self._watched: list[str] | None = None  # the metrics _open is aligned with
        self._open = np.zeros(0, bool)  # which of them have a no-data incident open
        self._since: dict[str, int] = {}  # metric -> start of its open no-data incident
        self._reminded: dict[str, int] = {}  # metric -> its last reminder (or its start)
        self._flushing_from: int | None = None  # first closed second since apps flush

    def reset(self) -> None:
        """Forget which no-data incidents are open: the next :meth:`check` reads them
        from Redis again (call it when the worker starts acting, since another worker
        may have opened or resolved some meanwhile)."""
        self._watched = None

    def is_open(self) -> bool:
        """Whether the "monitoring blind" incident is open, as Redis says (so a restarted
        worker, or one that took over from another, sees an incident opened before).
        Raises ``StoreError``."""
        return self.incidents.state(BLIND_METRIC).get("state") == "firing"

    def no_data_since(self, metric: str) -> int | None:
        """The epoch second ``metric``'s open no-data incident started, or ``None`` (none
        open, or not known yet: nothing is read from Redis here)."""
        return self._since.get(metric)

    def check(
        self,
        now: float,
        end: int,
        metrics: Sequence[str],
        detector: Detector,
        *,
        whole_store: bool = True,
    ) -> list[Alert]:
        """Decide, as of ``now`` (seconds before ``end`` are closed and fed to
        ``detector``, whose metrics are ``metrics``), whether the worker is blind and
        which metrics have no data; open or resolve the incidents; return the alerts
        decided, blind first. With ``whole_store`` False only the no-data incidents are
        decided (a sharded worker that is not the leader: the leader decides blindness).

        Costs two HGETALLs a call (the emitters, the blind incident's state), one HMGET
        per metric while every emitter is silent or the blind incident is resolving, plus
        the reads and writes of the no-data incidents that change state (see the module
        docstring). Raises ``StoreError`` if Redis fails.
        """
        if not metrics:
            return []
        emitters = self.store.emitters()
        newest = max(emitters.values(), default=None)
        silent_for = math.inf if newest is None else now - newest
        alerts = []
        if whole_store:
            alerts = self._check_store(now, end, metrics, detector, len(emitters), silent_for)
        return alerts + self._check_metrics(end, metrics, detector, silent_for)

    # -- all apps silent --------------------------------------------------------------

    def _check_store(
        self,
        now: float,
        end: int,
        metrics: Sequence[str],
        detector: Detector,
        emitters: int,
        silent_for: float,
    ) -> list[Alert]:
        """Open or resolve the one "monitoring blind" incident."""
        if emitters and silent_for > self.after_s:
            last = self.store.read_counts(list(metrics), end - 1, end)[:, 0]
            missing = int(np.isnan(last).sum())
            if missing:
                if self.is_open():
                    return []
                log.warning(
                    "monitoring blind: none of %d app processes has flushed for %d s and "
                    "%d of %d watched metrics have no data; their gaps are not judged",
                    emitters,
                    int(silent_for),
                    missing,
                    len(metrics),
                )
                rates = np.asarray(detector.baseline, dtype=float)
                alert = self.incidents.fire(
                    BLIND_METRIC,
                    end,
                    BLIND_SEVERITY,
                    -float(self.after_s),
                    -float(silent_for),
                    float(np.nansum(last)),
                    float(np.nansum(rates)) if rates.size else math.nan,
                )
                return [alert]
        if not self.is_open():
            return []
        # the newest second with data, which may be younger than ``end`` (apps are back)
        recent = self.store.read_counts(list(metrics), end - 1, max(end, math.floor(now) + 1))
        with_data = np.flatnonzero(~np.isnan(recent).all(axis=0))
        rate = float(np.nansum(recent[:, with_data[-1]])) if with_data.size else 0.0
        resolved = self.incidents.resolve(BLIND_METRIC, end, -min(silent_for, 1e9), rate)
        if resolved is None:
            return []
        log.warning("monitoring blind no more: app processes are flushing again")
        return [resolved]

    # -- one metric's apps silent -----------------------------------------------------

    def _check_metrics(
        self, end: int, metrics: Sequence[str], detector: Detector, silent_for: float
    ) -> list[Alert]:
        """Open a no-data incident for each metric that lost its data while other apps
        flush; resolve those whose data is back."""
        if self._watched is None or self._watched != list(metrics):
            self._load(metrics)
        flushing = silent_for <= self.flushing_s
        if not flushing:
            self._flushing_from = None
        elif self._flushing_from is None:
            self._flushing_from = end
        flushing_from = -math.inf if self._flushing_from is None else self._flushing_from
        last = detector.last_data
        quiet = end - 1 - last  # closed seconds since the newest with data (inf: never)
        back = np.flatnonzero(self._open & (quiet < self.after_s))
        gone = np.zeros(0, np.int64)
        if flushing:
            counted = end - np.maximum(last + 1, flushing_from)
            gone = np.flatnonzero(
                ~self._open & (counted >= self.after_s) & (quiet <= self.memory_s)
            )
        if not back.size and not gone.size:
            return []
        out: list[Alert] = []
        if back.size:
            rates = detector.recent_rate(int(self.after_s))
            for i in map(int, back):
                alert = self._resolve(metrics[i], end, float(quiet[i]), float(rates[i]))
                self._open[i] = False
                if alert is not None:
                    out.append(alert)
        for i in map(int, gone):
            alert = self._fire(metrics[i], end, float(quiet[i]), float(detector.baseline[i]))
            self._open[i] = True
            if alert is not None:
                out.append(alert)
        return out

    def _load(self, metrics: Sequence[str]) -> None:
        """Read from Redis which of ``metrics`` have a no-data incident open."""
        states = self.store.get_states([no_data_incident(m) for m in metrics])
        opened = [
            (m, st) for m, st in zip(metrics, states, strict=True) if st.get("state") == "firing"
        ]
        self._since = {m: int(st.get("started_at") or 0) for m, st in opened}
        self._reminded = {
            m: int(st.get("reminded_at") or st.get("started_at") or 0) for m, st in opened
        }
        self._open = np.fromiter((m in self._since for m in metrics), bool, len(metrics))
        self._watched = list(metrics)

    def _fire(self, metric: str, end: int, quiet: float, baseline: float) -> Alert | None:
        """Open ``metric``'s no-data incident unless Redis says it is open already."""
        name = no_data_incident(metric)
        st = self.incidents.state(name)
        if st.get("state") == "firing":  # opened by another worker, or before a restart
            self._since[metric] = int(st.get("started_at") or end)
            self._reminded[metric] = int(st.get("reminded_at") or self._since[metric])
            return None
        log.warning(
            "%s: no data for %d s while other app processes flush: its emitters stopped "
            "reporting (not paged)",
            metric,
            int(quiet),
        )
        alert = self.incidents.fire(
            name,
            end,
            BLIND_SEVERITY,
            -float(self.after_s),
            -quiet,
            0.0,
            baseline,
            silence_as=metric,
        )
        self._since[metric] = self._reminded[metric] = end
        self.store.set_state(metric, {"no_data_since": end})  # for `status` at once
        return alert

    def _resolve(self, metric: str, end: int, quiet: float, rate: float) -> Alert | None:
        """Close ``metric``'s no-data incident: it has data again."""
        self._since.pop(metric, None)
        self._reminded.pop(metric, None)
        alert = self.incidents.resolve(no_data_incident(metric), end, -quiet, rate)
        self.store.set_state(metric, {"no_data_since": ""})
        if alert is not None:
            log.warning("%s has data again", metric)
        return alert

    def remind(self, at: int, every: int, detector: Detector, metrics: Sequence[str]) -> int:
        """Queue a reminder (Slack, Alertmanager; see :meth:`Incidents.remind`) of each
        open no-data incident whose last reminder, or start, is ``every`` seconds old at
        epoch second ``at``; return how many were queued. Only those due are read from
        Redis. Raises ``StoreError``, or ``LostLeadership`` as :class:`Incidents` does."""
        if every <= 0 or self._watched is None:
            return 0
        due = [m for m, last in self._reminded.items() if at - last >= every]
        if not due:
            return 0
        index = {m: i for i, m in enumerate(metrics)}
        sent = 0
        for metric in due:
            i = index.get(metric)
            quiet = at - detector.last_data[i] if i is not None else math.inf
            reminder = self.incidents.remind(
                no_data_incident(metric), at, -min(float(quiet), 1e9), 0.0, every
            )
            self._reminded[metric] = at
            sent += reminder is not None
        return sent
