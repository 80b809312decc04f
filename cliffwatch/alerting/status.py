"""What ``cliffwatch status`` shows: every metric Redis knows, the apps flushing to it (and
the events they dropped, by reason), the active silences and the live workers with their
share of the metrics, gathered in a few round trips and rendered as text or JSON.

A metric's status is one of:

- ``not watched``: no worker has judged it (no rule matches it, or no worker runs);
- ``no data``: the worker's last word on it is older than :data:`NO_DATA_AFTER_S`
  (the worker stopped), or no app has flushed a count of it in the last minute, or its
  "no data" alert is open (its apps stopped reporting while others flush, see
  :mod:`cliffwatch.alerting.blind`; ``no_data_since`` says since when);
- ``silenced``: its open incident started inside a silence (and was not delivered), or
  it has no open incident and an active silence covers it;
- ``firing``: it has an open incident, which was delivered (even if a silence added since
  covers it: new incidents will not page, this one resolves as usual);
- ``warming up``: it has not yet seen the worker's ``--warmup`` minutes of data;
- ``too quiet``: its normal rate is below its rule's ``min_rate``, so it is not judged;
- ``ok``: judged, and nothing is wrong.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np

from ..metrics.store import Store
from .silences import Silence, Silences, first_covering, human_duration, iso

NO_DATA_AFTER_S = 12
"""A worker writes each metric's status every 5 s, about a second behind the clock: a
status older than this means the worker has stopped."""

NOT_TICKING_AFTER_S = 10
"""A worker heartbeat older than this (or gone: its key expires) means no worker ticks."""

SPARK_MINUTES = 10
"""Minutes of per-minute rates in the sparkline."""

RECENT_S = 60
"""A metric with no count at all in this many seconds has no data."""

SPARK_CHARS = "▁▂▃▄▅▆▇█"
NO_DATA_CHAR = "·"
CLEAR_SCREEN = "\x1b[H\x1b[2J"


@dataclass(frozen=True, slots=True)
class MetricStatus:
    """One metric's row. Rates are events per second; ``None`` where unknown."""

    metric: str
    status: str
    rate: float | None
    baseline: float | None
    score: float | None
    minutes_seen: int | None
    status_age_s: int | None
    """Seconds since the worker last wrote this metric's status."""
    incident: str
    """The open incident's id, ``""`` if none."""
    incident_started_at: int | None
    incident_silenced: bool
    silenced_by: str
    """The id of the active silence covering the metric, ``""`` if none."""
    rates_per_minute: list[float | None]
    """The last :data:`SPARK_MINUTES` minutes, oldest first; ``None``: no data."""
    no_data_since: int | None = None
    """Epoch second the metric's open "no data" alert started; ``None`` if none is open."""

    @property
    def sparkline(self) -> str:
        """:attr:`rates_per_minute` as unicode bars."""
        return sparkline(self.rates_per_minute)


@dataclass(frozen=True, slots=True)
class Emitter:
    """An app process that flushes counts: ``<host>:<pid>`` and its last flush."""

    name: str
    last_flush: int
    age_s: int


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    """The dead-man's switch: whether a leader worker is ticking, from its heartbeat."""

    ticking: bool
    last_tick: float | None
    """Epoch of the last tick any leader worker recorded; ``None``: never."""
    last_tick_age_s: int | None

    def describe(self) -> str:
        """``ticking (last tick 1 s ago)``, ``NOT TICKING (last tick 5 min ago)`` or
        ``NOT TICKING (never)``."""
        if self.last_tick_age_s is None:
            return "NOT TICKING (never)"
        ago = f"last tick {human_duration(self.last_tick_age_s)} ago"
        return f"ticking ({ago})" if self.ticking else f"NOT TICKING ({ago})"


def worker_beat(store: Store, at: float) -> WorkerBeat:
    """Read the leader worker's heartbeat as of epoch ``at``: ticking while the
    heartbeat key lives and is at most :data:`NOT_TICKING_AFTER_S` old. Raises
    :class:`~cliffwatch.errors.StoreError` if Redis fails."""
    alive, last = store.heartbeat()
    age = None if last is None else max(0, math.floor(at - last))
    ticking = alive is not None and at - alive <= NOT_TICKING_AFTER_S
    return WorkerBeat(ticking, last, age)


@dataclass(frozen=True, slots=True)
class WorkerShare:
    """One live worker process and its share of the metrics (see
    :mod:`cliffwatch.alerting.shards`)."""

    token: str
    """``<host>:<pid>:<random>``."""
    shards: int
    metrics: int
    leader: bool


