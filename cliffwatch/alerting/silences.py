"""Silences: maintenance windows during which a metric's new incidents are not delivered.

A silence covers every metric its pattern matches (an exact name, or a glob such as
``payments.*``, as in rules files) from the moment it is added until it ends. It lives in
Redis (the ``Psilences`` hash, see :mod:`cliffwatch.metrics.keys`), so every worker
honours it; expired silences are deleted by whoever reads the hash next.

An incident that *starts* inside a silence is recorded in the metric's state hash (with
``silenced=1``) but sent to neither Slack nor PagerDuty. If the silence ends while that
incident is still open, nothing is paged retroactively: the incident resolves quietly.
An incident that was already open (and paged) when a silence was added is not affected.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from ..errors import ConfigError, StoreError
from ..metrics.store import Store
from ..rules.config import metric_problem

log = logging.getLogger("cliffwatch.silences")

MAX_DURATION_S = 30 * 86400
"""The longest silence (30 days): a forgotten silence hides real outages."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:\d{1,6}[smhd])+")
_PART = re.compile(r"(\d+)([smhd])")
_ID = re.compile(r"[0-9a-f]{8}")


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``30m``, ``2h``, ``1d`` or ``1h30m``.

    Raises :class:`ConfigError` naming the text if it is not one, is zero, or is longer
    than :data:`MAX_DURATION_S`.
    """
    compact = text.strip().lower()
    if not _DURATION.fullmatch(compact):
        raise ConfigError(
            f"invalid duration {text!r} (use a number and a unit s, m, h or d, "
            f"e.g. 30m, 2h, 1d, 1h30m)"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(compact))
    if seconds <= 0:
        raise ConfigError(f"invalid duration {text!r}: it must be longer than zero")
    if seconds > MAX_DURATION_S:
        raise ConfigError(
            f"invalid duration {text!r}: a silence lasts at most {MAX_DURATION_S // 86400}d"
        )
    return seconds


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid metric name or glob; else raise
    :class:`ConfigError` saying what is wrong with it."""
    problem = metric_problem(pattern)
    if problem:
        raise ConfigError(problem)
    return pattern


def iso(epoch: float) -> str:
    """An epoch second as UTC ISO 8601, e.g. ``2026-11-26T07:30:00Z``."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_duration(seconds: float) -> str:
    """A short duration for people: ``45s``, ``12m``, ``1h05m``, ``2d03h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@dataclass(frozen=True, slots=True)
class Silence:
    """One silence: metrics matching ``pattern`` are silenced from ``starts_at``
    (included) to ``ends_at`` (excluded), epoch seconds."""

    id: str
    pattern: str
    starts_at: int
    ends_at: int
    reason: str
    created_by: str

    def matches(self, metric: str) -> bool:
        """True when ``metric`` is the pattern's name or matches its glob."""
        return fnmatch.fnmatchcase(metric, self.pattern)

    def active(self, at: float) -> bool:
        """True when epoch second ``at`` is inside the silence."""
        return self.starts_at <= at < self.ends_at

    def covers(self, metric: str, at: float) -> bool:
        """True when the silence is active at ``at`` and matches ``metric``."""
        return self.active(at) and self.matches(metric)

    def to_json(self) -> dict[str, str | int]:
        """The silence as a JSON-ready dict (every field, under its own name)."""
        return asdict(self)

    @classmethod
    def from_json(cls, silence_id: str, text: str) -> Silence:
        """Parse a stored silence. Raises :class:`ValueError` if ``text`` is not one."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        silence = cls(
            id=silence_id,
            pattern=str(data["pattern"]),
            starts_at=int(data["starts_at"]),
            ends_at=int(data["ends_at"]),
            reason=str(data.get("reason", "")),
            created_by=str(data.get("created_by", "")),
        )
        return silence


class Silences:
    """The silences stored in one Redis, shared by every worker and the command line.

    :param store: the Redis (and prefix) the workers use.
    :param clock: epoch seconds (tests pass their own).

    Methods raise :class:`~cliffwatch.errors.StoreError` when Redis fails and
    :class:`~cliffwatch.errors.ConfigError` for bad input, naming the value at fault.
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def add(self, pattern: str, seconds: int, reason: str, created_by: str) -> Silence:
        """Silence metrics matching ``pattern`` for ``seconds`` from now; return the
        silence (with its new id)."""
        check_pattern(pattern)
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise ConfigError(f"a silence must last a whole number of seconds > 0, not {seconds!r}")
        if seconds > MAX_DURATION_S:
            raise ConfigError(f"a silence lasts at most {MAX_DURATION_S // 86400}d")
        now = math.floor(self.clock())
        for _ in range(10):
            silence = Silence(secrets.token_hex(4), pattern, now, now + seconds, reason, created_by)
            body = {k: v for k, v in silence.to_json().items() if k != "id"}
            if self.store.add_silence(silence.id, json.dumps(body, sort_keys=True)):
                return silence
        raise StoreError("could not find a free silence id after 10 tries")  # pragma: no cover

    def current(self, at: float | None = None) -> list[Silence]:
        """The silences not yet ended at ``at`` (default: now), soonest end first. Deletes
        the ended ones from Redis; skips (and logs) entries that cannot be parsed."""
        now = self.clock() if at is None else at
        alive: list[Silence] = []
        ended: list[str] = []
        for silence_id, text in self.store.silences().items():
            try:
                silence = Silence.from_json(silence_id, text)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable silence %r: %s", silence_id, exc)
                continue
            if silence.ends_at <= now:
                ended.append(silence_id)
            else:
                alive.append(silence)
        if ended:
            self.store.delete_silences(ended)
        return sorted(alive, key=lambda s: (s.ends_at, s.id))

    def remove(self, silence_id: str) -> None:
        """End the silence with this id now. Raises :class:`ConfigError` if there is no
        such silence (or it has already ended)."""
        if not _ID.fullmatch(silence_id) or not self.store.delete_silences([silence_id]):
            raise ConfigError(f"no silence with id {silence_id!r} (see `cliffwatch silence list`)")

    def covering(self, metric: str, at: float) -> Silence | None:
        """The silence active at ``at`` that matches ``metric`` and lasts longest, or
        ``None``."""
        return first_covering(self.current(at), metric, at)


def first_covering(silences: Iterable[Silence], metric: str, at: float) -> Silence | None:
    """Of ``silences``, the one covering ``metric`` at ``at`` that ends last, or ``None``."""
    found = [s for s in silences if s.covers(metric, at)]
    return max(found, key=lambda s: s.ends_at) if found else None
