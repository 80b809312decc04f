"""The :class:`Alert` record: one alert transition (firing or resolved) of one metric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

SEVERITIES = ("page", "notify")
STATES = ("firing", "resolved")


@dataclass(frozen=True, slots=True)
class Alert:
    """One transition of one metric's alert, as the worker decided it.

    Rates are events per second. ``incident_id`` and ``started_at`` are the same on the
    firing and the resolved alert of one incident.

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

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"Alert.state must be one of {STATES}, not {self.state!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"Alert.severity must be one of {SEVERITIES}, not {self.severity!r}")

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
        }