def worker_shares(store: Store) -> list[WorkerShare]:
    """The live workers and what each judges, sorted by token. Raises
    :class:`~cliffwatch.errors.StoreError` if Redis fails."""
    out = []
    for token, text in sorted(store.live_workers().items()):
        try:
            info = json.loads(text)
        except ValueError:
            info = {}
        out.append(
            WorkerShare(
                token,
                int(info.get("shards", 0)),
                int(info.get("metrics", 0)),
                bool(info.get("leader", False)),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything ``cliffwatch status`` shows, as of epoch second ``at``."""

    at: int
    metrics: list[MetricStatus]
    emitters: list[Emitter] = field(default_factory=list)
    silences: list[Silence] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    """Events the apps could not deliver, by reason, summed over all apps and all time
    (see :mod:`cliffwatch.metrics.counter`)."""
    worker: WorkerBeat | None = None
    """Whether a leader worker is ticking (``None``: not read)."""
    workers: list[WorkerShare] = field(default_factory=list)
    """The live worker processes and their share of the metrics."""

    def to_json(self) -> dict[str, Any]:
        """The overview as a JSON-ready dict (what ``status --json`` prints)."""
        return {
            "at": self.at,
            "at_iso": iso(self.at),
            "emitters": [asdict(e) for e in self.emitters],
            "drops": dict(self.drops),
            "worker": None if self.worker is None else asdict(self.worker),
            "workers": [asdict(w) for w in self.workers],
            "silences": [
                {
                    **s.to_json(),
                    "ends_at_iso": iso(s.ends_at),
                    "remaining_s": max(0, s.ends_at - self.at),
                }
                for s in self.silences
            ],
            "metrics": [{**asdict(m), "sparkline": m.sparkline} for m in self.metrics],
        }


def sparkline(values: Sequence[float | None]) -> str:
    """Unicode bars from zero (``▁``) to the largest value (``█``); ``·`` for ``None``."""
    top = max((v for v in values if v is not None), default=0.0)
    out = []
    for v in values:
        if v is None:
            out.append(NO_DATA_CHAR)
        elif top <= 0:
            out.append(SPARK_CHARS[0])
        else:
            out.append(SPARK_CHARS[min(len(SPARK_CHARS) - 1, int(v / top * len(SPARK_CHARS)))])
    return "".join(out)


def per_minute_rates(counts: np.ndarray, minutes: int) -> list[list[float | None]]:
    """Rows of per-second counts (NaN: no data), ``minutes * 60`` wide, as each row's
    mean rate per minute (``None`` for a minute without data)."""
    shaped = counts.reshape(counts.shape[0], minutes, 60)
    valid = ~np.isnan(shaped)
    n = valid.sum(axis=2)
    total = np.where(valid, shaped, 0.0).sum(axis=2)
    return [
        [float(t / k) if k else None for t, k in zip(trow, nrow, strict=True)]
        for trow, nrow in zip(total, n, strict=True)
    ]


def collect(store: Store, now: float | None = None) -> Overview:
    """Gather the overview from ``store`` as of ``now`` (default: the wall clock).

    Reads the metric names, their state hashes, the last :data:`SPARK_MINUTES` minutes of
    counts, the emitters, the apps' drop counts, the silences (deleting ended silences)
    and the live workers. Raises
    :class:`~cliffwatch.errors.StoreError` if Redis fails.
    """
    at = math.floor(time.time() if now is None else now)
    names = store.metric_names()
    states = store.get_states(names)
    end = at - 1  # the current second is still open
    counts = store.read_counts(names, end - SPARK_MINUTES * 60, end)
    rates = per_minute_rates(counts, SPARK_MINUTES)
    recent = ~np.isnan(counts[:, -RECENT_S:])
    silences = Silences(store, clock=lambda: at).current()
    rows = [
        _metric_status(name, st, rows_rates, bool(recent[i].any()), silences, at)
        for i, (name, st, rows_rates) in enumerate(zip(names, states, rates, strict=True))
    ]
    emitters = sorted(
        (Emitter(name, last, max(0, at - last)) for name, last in store.emitters().items()),
        key=lambda e: e.name,
    )
    return Overview(
        at, rows, emitters, silences, store.drops(), worker_beat(store, at), worker_shares(store)
    )


def _metric_status(
    name: str,
    st: dict[str, str],
    rates: list[float | None],
    has_recent: bool,
    silences: Sequence[Silence],
    at: int,
) -> MetricStatus:
    phase = st.get("status", "")
    status_at = _int(st.get("status_at"))
    age = None if status_at is None else max(0, at - status_at)
    firing = st.get("state") == "firing"
    incident_silenced = firing and st.get("silenced") == "1"
    silence = first_covering(silences, name, at)
    no_data_since = _int(st.get("no_data_since"))
    if not phase:
        status = "not watched"
    elif age is None or age > NO_DATA_AFTER_S or not has_recent or no_data_since is not None:
        status = "no data"
    elif incident_silenced:
        status = "silenced"
    elif firing:  # paged before any silence that covers it now: it is still firing
        status = "firing"
    elif silence is not None:
        status = "silenced"
    else:
        status = phase
    return MetricStatus(
        metric=name,
        status=status,
        rate=_float(st.get("now_rate")),
        baseline=_float(st.get("now_baseline")),
        score=_float(st.get("now_score")),
        minutes_seen=_int(st.get("minutes_seen")),
        status_age_s=age,
        incident=st.get("incident_id", "") if firing else "",
        incident_started_at=_int(st.get("started_at")) if firing else None,
        incident_silenced=incident_silenced,
        silenced_by=silence.id if silence else "",
        rates_per_minute=rates,
        no_data_since=no_data_since if phase else None,
    )


def _float(text: str | None) -> float | None:
    try:
        x = float(text) if text else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def render(overview: Overview, source: str = "") -> str:
    """The overview as text for a terminal: a header (``source``, the emitters and their
    last flush, the events they dropped if any, the active silences), then one line per
    metric."""
    at = overview.at
    lines = [f"cliffwatch status  {iso(at)}" + (f"  {source}" if source else "")]
    if overview.worker is not None:
        lines.append(f"worker: {overview.worker.describe()}")
    if len(overview.workers) > 1:
        shown = ", ".join(
            f"{w.token.rsplit(':', 1)[0]} {w.metrics} metrics/{w.shards} shards"
            + (" (leader)" if w.leader else "")
            for w in overview.workers
        )
        lines.append(f"workers ({len(overview.workers)}): {shown}")
    if overview.emitters:
        shown = ", ".join(f"{e.name} {human_duration(e.age_s)} ago" for e in overview.emitters)
        lines.append(f"emitters ({len(overview.emitters)}): {shown}")
    else:
        lines.append("emitters: none has flushed")
    drops = {reason: n for reason, n in sorted(overview.drops.items()) if n}
    if drops:
        shown = ", ".join(f"{reason} {n}" for reason, n in drops.items())
        lines.append(f"dropped by apps: {sum(drops.values())} events ({shown})")
    if overview.silences:
        lines.append(f"silences ({len(overview.silences)}):")
        for s in overview.silences:
            lines.append(
                f"  {s.id}  {s.pattern}  until {iso(s.ends_at)} "
                f"({human_duration(s.ends_at - at)} left)  {s.created_by}: {s.reason}"
            )
    else:
        lines.append("silences: none")
    lines.append("")
    if not overview.metrics:
        lines.append("no metrics yet: no app has flushed to this Redis")
        return "\n".join(lines)
    width = max(6, *(len(m.metric) for m in overview.metrics))
    lines.append(
        f"{'metric':<{width}}  {'status':<11} {'rate/s':>9} {'normal/s':>9} {'score':>7}  "
        f"{'last ' + str(SPARK_MINUTES) + 'm':<{SPARK_MINUTES}}  incident since"
    )
    for m in overview.metrics:
        since = ""
        if m.incident_started_at is not None:
            since = f"{iso(m.incident_started_at)} ({human_duration(at - m.incident_started_at)})"
        elif m.no_data_since is not None:
            since = (
                f"{iso(m.no_data_since)} ({human_duration(at - m.no_data_since)}, "
                "no data: its apps stopped reporting)"
            )
        lines.append(
            f"{m.metric:<{width}}  {m.status:<11} {_fmt(m.rate):>9} {_fmt(m.baseline):>9} "
            f"{_fmt(m.score, 2):>7}  {m.sparkline:<{SPARK_MINUTES}}  {since}".rstrip()
        )
    return "\n".join(lines)


def _fmt(x: float | None, decimals: int | None = None) -> str:
    if x is None:
        return "-"
    return f"{x:.{decimals}f}" if decimals is not None else f"{x:.4g}"


def watch(
    draw: Callable[[], str],
    out: TextIO,
    interval: float = 1.0,
    stop: threading.Event | None = None,
    clear: str = CLEAR_SCREEN,
) -> None:
    """Write ``clear`` and ``draw()`` to ``out`` every ``interval`` seconds until ``stop``
    is set (or the caller's Ctrl-C). Exceptions from ``draw`` propagate."""
    stop = stop or threading.Event()
    while not stop.is_set():
        started = time.monotonic()
        text = draw()
        out.write(clear + text + "\n")
        out.flush()
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
