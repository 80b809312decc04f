"""Monitoring blind: telling "the apps stopped sending" apart from "the business stopped".

Every app process records the epoch second of its last flush in ``Pemitters`` (see
:mod:`cliffwatch.metrics.keys`), about once a second. The worker is *blind* when

- at least one emitter is known (a store no app ever flushed to is not blind: it has
  nothing to lose sight of), and
- none of them has flushed within :data:`BLIND_AFTER_S` seconds, and
- a watched metric has no data for the latest closed second.

While blind, the business metrics' missing seconds are *no data* to the detector (NaN,
never zero events), so they are not paged. Instead ONE incident is opened for the
pseudo-metric :data:`BLIND_METRIC` with severity ``notify`` — Slack only, never
PagerDuty — and it is resolved as soon as an emitter flushes again or data is back.
The incident lives in Redis like any other (:class:`~cliffwatch.alerting.incidents.Incidents`),
so a restarted worker neither announces it twice nor forgets to resolve it.

The alert reuses the :class:`~cliffwatch.alerting.alert.Alert` fields: ``rate`` is the
events/s across the watched metrics in the latest closed second (0 while blind; on the
resolve, in the newest second with data), ``baseline`` their summed normal rate,
``score`` minus the seconds since the newest emitter's last flush and ``threshold``
minus :data:`BLIND_AFTER_S`. So Slack reads "``cliffwatch.monitoring-blind`` fell to
0/s from 50/s (−100%)" and, later, "... is back to 49/s (normal 50/s) after 3 min".

Emitters are not tracked per metric: when some app processes still flush, the worker is
not blind, and a metric only those silent processes emitted shows as a gap (no page).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from ..metrics.store import Store
from .alert import Alert
from .incidents import Incidents

log = logging.getLogger("cliffwatch.worker")

BLIND_METRIC = "cliffwatch.monitoring-blind"
"""The name the "monitoring blind" incident is kept and announced under."""

BLIND_SEVERITY = "notify"
"""Slack only: the business is not known to be down, so nobody is woken up."""

BLIND_AFTER_S = 10
"""Seconds without a flush from any emitter after which missing data means blind."""


class BlindWatch:
    """Opens and resolves the "monitoring blind" incident, once per worker tick.

    :param store: where ``Pemitters`` and the counts are read.
    :param incidents: where the incident is recorded and delivered (its route sends the
        ``notify`` severity to Slack only).
    :param after_s: seconds of silence from every emitter before missing data is blind.

    :meth:`check` raises :class:`~cliffwatch.errors.StoreError` when Redis fails.
    Delivery (and its retries) is the outbox's, as for every incident.
    """

    def __init__(
        self,
        store: Store,
        incidents: Incidents,
        *,
        after_s: float = BLIND_AFTER_S,
    ) -> None:
        self.store = store
        self.incidents = incidents
        self.after_s = after_s

    def is_open(self) -> bool:
        """Whether the "monitoring blind" incident is open, as Redis says (so a restarted
        worker, or one that took over from another, sees an incident opened before).
        Raises ``StoreError``."""
        return self.incidents.state(BLIND_METRIC).get("state") == "firing"

    def check(
        self,
        now: float,
        end: int,
        metrics: Sequence[str],
        normal_rates: Sequence[float] | np.ndarray = (),
    ) -> list[Alert]:
        """Decide whether the worker is blind as of ``now`` (seconds before ``end`` are
        closed) and open or resolve the incident; return the alerts decided (none, or
        one firing or resolved alert of :data:`BLIND_METRIC`).

        ``normal_rates`` (events/s, one per metric; NaN where unknown) only fill in the
        alert's ``baseline``. Costs two HGETALLs a call (the emitters, the incident's
        state), plus one HMGET per metric while every emitter is silent or the incident
        is resolving. Raises ``StoreError`` if Redis fails.
        """
        if not metrics:
            return []
        emitters = self.store.emitters()
        newest = max(emitters.values(), default=None)
        silent_for = math.inf if newest is None else now - newest
        if newest is not None and silent_for > self.after_s:
            last = self.store.read_counts(list(metrics), end - 1, end)[:, 0]
            missing = int(np.isnan(last).sum())
            if missing:
                if self.is_open():
                    return []
                log.warning(
                    "monitoring blind: none of %d app processes has flushed for %d s and "
                    "%d of %d watched metrics have no data; their gaps are not judged",
                    len(emitters),
                    int(silent_for),
                    missing,
                    len(metrics),
                )
                rates = np.asarray(normal_rates, dtype=float)
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
