"""The :class:`Alert` record: one alert transition (firing or resolved) of one metric,
and the names of the incidents that are about the monitoring rather than the business.

- :data:`BLIND_METRIC`: no app process at all is flushing (see
  :mod:`cliffwatch.alerting.blind`);
- ``cliffwatch.no-data:<metric>`` (:func:`no_data_incident`): the app processes that send
  ``<metric>`` stopped reporting while others still flush. A ``:`` never occurs in a
  metric name, so these names cannot clash with a metric's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

SEVERITIES = ("page", "notify")
STATES = ("firing", "resolved")

BLIND_METRIC = "cliffwatch.monitoring-blind"
"""The name the "monitoring blind" incident is kept and announced under."""

NO_DATA_PREFIX = "cliffwatch.no-data:"
"""A metric's "no data" incident is kept and announced under this prefix and its name."""


def no_data_incident(metric: str) -> str:
    """The name ``metric``'s "no data" incident is kept under (its state hash, its alerts):
    ``cliffwatch.no-data:<metric>``."""
    return NO_DATA_PREFIX + metric


def no_data_metric(name: str) -> str | None:
    """The metric a "no data" incident name is about, or ``None`` if ``name`` is not one."""
    return name[len(NO_DATA_PREFIX) :] if name.startswith(NO_DATA_PREFIX) else None


@dataclass(frozen=True, slots=True)
class Alert:
    """One transition of one metric's alert, as the worker decided it.

    Rates are events per second. ``incident_id`` and ``started_at`` are the same on the
    firing and the resolved alert of one incident.

    ``recent`` is the metric's events/s in each of its last minutes (oldest first, NaN
    where it had no data; empty when unknown), for a picture of the drop; ``links`` are
    ``(href, text)`` pairs (runbook, dashboard) sent along with it.

    Raises :class:`ValueError` naming the field when ``state`` or ``severity`` is not
    one of the known values.
    """

    metric: str
    state: Literal["firing", "resolved"]
    at: int
    """Epoch second of the decision."""
    severity: str
    """``"page"`` or ``"notify"``."""
    score: float
    rate: float
    """Events per second now."""
    baseline: float
    """Events per second normally."""
    incident_id: str
    """Stable id of the incident, e.g. ``f"{metric}@{started_at}"``."""
    started_at: int
    """Epoch second the incident fired."""
    threshold: float
    recent: Sequence[float] = field(default=(), compare=False)
    """Events/s of each of the last minutes, oldest first (NaN: no data)."""
    links: Sequence[Sequence[str]] = ()
    """``(href, text)`` of the rule's runbook and dashboard."""

    def __post_init__(self) -> None:
        recent = tuple(math.nan if r is None else float(r) for r in self.recent)
        object.__setattr__(self, "recent", recent)
        links = tuple((str(href), str(text)) for href, text in self.links)
        object.__setattr__(self, "links", links)
        if self.state not in STATES:
            raise ValueError(f"Alert.state must be one of {STATES}, not {self.state!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"Alert.severity must be one of {SEVERITIES}, not {self.severity!r}")

    @property
    def no_data_of(self) -> str | None:
        """The metric this is a "no data" alert of, or ``None`` for any other alert."""
        return no_data_metric(self.metric)

    def to_json(self) -> dict[str, Any]:
        """The alert as a JSON-ready dict (every field, under its own name)."""
        return {
            "metric": self.metric,
            "state": self.state,
            "at": self.at,
            "severity": self.severity,
            "score": self.score,
            "rate": self.rate,
            "baseline": self.baseline,
            "incident_id": self.incident_id,
            "started_at": self.started_at,
            "threshold": self.threshold,
            "recent": [None if math.isnan(r) else r for r in self.recent],
            "links": [list(link) for link in self.links],
        }
