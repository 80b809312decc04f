"""The drop detector: per-second counts in, alert transitions out. Pure numpy, no I/O.

The score
---------
For every metric and every second ``t`` the detector asks, at each time scale ``w`` of
1, 2, 4, ... 512 seconds and about 17 and 34 minutes: *how far below what we should
have seen is the count of the last w seconds, in units of this metric's own noise at
that scale?* — the rate's derivative, in noise units.

* ``S`` is the number of events in the last ``w`` seconds (seconds with no data are left
  out: a gap is never read as zero events), ``n`` the seconds with data among them. A
  window with data in fewer than half its seconds is neither scored nor learnt from: a
  gap does not get the seconds before it judged again at a longer scale, whose noise
  is smaller, and does not teach a scale anything (it keeps what it had learnt).
* ``B`` is the metric's normal rate now: the lower of the median of its per-minute rates
  over the last hour (minutes inside an incident left out, so a surge that ends or a
  blip does not move it) and the daily cycle's rate for this minute (the same time on
  each of the last three days, scaled by how today's last hour compares with theirs).
  While a fall not yet paged goes 1.3 times as deep as the natural floor (below), at
  64 s or longer, the last hour's median is at least that of the hour before the
  fall's 16-minute lead-in: a quiet metric's fall, which can take half an hour to
  page, is not judged against itself.
* ``L`` is the rate in the ``max(w, 60)`` seconds just before the window. The window is
  judged against ``L`` when that is significantly (2 sd) below ``B`` — a decline or a
  dip already under way is not a new cliff — and against ``B`` otherwise. Without a
  known ``L`` (right after a gap or an incident) the window is not scored.
* A surge that ends is judged against where it began. A surge begins with a minute
  2 sd above ``B``, at twice the rate of the five minutes before (up to the minute
  before it, which it may have begun in) or more, and as far above ``B`` as that rate
  was below it (a metric coming back from a dip is no surge). While ``L`` takes in a
  surge or the minute after it, and the rate before the surge was significantly below
  ``B`` (the evening), the window is judged against no more than that rate: an
  evening surge falls back to the evening's rate, not to ``B``. What the metric
  teaches (noise, tail, floor, below) is learnt as before. A surge half an hour long
  is a new level (the last hour's median is its own) and its start is forgotten.
* ``E`` is that rate times ``n``: the count expected if nothing were wrong.
* The noise at scale ``w`` is learnt from the metric's own history: the variance of ``S``
  around ``E`` is ``E + v_w * E**2`` — Poisson noise plus the metric's burstiness and
  drift at that scale. ``v_w`` is a running average (6 h memory) of the squared
  shortfalls *below* the rate just before each window, outliers clipped, so surges
  teach nothing. That is a negative binomial, and ``r_w`` is its signed deviance
  residual: like ``(S - E) / sd`` for large counts, but exact about how telling a
  silent second is.
* The model's tail is checked against the metric's own history: at each scale the
  detector counts how often ``r_w`` falls below -2.5 outside incidents (a running
  average over three days) and compares that with how often the model says it would
  (0.62 %). Where falls that deep come more often — a metric that dives on its own —
  that scale's residuals are divided by ``2.5 / z``, ``z`` the normal quantile of the
  observed frequency (never by less than 1). A window with no events at all, at a
  scale where the metric was never silent on its own (natural floor above 0), is not
  divided: the tail measures partial falls, and a silence the metric never showed is
  an outage's signature.
* Such a silence, a minute or longer, is also judged against how many windows of its
  scale a month holds: a 1-second window is tried 2.6 million times a month, a
  17-minute one about 2,500 times, so one false page a month needs z = 5.4 at 1 s but
  only 4.0 at 17 minutes. ``r_w`` of a silent window is multiplied by ``z_1 / z_w``
  (1.17 at 64 s to 1.41 at 34 minutes). So is ``r_w`` of a partial fall that gets full
  weight below, one 1.3 times as deep as the metric has fallen on its own at that
  scale: like the silence, a fall the metric has not shown. Falls within its own
  range do not get this: there real series' tails are too heavy to trust the model
  that far (tried: on every window it more than doubled the false pages). A silence
  or fall under a minute is a blip (a pause, a restart).
* A fall must also be deeper than the metric falls on its own: the *natural floor*
  ``f_w`` is the third-lowest per-minute minimum of ``S / E`` over the last three days
  (an incident counts once, as one minute, unless it was silent at some scale, where
  20 events or more were expected: an outage is never a metric's nature, not even
  through its longer windows, which outlast it and see some events). The minutes of a
  fall before its page are the incident's too: a quiet metric's fall takes minutes to
  page, and counted as its own nature they would make the next such fall look natural.
  So a minute counts at once, but for good only when 16 minutes old (``LEAD_MINUTES``);
  a page takes back those not yet counted for good. ``r_w`` is weighted by
  ``min(1, (1 - S/E) / (1 - f_w) / 1.3)``: full weight only for a fall 1.3 times as deep
  as the natural one. Up to 512 s, ``f_w`` is the lowest floor at ``w`` or any longer
  scale up to 512 s: a metric that slides to 15 % over minutes on its own goes that low
  within seconds too, though its short windows, judged against the rate just before
  them while it slid, never saw it (the 17- and 34-minute windows see the daily cycle's
  half-hour swings and keep their own floor). A silent window keeps its own scale's
  floor: silence at a scale where the metric never went silent is an outage's
  signature. Where the window is judged against the rate just before it and
  that rate is already below the natural floor (at the scale of the rate before: a
  decline under way that has gone deeper than the metric goes on its own, without a
  page), the fall is measured against the normal rate instead: ``(E - S) / (B * n)``
  for ``1 - S/E``. What is left of such a decline is a small part of the normal rate,
  so a fade that ends in silence (a series interpolated down to nothing) is not a
  new cliff, while an outage from anywhere above the natural floor is measured as before.

The score is the steepest of those falls, scaled so that the threshold keeps its
meaning for a pager::

    score = 3 * min_w r_w / Z_PAGE

``Z_PAGE`` is 5.5: ``-3`` pages on a fall 5.5 sd deep at some scale, and ``-4`` asks for
7.3 sd. On synthetic noise (50 metrics from 0.2 to 1,000 events/s, burstiness 0 to 0.5,
30 days) that paged once in 1,450 judged metric-days, about once per metric every four
years. A fall builds evidence over several windows, so a busy metric (20/s) crosses
``-3`` within a second or two of an outage, and a quiet one (0.3/s) within a minute or
two: the delay adapts to volume on its own.

Firing and resolving
--------------------
A metric fires when its score is at or below its threshold, it is warm (``warmup_minutes``
of data seen, a day by default: its daily cycle) and its normal rate is known. While it
fires, its normal rate is frozen at the value it had when it fired, and incident minutes
teach the detector nothing. It resolves once the rate over the last ``w_r`` seconds
(long enough to expect 30 events, 30 s to 15 min, all after the page) is back to at
least 75 % of that frozen rate (or of the daily cycle's rate now, if lower), or is no
longer significantly (1 sd) below it. A metric that falls deep on its own is back
sooner: at its natural low, when that is below 75 % (an outage of a metric that dips to
a tenth of its level by nature is over once it runs at a tenth). The natural low is the
natural floor at the 512 s scale learnt from the metric's own falls only: earlier
incidents, which the floor counts once each, and the minutes before their pages are no
measure of where the metric goes by itself, and three halvings in a day must not make
the fourth over while it lasts.
An incident older than an hour lets its new level into the normal rate.

State changes only at whole-minute boundaries (normal rate, noise, floor) or at a
transition, so the result does not depend on how the counts are chunked: the worker
feeds one second at a time, ``backtest`` feeds whole blocks, and both get the same
alerts.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

SHORT_SCALES = tuple(2**i for i in range(10))  # 1 s .. 512 s, from the per-second history
LONG_MINUTES = (17, 34)  # about 1024 s and 2048 s, from per-minute totals (quiet metrics)
SCALES = SHORT_SCALES + tuple(60 * k for k in LONG_MINUTES)
HALF_SCALES = np.asarray(SCALES) / 2.0  # a window is scored with data in half its seconds
MINUTE_RING = 2 * max(LONG_MINUTES) + 4
_EDGES = (0, *sorted({m * k for k in LONG_MINUTES for m in (1, 2)}))  # minutes back: 0 17 34 68
_EDGE_AT = np.array([[_EDGES.index(k) - 1, _EDGES.index(2 * k) - 1] for k in LONG_MINUTES])
REF_MIN_S = 60  # a window is compared with the max(w, 60) seconds just before it
REF_SCALE = np.searchsorted(SCALES, np.maximum(SCALES, REF_MIN_S))  # ... at this scale
REF_SPANS = np.asarray(SHORT_SCALES) + np.maximum(SHORT_SCALES, REF_MIN_S)  # window and rate before
Z_PAGE = 5.5
RECENT_MINUTES = 60  # the recent normal: median of this many per-minute rates
DAY_MINUTES = 1440
PROFILE_DAYS = 3  # the daily cycle: the same time of day on each of the last 3 days
PROFILE_HALF_WIDTH = 5  # a day's rate at a minute: median of the 11 minutes around it
RING_MINUTES = PROFILE_DAYS * DAY_MINUTES + RECENT_MINUTES + PROFILE_HALF_WIDTH + 2
_HOUR_BEFORE = np.arange(1 - RECENT_MINUTES, 1)  # a day's last hour, up to a minute
_AROUND = np.arange(1 - PROFILE_HALF_WIDTH, 2 + PROFILE_HALF_WIDTH)  # 11 minutes around the next
_DAYS_BACK = DAY_MINUTES * np.arange(PROFILE_DAYS + 1)[:, None]  # today, then the earlier days
_HOURS_AT = _HOUR_BEFORE - _DAYS_BACK  # today's last hour and each earlier day's up to now
_PROFILE_AT = _AROUND - _DAYS_BACK[1:]  # the minutes around the next one on earlier days
FLOOR_MIN_EVENTS = 20.0  # natural falls are learnt where a window expects this many events
FLOOR_HALF_DAY = 720
FLOOR_HALF_DAYS = 6  # the natural floor remembers the last 2.5 to 3 days, in half-days
FLOOR_RANK = 3  # ... and is its third-lowest minute
LEAD_MINUTES = 16  # a fall's minutes count as the metric's nature once this old, unless
# it paged first: then they are the incident's lead-in
FALL_SCALE = SHORT_SCALES.index(64)  # falls seen at 64 s or longer hold the normal rate up
DEPTH_MARGIN = 1.3  # a fall must go this much deeper than the natural floor to score fully
SURGE_FACTOR = 2.0  # a surge begins at this many times the rate before it, and ...
SURGE_SCALE = SCALES.index(64)  # ... 2 sd above the normal rate, at the noise of this scale
SURGE_LEAD_MINUTES = 5  # the rate before a surge: these minutes, up to the one before it
SURGE_MAX_MINUTES = RECENT_MINUTES // 2  # a surge this long is the recent median's: a new level
WARMUP_MINUTES = DAY_MINUTES
NOISE_MEMORY_MINUTES = 360
PRIOR_EXCESS = 0.05  # burstiness assumed before any history: 22 % extra sd at every scale
TAIL_Z = 2.5  # residuals below -TAIL_Z are counted to check the noise model's tail ...
TAIL_P = 0.5 * math.erfc(TAIL_Z / math.sqrt(2.0))  # ... against how often it says they occur
TAIL_PRIOR_MINUTES = 60  # the model's own rate counts as this many minutes of history
TAIL_MEMORY_MINUTES = 3 * DAY_MINUTES
MONTH_S = 30 * 86400
GAIN_MIN_S = 64  # a silence (or fall) shorter than this is a blip: no scale gain
CLIP_SD = 5.0  # a second's residual counts at most this many sd when learning the noise
RESOLVE_EVENTS = 30.0
RESOLVE_MIN_S, RESOLVE_MAX_S = 30, 900
RESOLVE_FRACTION = 0.75
RESOLVE_FLOOR_SCALE = len(SHORT_SCALES) - 1  # the natural floor at 512 s bounds "back"
RELEARN_MINUTES = 60  # an incident this old teaches the normal rate again (a new level)
HISTORY_S = max(2 * max(SHORT_SCALES), REF_MIN_S + max(SHORT_SCALES), RESOLVE_MAX_S) + 64
RECENT_S = HISTORY_S - 1  # seconds of counts the ring of running sums can give back
SORT_MAX_COLUMNS = 256  # _three_lowest sorts up to this many columns, inserts beyond
LEND_S = 59  # seconds fed after Detector.pack_later at a whole minute, before the next closes


@dataclass(frozen=True, slots=True)
class Transition:
    """A metric's alert state changed at second ``at``."""

    index: int  # the metric's position in the detector
    state: str  # "firing" or "resolved"
    at: int  # epoch second of the last second that decided it
    score: float
    rate: float  # events/s at the decisive scale (firing) or over the resolve window
    baseline: float  # normal rate, events/s


class Detector:
    """Judges many metrics at once, one second or many seconds per call.

    ``update(counts, start)`` takes a ``(metrics, seconds)`` array of event counts
    (``NaN`` = no data) for consecutive seconds starting at epoch second ``start`` and
    returns the alert transitions in them. Seconds must follow on from the previous call;
    seconds skipped over count as no data, seconds already seen are ignored.
    """

    def __init__(
        self,
        n_metrics: int,
        thresholds: Sequence[float] | float = -3.0,
        min_rates: Sequence[float] | float = 0.0,
        warmup_minutes: int = WARMUP_MINUTES,
        *,
        host: Detector | None = None,
    ) -> None:
        m = n_metrics
        self.n = m
        # host: the detector these metrics are to be appended to (extend); the large
        # arrays are then its spare rows, written in place, so extend copies none of them
        self._host = host
        self._host_at = 0 if host is None else host._reserve(m)
        self.thresholds = np.broadcast_to(np.asarray(thresholds, float), (m,)).copy()
        self.min_rates = np.broadcast_to(np.asarray(min_rates, float), (m,)).copy()
        self.warmup_minutes = warmup_minutes
        self.next_second: int | None = None  # the epoch second the next count belongs to
        # running sums of counts and of seconds with data, in a ring of HISTORY_S seconds,
        # indexed by position (seconds fed since the start)
        # (the arrays whose first axis is the metric are the leading rows of buffers
        # with room for more metrics, see _ROWS_FIRST and extend)
        self._room: dict[str, np.ndarray] = {}
        self._csum = self._rows("_csum", (HISTORY_S,), np.float64, 0.0)
        self._cvalid = self._rows("_cvalid", (HISTORY_S,), np.float64, 0.0)
        self._pos = 0
        self._clear_pos = np.zeros(m, np.int64)  # windows start at or after this position
        # the minute being filled
        self._minute_sum = np.zeros(m)
        self._minute_valid = np.zeros(m)
        self._noise_sum = np.zeros((len(SCALES), m))
        self._noise_n = np.zeros((len(SCALES), m))
        # per-minute rates (NaN: no data or inside an incident), by epoch minute
        self._minutes = self._rows("_minutes", (RING_MINUTES,), np.float32, np.nan)
        self.minutes_seen = np.zeros(m, np.int64)
        # events and seconds with data of each recent minute (incidents included)
        self._mcount = self._rows("_mcount", (MINUTE_RING,), np.float64, 0.0)
        self._mvalid = self._rows("_mvalid", (MINUTE_RING,), np.float64, 0.0)
        self._mstart_pos = 0  # position of the first second of the current minute
        self._minute_now = 0  # and that minute (epoch minutes)
        self.excess = np.full((len(SCALES), m), PRIOR_EXCESS)
        self._tail_hits = np.zeros((len(SCALES), m))
        self._tail_n = np.zeros((len(SCALES), m))
        self._tail_minutes = np.zeros(m)
        self.tail = np.full((len(SCALES), m), TAIL_P)
        self.tail_scale = np.ones((len(SCALES), m))  # from ``tail``: see _tail_scale
        self._noise_minutes = np.zeros(m)
        # the natural floor: the lowest count/normal ratio at each scale, in two half-days
        self._minute_floor = np.full((len(SCALES), m), np.inf)
        self._incident_floor = np.full((len(SCALES), m), np.inf)  # lowest during the incident
        self._floor_now = np.full((FLOOR_RANK, len(SCALES), m), np.inf)
        self._floor_before = np.full((FLOOR_HALF_DAYS - 1, FLOOR_RANK, len(SCALES), m), np.inf)
        self.floor = np.full((len(SCALES), m), np.nan)
        # the same at RESOLVE_FLOOR_SCALE from the metric's own falls only (incidents
        # left out): the level at which an incident is over (_back_to)
        self._low_now = np.full((FLOOR_RANK, m), np.inf)
        self._low_before = np.full((FLOOR_HALF_DAYS - 1, FLOOR_RANK, m), np.inf)
        # the three lowest of the earlier half-days, kept at hand (see _past_lowest)
        self._floor_past = np.full((FLOOR_RANK, len(SCALES), m), np.inf)
        self._low_past = np.full((FLOOR_RANK, m), np.inf)
        # the last LEAD_MINUTES minutes' lowest ratios, not yet counted in _floor_now and
        # _low_now: a page takes them back as its lead-in (by epoch minute)
        self._lead = np.full((LEAD_MINUTES, len(SCALES), m), np.inf, np.float32)
        self.natural_low = np.full(m, np.nan)
        # the last surge (epoch minutes of its first and last minute) and the rate before
        # it, where that was significantly below the normal rate (NaN otherwise)
        self._surge_minute = np.full(m, -np.inf)
        self._surge_since = np.full(m, -np.inf)
        self._before_surge = np.full(m, np.nan)
        self.recent = np.full(m, np.nan)  # median rate of the last hour
        self.expected = np.full(m, np.nan)  # yesterday's rate now, scaled to today's level
        self.baseline = np.full(m, np.nan)  # the normal rate: the lower of the two
        # alert state
        self.firing = np.zeros(m, bool)
        self.frozen = np.full(m, np.nan)  # normal rate when the incident fired
        self._fire_pos = np.zeros(m, np.int64)
        # the last second's figures, for status displays
        self.score = np.zeros(m)
        self.rate = np.full(m, np.nan)
        self.last_data = np.full(m, -np.inf)
        """Epoch second of each metric's newest second with data fed so far (primed
        history included); ``-inf`` while none had any. Seconds of no data (NaN) leave it
        as it is, so ``end - 1 - last_data`` is how long a metric has had no data."""

    # -- public -----------------------------------------------------------------

    @property
    def _minutes_t(self) -> np.ndarray:
        return self._minutes.T  # a view, metric last, for snapshot and restore

    @property
    def _mcount_t(self) -> np.ndarray:
        return self._mcount.T

    @property
    def _mvalid_t(self) -> np.ndarray:
        return self._mvalid.T

    def judged(self) -> np.ndarray:
        """Which metrics have enough history and volume to be judged (bool per metric)."""
        out: np.ndarray = (
            (self.minutes_seen >= self.warmup_minutes)
            & np.isfinite(self.baseline)
            & (self.baseline > self.min_rates)
            & (self.baseline > 0)
        )
        return out

    def recent_rate(self, seconds: int = 10) -> np.ndarray:
        """Events per second over the last ``seconds`` seconds with data (NaN if none)."""
        if not self._pos:
            return np.full(self.n, np.nan)
        seconds = min(seconds, self._pos, HISTORY_S - 1)
        end, begin = (self._pos - 1) % HISTORY_S, (self._pos - 1 - seconds) % HISTORY_S
        c = self._csum[:, end] - (self._csum[:, begin] if self._pos > seconds else 0.0)
        v = self._cvalid[:, end] - (self._cvalid[:, begin] if self._pos > seconds else 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(v > 0, c / v, np.nan)

    def minute_rates(self, i: int, minutes: int = 30) -> np.ndarray:
        """Metric ``i``'s events per second in each of its last ``minutes`` minutes (at
        most :data:`MINUTE_RING`), oldest first: the minute being filled last, over its
        seconds so far (when it has any with data), the closed minutes before it; NaN
        for a minute without data or not seen yet. Raises ``IndexError`` for an unknown
        metric."""
        if not 0 <= i < self.n:
            raise IndexError(f"no metric {i} (the detector has {self.n})")
        minutes = max(0, min(minutes, MINUTE_RING))
        if self.next_second is None or not minutes:
            return np.full(minutes, np.nan)
        last = self.next_second // 60 - 1  # the newest closed minute (epoch minutes)
        partial = self.next_second % 60 != 0 and self._minute_valid[i] > 0
        closed = minutes - 1 if partial else minutes
        idx = np.arange(last - closed + 1, last + 1) % MINUTE_RING
        count, valid = self._mcount[i, idx], self._mvalid[i, idx]
        if partial:
            count = np.append(count, self._minute_sum[i])
            valid = np.append(valid, self._minute_valid[i])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(valid > 0, count / valid, np.nan)

    def update(self, counts: np.ndarray, start: int, judge: bool = True) -> list[Transition]:
        """Feed ``counts[:, j]`` for epoch second ``start + j``; return the transitions.

        ``judge=False`` is for seconds already judged elsewhere (by the worker that held
        these metrics before): they are stored and go into the per-minute rates and the
        daily cycle as usual, but are not scored, learnt from (noise, tail, natural
        floor) or decided on, which makes them far cheaper to feed."""
        counts = np.asarray(counts, float)
        if counts.ndim != 2 or counts.shape[0] != self.n:
            raise ValueError(f"counts must have shape ({self.n}, seconds), got {counts.shape}")
        if self.next_second is None:
            self.next_second = start
        if start < self.next_second:  # already seen: keep only the new part
            counts = counts[:, self.next_second - start :]
            start = self.next_second
        out: list[Transition] = []
        if start > self.next_second:  # a jump: the missing seconds are no data
            out += self._feed(np.full((self.n, start - self.next_second), np.nan), judge)
        out += self._feed(counts, judge)
        return out

    def prime(self, counts: np.ndarray, start: int) -> None:
        """Fill the per-second history with ``counts`` (as for :meth:`update`) without
        learning or deciding anything: used after :meth:`restore` so the windows of the
        next seconds see the seconds before the snapshot."""
        counts = np.asarray(counts)
        n = counts.shape[1]
        for lo in range(0, self.n, _GATHER_ROWS):  # a block of rows at a time: less memory
            rows = slice(lo, lo + _GATHER_ROWS)
            block = np.asarray(counts[rows], float)
            valid = ~np.isnan(block)
            self._store(np.where(valid, block, 0.0), valid, rows)
            self._note_data(valid, start, rows)
        self._pos += n
        self.next_second = start + n

    def snapshot(self, i: int) -> dict[str, np.ndarray]:
        """What metric ``i`` has learnt (normal rates, noise, floor, alert state), to be
        stored and given back to :meth:`restore` after a restart. Only valid at a whole
        minute (right after an update that ended on one)."""
        return {name: np.asarray(np.take(getattr(self, name), i, axis=-1)) for name in _LEARNT}

    def restore(self, i: int, state: dict[str, np.ndarray]) -> None:
        """Give metric ``i`` back what :meth:`snapshot` took. Unknown or misshapen parts
        raise ``ValueError``; parts learnt only since an earlier version (:data:`_ADDED`)
        may be missing and keep what a new metric starts with (the natural low is then
        taken from the natural floor, as :func:`_low_from_floor` does)."""
        for name in _LEARNT:
            if name in _ADDED and name not in state:
                continue
            target = getattr(self, name)
            value = np.asarray(state[name])
            if value.shape != target[..., i].shape:
                raise ValueError(f"snapshot part {name!r} has shape {value.shape}")
            target[..., i] = value
        self.tail_scale[:, i] = _tail_scale(self.tail[:, i])
        if "natural_low" not in state:  # saved before it was learnt: as _low_from_floor
            for low, floor in _LOW_OF_FLOOR:
                getattr(self, low)[..., i] = getattr(self, floor)[..., RESOLVE_FLOOR_SCALE, i]
        self._past_lowest([i])
        if self.firing[i]:  # windows must not reach back into the open incident
            self._fire_pos[i] = self._pos

    def pack(self, rows: Sequence[int]) -> np.ndarray:
        """What the metrics at ``rows`` learnt (as :meth:`snapshot`), packed: one row of
        :func:`packed_size` bytes per metric, copied in one go. Same validity as
        :meth:`snapshot` (a whole minute)."""
        idx = np.asarray(rows, np.int64)
        return np.concatenate([self._packed_part(name, idx) for name in _LEARNT], axis=1)

    def _packed_part(self, name: str, idx: np.ndarray) -> np.ndarray:
        if name.endswith("_t"):  # a transposed view: gather rows of the real array
            flat = np.take(getattr(self, name[:-2]), idx, axis=0)
        else:
            value = np.take(getattr(self, name), idx, axis=-1)  # (..., k)
            flat = np.ascontiguousarray(np.moveaxis(value, -1, 0))
        out: np.ndarray = flat.reshape(len(idx), -1).view(np.uint8)
        return out

    def recent_counts(self, rows: Sequence[int]) -> np.ndarray:
        """The counts of the metrics at ``rows`` in the :data:`RECENT_S` seconds before
        :attr:`next_second`, as float32 ``(len(rows), RECENT_S)`` (NaN: no data, or not
        fed): what :meth:`prime` needs to go on from here in another process."""
        return self._recent(np.asarray(rows, np.int64), self._pos, self._csum, self._cvalid)

    def pack_later(self, rows: Sequence[int]) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        """:meth:`pack` and :meth:`recent_counts` of the metrics at ``rows`` as of now (a
        whole minute), copied in two steps so that a snapshot takes little of a tick.
        Now: what the next :data:`LEND_S` seconds fed would overwrite (the learnt
        figures other than the minute rings, and the oldest :data:`LEND_S` seconds of
        the ring of running sums: about 4 KB per metric). The function returned copies
        the rest (the minute rings and the rest of the ring, about 35 KB) and gives
        ``(packed, recent)``; it may run in another thread, but must be done before this
        detector is fed more than :data:`LEND_S` seconds or :meth:`keep` moves its rows
        (:meth:`extend` and :meth:`take` leave them alone)."""
        idx = np.asarray(rows, np.int64)
        now = {n: self._packed_part(n, idx) for n in _LEARNT if n not in _MINUTE_RINGS}
        rings = {n: getattr(self, n[:-2]) for n in _MINUTE_RINGS}  # the arrays as they are
        pos, csum, cvalid = self._pos, self._csum, self._cvalid
        cells = np.ix_(idx, (pos + np.arange(LEND_S)) % HISTORY_S)  # oldest positions first
        head = (csum[cells], cvalid[cells])

        def finish() -> tuple[np.ndarray, np.ndarray]:
            parts = [
                np.take(rings[n], idx, axis=0).reshape(len(idx), -1).view(np.uint8)
                if n in rings
                else now[n]
                for n in _LEARNT
            ]
            return np.concatenate(parts, axis=1), self._recent(idx, pos, csum, cvalid, head)

        return finish

    @staticmethod
    def _recent(
        idx: np.ndarray,
        pos: int,
        csum: np.ndarray,
        cvalid: np.ndarray,
        head: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """:meth:`recent_counts` at position ``pos`` from the rings of running sums,
        ``head``: their oldest cells as they were then (see :meth:`pack_later`)."""
        positions = np.arange(pos - RECENT_S, pos)
        known = positions >= max(1, pos - HISTORY_S + 1)
        first = np.flatnonzero(positions == 0)  # the very first second fed: no sum before
        oldest = pos % HISTORY_S  # the ring's cell of position pos - HISTORY_S
        out = np.empty((len(idx), RECENT_S), np.float32)
        for lo in range(0, len(idx), _GATHER_ROWS):
            part = idx[lo : lo + _GATHER_ROWS]
            sums = []
            for k, ring in enumerate((csum, cvalid)):  # each row oldest position first
                r = ring[part]
                rotated = np.concatenate((r[:, oldest:], r[:, :oldest]), axis=1)
                if head is not None:
                    rotated[:, :LEND_S] = head[k][lo : lo + _GATHER_ROWS]
                sums.append(rotated)
            counts, valid = np.diff(sums[0], axis=1), np.diff(sums[1], axis=1) > 0.5
            valid &= known
            if first.size:  # position 0 is HISTORY_S - pos cells after the oldest
                counts[:, first] = sums[0][:, HISTORY_S - pos : HISTORY_S - pos + 1]
                valid[:, first] = sums[1][:, HISTORY_S - pos : HISTORY_S - pos + 1] > 0.5
            out[lo : lo + len(part)] = np.where(valid, counts, np.nan)
        return out

    def unpack(self, rows: Sequence[int], packed: np.ndarray) -> None:
        """Give the metrics at ``rows`` back what :meth:`pack` took (a ``(len(rows),
        packed_size())`` uint8 array). Raises ``ValueError`` for a misshapen array."""
        idx = np.asarray(rows, np.int64)
        packed = np.asarray(packed, np.uint8)
        if packed.shape != (len(idx), packed_size()):
            raise ValueError(f"packed snapshots have shape {packed.shape}")
        parts = _split(packed, _LEARNT)
        for name, (shape, dtype) in zip(_LEARNT, _packed_layout(), strict=True):
            part = np.ascontiguousarray(parts[name]).view(dtype)
            if name.endswith("_t"):
                getattr(self, name[:-2])[idx] = part.reshape(len(idx), *shape)
            else:
                target = getattr(self, name)
                target[..., idx] = np.moveaxis(part.reshape(len(idx), *shape), 0, -1)
        self.tail_scale[:, idx] = _tail_scale(self.tail[:, idx])
        self._past_lowest(idx)
        firing = idx[self.firing[idx]]
        self._fire_pos[firing] = self._pos  # windows must not reach back into the incident

    @property
    def position(self) -> int:
        """Seconds fed since the start (counted from :meth:`align`'s ``pos``)."""
        return self._pos

    def take(self, rows: Sequence[int]) -> Detector:
        """A detector of the metrics at ``rows`` only (in that order), with everything
        they learnt and their recent seconds: it goes on as this one would for them."""
        out = copy.copy(self)
        out._room, out._host = {}, None
        idx = np.asarray(rows, np.int64)
        for name, value in vars(self).items():
            if not isinstance(value, np.ndarray):
                continue
            if name in _ROWS_FIRST:
                part = out._rows(name, value.shape[1:], value.dtype, None, len(idx))
                np.take(value, idx, axis=0, out=part)
            else:
                part = np.take(value, idx, axis=-1)
            setattr(out, name, part)
        out.n = len(idx)
        return out

    def keep(self, rows: Sequence[int]) -> np.ndarray:
        """Keep only the metrics at ``rows``, in place, and return their new order:
        ``order[i]`` is the old row of the metric now at row ``i``. In the large arrays
        only the kept metrics past the new end move, into the rows of those dropped
        before it, so handing a few of many metrics over copies only a few rows (unlike
        :meth:`take`); the small arrays are gathered. Raises ``ValueError`` for a row out
        of range."""
        idx = np.unique(np.asarray(rows, np.int64))
        if idx.size and (idx[0] < 0 or idx[-1] >= self.n):
            raise ValueError(f"rows must be within 0..{self.n - 1}")
        k = len(idx)
        kept = np.zeros(self.n, bool)
        kept[idx] = True
        holes, movers = np.flatnonzero(~kept[:k]), idx[idx >= k]
        order = np.arange(k)
        order[holes] = movers
        for name, value in list(vars(self).items()):
            if not isinstance(value, np.ndarray):
                continue
            if name in _ROWS_FIRST:
                value[holes] = value[movers]
                setattr(self, name, value[:k])
            else:
                setattr(self, name, np.take(value, order, axis=-1))
        self.n = k
        return order

    def extend(self, other: Detector) -> None:
        """Append ``other``'s metrics to this detector's, in place. Both must be at the
        same second and position (``other`` built to line up with this one, see
        :meth:`align`); raises ``ValueError`` otherwise.

        The large per-metric arrays (the per-second ring, the 3-day minute ring) keep
        spare rows, allocated but never written until used, so taking metrics on copies
        only the newcomers' rows; they double when full."""
        if (other.next_second, other._pos, other.warmup_minutes) != (
            self.next_second,
            self._pos,
            self.warmup_minutes,
        ):
            raise ValueError(
                f"cannot join detectors at second {self.next_second} position {self._pos} "
                f"and second {other.next_second} position {other._pos}"
            )
        n, total = self.n, self.n + other.n
        self._reserve(other.n)
        in_place = other._host is self and other._host_at == n
        for name, value in list(vars(self).items()):
            if not isinstance(value, np.ndarray):
                continue
            if name in _ROWS_FIRST:
                buf = self._room[name]
                theirs = getattr(other, name)
                if not (in_place and theirs.base is buf):  # else written there already
                    buf[n:total] = theirs
                setattr(self, name, buf[:total])
            else:
                setattr(self, name, np.concatenate([value, getattr(other, name)], axis=-1))
        self.n = total
        other._host = None  # its rows are this detector's now

    def _reserve(self, k: int) -> int:
        """Make room for ``k`` more metrics in the large arrays' buffers (moving them to
        larger ones, twice as large, when full); return the first spare row."""
        for name in _ROWS_FIRST:
            value = getattr(self, name)
            if len(self._room[name]) < self.n + k:
                self._rows(name, value.shape[1:], value.dtype, None, self.n + k)[: self.n] = value
                setattr(self, name, self._room[name][: self.n])
        return self.n

    def _rows(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: type | np.dtype,
        fill: float | None,
        n: int | None = None,
    ) -> np.ndarray:
        """A new ``(n, *shape)`` array (``n``: this detector's metrics), filled with
        ``fill`` unless ``None``: the leading rows of a buffer kept in ``_room[name]``
        with room for as many again (memory the system hands out only once written: a
        worker taking over the metrics of another as large as itself fills it without
        copying its own), or, for a detector with a host, the host's spare rows."""
        n = self.n if n is None else n
        if self._host is not None:  # the host's spare rows
            rows: np.ndarray = self._host._room[name][self._host_at : self._host_at + n]
        else:
            self._room[name] = np.empty((n + max(n, 16), *shape), dtype)
            rows = self._room[name][:n]
        if fill is not None:
            rows[...] = fill
        return rows

    def renumber(self, rings: int) -> None:
        """Count positions ``rings * HISTORY_S`` higher (the ring of running sums stays
        as it is), so a detector with a longer history than this one's can be aligned
        and appended to it (:meth:`extend`). Nothing it computes changes."""
        k = int(rings) * HISTORY_S
        self._pos += k
        self._mstart_pos += k
        self._clear_pos += k
        self._fire_pos += k

    def align(self, pos: int) -> None:
        """Start counting positions at ``pos`` (before anything is fed), so that after as
        many seconds as another detector has fed since its own position ``pos`` this one
        can be appended to it (:meth:`extend`). Raises ``ValueError`` once seconds were
        fed or for ``pos < 0``."""
        if self._pos or self.next_second is not None or pos < 0:
            raise ValueError(f"align({pos}) only on a fresh detector, with pos >= 0")
        self._pos = pos
        self._clear_pos[:] = pos  # no window reaches back before the first second fed
        self._mstart_pos = pos

    # -- internals --------------------------------------------------------------

    def _feed(self, counts: np.ndarray, judge: bool = True) -> list[Transition]:
        out: list[Transition] = []
        assert self.next_second is not None
        j, total = 0, counts.shape[1]
        # the math below divides by what may be 0 and compares NaN (no data, no rate
        # yet) on purpose, and where() keeps only the well-defined results: quietly
        with np.errstate(invalid="ignore", divide="ignore"):
            while j < total:
                take = min(60 - self.next_second % 60, total - j)
                out += self._chunk(counts[:, j : j + take], judge)
                j += take
                if self.next_second % 60 == 0:
                    self._close_minute(self.next_second // 60 - 1)
        return out

    def _chunk(self, x: np.ndarray, judge: bool = True) -> list[Transition]:
        """Seconds within one minute: store them and (``judge``) score them, learn from
        them and decide."""
        m, n = x.shape
        assert self.next_second is not None
        start = self.next_second
        valid = ~np.isnan(x)
        xz = np.where(valid, x, 0.0)
        self._store(xz, valid)
        self._note_data(valid, start)
        pos0 = self._pos
        self._mstart_pos = pos0 - start % 60
        self._minute_now = start // 60
        self._pos += n
        self.next_second = start + n
        self._minute_sum += xz.sum(axis=1)
        self._minute_valid += valid.sum(axis=1)
        if not judge:
            return []

        # score, learn and decide second by second in effect: up to the next transition
        # everything is vectorized; after one, the rest of the chunk is scored again
        rows = np.arange(m)
        judged = self.judged()
        out: list[Transition] = []
        j = 0
        while j < n:
            score, s, nv, worst, e, local, raw = self._scores(pos0 + j, n - j)
            k, changes = self._next_transitions(score, s, nv, worst, pos0 + j, n - j, judged)
            upto = n - j if k is None else k + 1
            self._learn_noise(s[..., :upto], nv[..., :upto], local[..., :upto], e[..., :upto])
            self._learn_tail(raw[..., :upto], e[..., :upto], nv[..., :upto])
            if k is None:
                break
            for t in changes:
                out.append(self._apply(t, pos0 + j + k, start + j + k))
            j += k + 1
        self.score = score[:, -1]
        last_k = worst[:, -1]
        self.rate = s[last_k, rows, -1] / nv[last_k, rows, -1]
        return out

    def _past_lowest(self, rows: list[int] | np.ndarray | slice = slice(None)) -> None:
        """The three lowest of the earlier half-days' floors and lows, of the metrics
        at ``rows``: they change only when a half-day ends (or a metric is restored),
        so the floor each minute merges only the current half-day's with them."""
        for past, before in (
            (self._floor_past, self._floor_before),
            (self._low_past, self._low_before),
        ):
            past[..., rows] = functools.reduce(_lowest_of_both, before[..., rows])

    def _store(self, counts: np.ndarray, valid: np.ndarray, rows: slice = slice(None)) -> None:
        """Add the running sums of ``counts`` (no data as 0) and of ``valid`` for the
        seconds from position ``_pos`` on to the ring (the last HISTORY_S of them) of
        the metrics at ``rows``."""
        n = counts.shape[1]
        for ring, add in ((self._csum[rows], counts), (self._cvalid[rows], valid)):
            sums = np.cumsum(add, axis=1, dtype=np.float64)
            if self._pos:
                sums += ring[:, (self._pos - 1) % HISTORY_S, None]
            skip = max(0, n - HISTORY_S)  # overwritten within this call anyway
            first = (self._pos + skip) % HISTORY_S
            wrap = max(0, first + n - skip - HISTORY_S)
            ring[:, first : first + n - skip - wrap] = sums[:, skip : n - wrap]
            ring[:, :wrap] = sums[:, n - wrap :]

    def _note_data(self, valid: np.ndarray, start: int, rows: slice = slice(None)) -> None:
        """Move :attr:`last_data` of the metrics at ``rows`` to the newest second with
        data among ``valid`` (``(metrics, seconds)``, the first being epoch second
        ``start``)."""
        n = valid.shape[1]
        if not n:
            return
        newest = start + n - 1 - np.argmax(valid[:, ::-1], axis=1)
        self.last_data[rows] = np.where(valid.any(axis=1), newest, self.last_data[rows])

    def _window_sums(
        self, rows: slice, pos0: int, n: int, widths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Events and seconds with data in the ``w`` seconds up to each new second, for
        each width: two ``(widths, rows, n)`` arrays. Seconds before a metric's clear
        position (inside its last incident) are left out of its windows."""
        ends = pos0 + np.arange(n)
        ei = ends % HISTORY_S
        begins = np.maximum(ends[None, :] - widths[:, None], -1)  # -1: before the first
        first = max(pos0 - int(widths.max()), -1)  # the earliest of begins
        clear = self._clear_pos[rows]
        late = np.flatnonzero(clear - 1 > first)  # a window starts in an incident
        out = []
        # a slice of the rows is a view: whole columns are taken for every metric at
        # once, then the few metrics whose last incident cuts into a window again
        for ring in (self._csum[rows], self._cvalid[rows]):
            cols = np.take(ring, (begins % HISTORY_S).ravel(), axis=1).reshape(-1, *begins.shape)
            if first < 0:  # windows that begin before the first second fed
                cols = np.where(begins >= 0, cols, 0.0)
            at_begin = cols.transpose(1, 0, 2)  # (widths, rows, n)
            if late.size:
                cut = np.maximum(begins[:, None, :], clear[late][None, :, None] - 1)
                cells = ring[late[None, :, None], cut % HISTORY_S]
                at_begin[:, late] = np.where(cut >= 0, cells, 0.0)
            out.append(ring[:, ei][None] - at_begin)
        return out[0], out[1]

    def _scores(self, pos0: int, n: int) -> tuple[np.ndarray, ...]:
        """Score the new seconds of every metric: ``(score, S, n, worst scale, E, local
        rate, r_w before the tail and the floor weigh it)``, E and r_w as learnt from
        (not lowered after a surge); see the module docstring."""
        widths = np.asarray(SHORT_SCALES)
        refs = np.maximum(widths, REF_MIN_S)
        sums, nvs = self._window_sums(slice(None), pos0, n, np.concatenate([widths, REF_SPANS]))
        k = len(widths)
        s, nv = sums[:k], nvs[:k]
        nref = nvs[k:] - nv
        local = np.where(nref >= refs[:, None, None] / 2, (sums[k:] - s) / nref, np.nan)
        ls, lnv, llocal, lnref = self._long_windows(pos0, n)
        s, nv = np.concatenate([s, ls]), np.concatenate([nv, lnv])
        local, nref = _joined(local, llocal), _joined(nref, lnref)
        e = self._expected(local, nref) * nv
        raw = _nb_signed_root(s, e, self.excess[:, :, None])
        # the windows after a surge are judged against the rate before it; what the
        # metric teaches (noise, tail, floor) is learnt as before (learnt = e, raw)
        learnt = e, raw
        after = self._after_surge(pos0, n)
        if after is not None:
            at = np.nonzero(after.any(axis=2))  # (scale, metric) pairs: mostly the long scales
            level = np.fmin(e[at], self._before_surge[at[1], None] * nv[at])
            e, raw = e.copy(), raw.copy()
            e[at] = np.where(after[at], level, e[at])
            raw[at] = _nb_signed_root(s[at], e[at], self.excess[at][:, None])
        floor = self.floor[:, :, None]
        silent = (s == 0) & (floor > 0)
        r = np.where(silent, raw, raw / self.tail_scale[:, :, None])
        # a fall is weighed against the metric's own falls at its scale and the longer
        # ones (_reach); a silence against those at its own scale
        reach = _reach(self.floor)
        weigh = np.where(silent, floor, reach[:, :, None])
        # a decline already deeper than the metric's natural fall: what is left of it
        # counts as a fraction of the normal rate
        normal = self.baseline[None, :, None] * nv
        norm = np.where(e < reach[REF_SCALE, :, None] * normal, normal, e)
        depth = (e - s) / norm / (1.0 - weigh) / DEPTH_MARGIN
        r = r * np.where(np.isfinite(depth), np.clip(depth, 0.0, 1.0), 1.0)
        # a silence the metric never showed, or a fall weighed fully (beyond its own
        # falls by the margin), needs only the sd of one false page a month at its scale
        r = np.where(silent | (depth >= 1.0), r * SCALE_GAIN[:, None, None], r)
        r = np.where(nv >= HALF_SCALES[:, None, None], r, 0.0)  # half its seconds, or no say
        worst = np.argmin(r, axis=0)
        score = 3.0 * r.min(axis=0) / Z_PAGE
        return score, s, nv, worst, learnt[0], local, learnt[1]

    def _expected(self, local: np.ndarray, nref: np.ndarray) -> np.ndarray:
        """The rate each window is judged against: the rate just before it when that is
        significantly (2 sd) below the normal rate — a decline already under way, a
        dip, the evening — and the normal rate otherwise, which is the steadier of the
        two for a quiet metric. 0 (no score) when the rate before is unknown: after a
        gap, or right after an incident."""
        base = self.baseline[None, :, None]
        z = (local - base) * nref / np.sqrt(base * nref)
        level = np.where(np.isfinite(base) & ~(z < -2.0), base, local)
        return np.where(np.isfinite(local), level, 0.0)

    def _after_surge(self, pos0: int, n: int) -> np.ndarray | None:
        """Which windows of the seconds from position ``pos0`` on are compared with a
        rate before them that takes in a surge or the minute after it (``(scales,
        metrics, n)``; ``None`` when none are)."""
        # the position at which the minute after each metric's last surge ends
        end = self._mstart_pos + 60.0 * (self._surge_minute + 2 - self._minute_now)
        end = np.where(np.isfinite(self._before_surge), end, -np.inf)
        q = pos0 + np.arange(n)
        short = q[None, :] + 1 - REF_SPANS[:, None]  # where each window's rate before begins
        long = np.repeat(self._mstart_pos - 120 * np.asarray(LONG_MINUTES)[:, None], n, axis=1)
        first = np.concatenate([short, long])
        if not (end > first.min()).any():
            return None
        out: np.ndarray = first[:, None, :] < end[None, :, None]
        return out

    def _long_windows(self, pos0: int, n: int) -> tuple[np.ndarray, ...]:
        """Like the short windows, for LONG_MINUTES: this minute so far plus the last
        ``k`` whole minutes, against the ``k`` whole minutes before them (their rate and
        seconds with data: one per metric, ``(len(LONG_MINUTES), metrics, 1)``)."""
        ms = self._mstart_pos
        c, v = self._csum, self._cvalid
        ei = (pos0 + np.arange(n)) % HISTORY_S
        have = ms >= 1
        before = (ms - 1) % HISTORY_S
        part_c = c[:, ei] - (c[:, before, None] if have else 0.0)
        part_v = v[:, ei] - (v[:, before, None] if have else 0.0)
        win_c, win_v, ref_c, ref_v = self._long_totals(self._minute_now)
        k = np.asarray(LONG_MINUTES)[:, None]
        clear = self._clear_pos[None, :]
        ok = ((ms - 60 * k >= clear) & (ms - 60 * k >= 0))[:, :, None]
        ref_ok = (ms - 120 * k >= clear) & (ref_v >= 30 * k)
        loc = np.where(ref_ok, ref_c / ref_v, np.nan)
        return (
            np.where(ok, win_c[:, :, None] + part_c, 0.0),
            np.where(ok, win_v[:, :, None] + part_v, 0.0),
            loc[:, :, None],
            ref_v[:, :, None],
        )

    def _long_totals(self, minute: int) -> tuple[np.ndarray, ...]:
        """Events and seconds with data of every metric in the last ``k`` whole minutes
        before epoch minute ``minute`` and in the ``k`` before those, for each ``k`` of
        LONG_MINUTES: four ``(len(LONG_MINUTES), metrics)`` arrays. Each minute is read
        once: the spans between the windows' edges are summed, then added up (counts are
        whole numbers: the sums are exact in any order)."""
        spans = [self._minute_totals(minute - b, minute - a) for a, b in itertools.pairwise(_EDGES)]
        back_c, back_v = (np.cumsum([t[j] for t in spans], axis=0) for j in (0, 1))
        near, far = _EDGE_AT[:, 0], _EDGE_AT[:, 1]  # the edges k and 2k
        return back_c[near], back_v[near], back_c[far] - back_c[near], back_v[far] - back_v[near]

    def _minute_totals(self, first: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Events and seconds with data of every metric in epoch minutes ``first`` up to
        ``end`` (at most MINUTE_RING of them)."""
        count, valid = (
            sum(part.sum(axis=1) for part in _ring_slices(ring, first, end))
            for ring in (self._mcount, self._mvalid)
        )
        return count, valid

    def _learn_tail(self, raw: np.ndarray, expect: np.ndarray, nv: np.ndarray) -> None:
        """Count how often each scale's residual falls below -TAIL_Z (where enough
        events are expected to tell, outside incidents)."""
        full = nv >= HALF_SCALES[:, None, None]
        learn = (expect >= 5) & full & ~self.firing[None, :, None]
        self._tail_hits += (learn & (raw < -TAIL_Z)).sum(axis=2)
        self._tail_n += learn.sum(axis=2)

    def _learn_noise(
        self, s: np.ndarray, nv: np.ndarray, local: np.ndarray, expect: np.ndarray
    ) -> None:
        """Learn from this chunk's seconds: the spread *below* the local rate just before
        each window (the recent normal where that is unknown) at each scale (twice the
        mean squared shortfall, so surges teach nothing; outliers clipped at CLIP_SD),
        and the deepest falls below what the score expects (the natural floor; so the
        end of a surge, scored against the normal level, teaches it nothing)."""
        ref = np.where(np.isfinite(local), local, self.recent[None, :, None])
        e = ref * nv
        full = nv >= HALF_SCALES[:, None, None]  # as scored: data in half its seconds
        learn = (e >= 5) & full & ~self.firing[None, :, None]
        var = e + self.excess[:, :, None] * e * e
        short2 = np.minimum(np.maximum(e - s, 0.0) ** 2, CLIP_SD**2 * var)
        obs = (2.0 * short2 - e) / (e * e)
        big = (expect >= FLOOR_MIN_EVENTS) & full
        fell = s / expect
        self._noise_sum += np.where(learn, obs, 0.0).sum(axis=2)
        self._noise_n += learn.sum(axis=2)
        ratio = np.where(big & ~self.firing[None, :, None], fell, np.inf)
        self._minute_floor = np.minimum(self._minute_floor, ratio.min(axis=2))
        if self.firing.any():
            during = np.where(big & self.firing[None, :, None], fell, np.inf)
            self._incident_floor = np.minimum(self._incident_floor, during.min(axis=2))

    def _close_minute(self, minute: int) -> None:
        """Minute ``minute`` (epoch minutes) ended: learn the normal rate and the noise."""
        r = RING_MINUTES
        rate = self._minute_sum / self._minute_valid
        long_incident = self.firing & (self._pos - self._fire_pos >= RELEARN_MINUTES * 60)
        usable = (self._minute_valid >= 30) & (~self.firing | long_incident)
        self._minutes[:, minute % r] = np.where(usable, rate, np.nan)
        self._mcount[:, minute % MINUTE_RING] = self._minute_sum
        self._mvalid[:, minute % MINUTE_RING] = self._minute_valid
        self.minutes_seen += self._minute_valid >= 30

        self._note_surges(minute)
        hours = _nanmedian(self._minutes.take((minute + _HOURS_AT) % r, axis=1))
        recent, then = hours[:, 0], hours[:, 1:]  # today's last hour: the recent normal
        # a fall under way, not paged, that goes deeper than the metric has gone on its
        # own (its lead-in minutes DEPTH_MARGIN times as far below the normal rate as
        # the floor counted for good, at a minute or longer: a fall the score weighs
        # fully) does not pull the normal rate down with it: the hour before its
        # lead-in counts too. So a quiet metric's fall, which takes long to page, is
        # not judged against itself after half an hour.
        deep = slice(FALL_SCALE, None)
        settled = _rank_floor(self._floor_past[:, deep], self._floor_now[:, deep])
        deeper = self._lead[:, deep].min(axis=0) < 1.0 - DEPTH_MARGIN * (1.0 - settled)
        falling = np.flatnonzero(deeper.any(axis=0))
        if falling.size:
            lead_in = minute - LEAD_MINUTES
            before = _nanmedian(self._minutes[falling[:, None], (lead_in + _HOUR_BEFORE) % r])
            recent[falling] = np.fmax(recent[falling], before)
        # the daily cycle: each of the last days' rate around this time of day, scaled
        # by how today's last hour compares with that day's hour before it
        profile = _nanmedian(self._minutes.take((minute + _PROFILE_AT) % r, axis=1))
        guesses = np.where(then > 0, profile * recent[:, None] / then, np.nan)
        expected = _nanmedian(guesses)
        self.recent, self.expected = recent, expected
        self.baseline = np.where(np.isfinite(expected), np.fmin(recent, expected), recent)
        # an incident that has lasted long is a new level: let it lower the frozen rate
        lower = long_incident & (recent > 0)
        self.frozen[lower] = np.fmin(self.frozen[lower], recent[lower])

        # the natural floor: the FLOOR_RANK-th lowest of the per-minute lowest ratios
        # over the last 2.5 to 3 days, so one blip or one odd minute does not set it;
        # the natural low likewise, at one scale. A minute counts for good once
        # LEAD_MINUTES old; the newer ones count too, unless a page takes them back.
        slot = minute % LEAD_MINUTES
        old = self._lead[slot]
        self._floor_now = _lowest_with(self._floor_now, old)
        self._low_now = _lowest_with(self._low_now, old[RESOLVE_FLOOR_SCALE])
        self._lead[slot] = self._minute_floor
        self._minute_floor[:] = np.inf
        lead = _three_lowest(self._lead)
        self.floor = _rank_floor(self._floor_past, _lowest_of_both(self._floor_now, lead))
        self.natural_low = _rank_floor(
            self._low_past, _lowest_of_both(self._low_now, lead[:, RESOLVE_FLOOR_SCALE])
        )
        if minute % FLOOR_HALF_DAY == 0:
            before, now = self._floor_before, self._floor_now
            self._floor_before, self._floor_now = _next_half_day(before, now)
            self._low_before, self._low_now = _next_half_day(self._low_before, self._low_now)
            self._past_lowest()

        got = self._noise_n > 0
        obs = self._noise_sum / self._noise_n
        self._noise_minutes += got.any(axis=0)
        alpha = np.maximum(1.0 / np.maximum(self._noise_minutes, 1), 1.0 / NOISE_MEMORY_MINUTES)
        upd = np.maximum(self.excess + alpha[None, :] * (obs - self.excess), 1e-4)
        excess = np.where(got, upd, np.nan)
        # scales too short to learn from (fewer than 5 events expected at the recent
        # rate) take the burstiness of the shortest scale that could; a scale that
        # learnt nothing for want of data (a gap) keeps what it had
        first = np.argmax(got, axis=0)
        fill = excess[first, np.arange(self.n)]
        too_short = self.recent[None, :] * np.asarray(SCALES)[:, None] < 5
        short = too_short & (np.arange(len(SCALES))[:, None] < first[None, :])
        excess = np.where(short & np.asarray(got.any(axis=0))[None, :], fill[None, :], excess)
        self.excess = np.where(np.isnan(excess), self.excess, excess)
        self._minute_sum[:] = 0
        self._minute_valid[:] = 0
        self._noise_sum[:] = 0
        self._noise_n[:] = 0
        # the tail: how often residuals fall below -TAIL_Z, against how often they would
        # if the noise were as modelled; a heavier tail stretches that scale's residuals
        got = self._tail_n > 0
        freq = self._tail_hits / self._tail_n
        self._tail_minutes += got.any(axis=0)
        alpha = np.maximum(
            1.0 / (self._tail_minutes + TAIL_PRIOR_MINUTES), 1.0 / TAIL_MEMORY_MINUTES
        )
        self.tail = np.where(got, self.tail + alpha[None, :] * (freq - self.tail), self.tail)
        self.tail_scale = _tail_scale(self.tail)
        self._tail_hits[:] = 0
        self._tail_n[:] = 0

    def _note_surges(self, minute: int) -> None:
        """Was minute ``minute`` part of a surge? Its first minute is 2 sd above the
        normal rate (at the metric's noise at SURGE_SCALE), SURGE_FACTOR times the rate
        before it (the SURGE_LEAD_MINUTES minutes up to the one before it, which the
        surge may have begun in) and as far above the normal rate as that rate was
        below it (a metric coming back from a dip is no surge); later minutes are as
        far above the normal rate within two minutes of the last. At its first minute,
        remember the rate before it if that was significantly (2 sd) below the normal
        rate; forget it once the surge has lasted SURGE_MAX_MINUTES, a new level."""
        base, got = self.baseline, self._minute_sum
        expect = base * self._minute_valid
        sd = np.sqrt(expect + self.excess[SURGE_SCALE] * expect * expect)
        above = np.flatnonzero((got - expect >= 2.0 * sd) & (expect > 0) & ~self.firing)
        if not above.size:
            return
        going = self._surge_minute[above] >= minute - 2
        count, valid = self._minute_totals(minute - 1 - SURGE_LEAD_MINUTES, minute - 1)
        c, v, b = count[above], valid[above], base[above]
        rate = got[above] / self._minute_valid[above]
        before = np.where(v >= 30 * SURGE_LEAD_MINUTES, c / v, np.nan)
        new = ~going & (rate >= SURGE_FACTOR * before) & (rate - b >= b - before)
        low = (before - b) * v < -2.0 * np.sqrt(b * v)
        self._before_surge[above[new]] = np.where(low[new], before[new], np.nan)
        self._surge_since[above[new]] = minute
        old = above[going & (minute - self._surge_since[above] >= SURGE_MAX_MINUTES)]
        self._before_surge[old] = np.nan
        self._surge_minute[above[going | new]] = minute

    def _next_transitions(
        self,
        score: np.ndarray,
        s: np.ndarray,
        nv: np.ndarray,
        worst: np.ndarray,
        pos0: int,
        n: int,
        judged: np.ndarray,
    ) -> tuple[int | None, list[Transition]]:
        """The first of these ``n`` seconds at which any metric fires or resolves, and
        the transitions at that second (``index`` set, ``at`` still relative)."""
        fire = ~self.firing[:, None] & judged[:, None] & (score <= self.thresholds[:, None])
        back = np.zeros_like(fire)
        firing = np.flatnonzero(self.firing)
        resolve_at: dict[int, tuple[float, float]] = {}
        for i in firing:
            base, w = self._resolve_level(int(i))
            sr, nr = self._window_sums(slice(i, i + 1), pos0, n, np.array([w]))
            sr, nr = sr[0, 0], nr[0, 0]
            er = base * nr
            scale = min(int(np.searchsorted(SCALES, w)), len(SCALES) - 1)
            rr = _nb_signed_root(sr, er, self.excess[scale, i])
            after = pos0 + np.arange(n) >= self._fire_pos[i] + w
            ok = after & (nr >= w / 2) & ((sr >= self._back_to(int(i)) * er) | (rr > -1.0))
            back[i] = ok
            hit = np.flatnonzero(ok)
            if hit.size:
                resolve_at[int(i)] = (float(sr[hit[0]] / nr[hit[0]]), float(w))
        any_change = fire | back
        cols = np.flatnonzero(any_change.any(axis=0))
        if not cols.size:
            return None, []
        k = int(cols[0])
        changes = []
        for i in np.flatnonzero(any_change[:, k]):
            if fire[i, k]:
                w = worst[i, k]
                rate = float(s[w, i, k] / nv[w, i, k]) if nv[w, i, k] else 0.0
                changes.append(
                    Transition(
                        int(i), "firing", k, float(score[i, k]), rate, float(self.baseline[i])
                    )
                )
            else:
                rate, _ = resolve_at[int(i)]
                changes.append(
                    Transition(
                        int(i), "resolved", k, float(score[i, k]), rate, float(self.frozen[i])
                    )
                )
        return k, changes

    def _back_to(self, i: int) -> float:
        """The fraction of the resolve level that counts as back: RESOLVE_FRACTION, or
        metric ``i``'s natural low at the longest short scale (about 8 minutes) when that
        is lower. A metric that falls to a tenth of its level on its own is within its
        nature again at a tenth; the incident, deeper than that, is over. The natural low
        is learnt from the metric's own falls only: where earlier incidents took it is
        no measure of where it goes by itself."""
        natural = float(self.natural_low[i])
        return min(RESOLVE_FRACTION, natural) if natural > 0 else RESOLVE_FRACTION

    def _resolve_level(self, i: int) -> tuple[float, int]:
        """The rate metric ``i`` must get back to (the normal rate when it fired, or the
        daily cycle's rate now if that is lower: an incident over the evening's decline
        resolves at the evening's level), and the window judging it (30 events' worth)."""
        base = float(np.fmin(self.frozen[i], self.expected[i]))
        if not base > 0:
            base = float(self.frozen[i])
        if not base > 0:
            return base, RESOLVE_MIN_S
        return base, int(np.clip(math.ceil(RESOLVE_EVENTS / base), RESOLVE_MIN_S, RESOLVE_MAX_S))

    def _apply(self, t: Transition, pos: int, at: int) -> Transition:
        """Change metric ``t.index``'s state at position ``pos`` (epoch second ``at``)."""
        i = t.index
        if t.state == "firing":
            self.firing[i] = True
            self.frozen[i] = self.baseline[i]
            self._fire_pos[i] = pos
            # the falls of the minutes before the page were the incident's beginning,
            # not the metric's nature: they count with the incident, once
            lead = np.fmin(self._lead[:, :, i].min(axis=0), self._minute_floor[:, i])
            self._incident_floor[:, i] = np.fmin(self._incident_floor[:, i], lead)
            self._lead[:, :, i] = np.inf
            self._minute_floor[:, i] = np.inf
        else:
            _, w = self._resolve_level(i)
            self.firing[i] = False
            self.frozen[i] = np.nan
            self._clear_pos[i] = pos - w + 1
            # an incident counts once among the natural falls: one odd minute does not
            # set the floor, three cliffs in a day are this metric's nature
            inc = self._incident_floor[:, i]
            if (inc > 0).all():  # an outage (silence at any scale) is never its nature
                self._floor_now[:, :, i] = _lowest_with(self._floor_now[:, :, i], inc)
            self._incident_floor[:, i] = np.inf
        return Transition(i, t.state, at, t.score, t.rate, t.baseline)


# what a metric learns, each an attribute whose last axis is the metric
_LEARNT = (
    "_minutes_t",
    "_mcount_t",
    "_mvalid_t",
    "minutes_seen",
    "excess",
    "_noise_minutes",
    "_tail_minutes",
    "tail",
    "_floor_now",
    "_floor_before",
    "floor",
    "_low_now",
    "_low_before",
    "natural_low",
    "_lead",
    "_surge_since",
    "_surge_minute",
    "_before_surge",
    "recent",
    "expected",
    "baseline",
    "firing",
    "frozen",
)


# parts learnt only since a later version (the tail calibration; the natural low
# without incidents; the minutes a page may take back; the last surge): snapshots saved
# before lack them
_ADDED_SINCE = (
    frozenset({"_tail_minutes", "tail"}),
    frozenset({"_low_now", "_low_before", "natural_low"}),
    frozenset({"_lead"}),
    frozenset({"_surge_since", "_surge_minute", "_before_surge"}),
)
_ADDED = frozenset().union(*_ADDED_SINCE)
_EARLIER = tuple(  # earlier packed layouts, oldest first
    tuple(n for n in _LEARNT if n not in frozenset().union(*_ADDED_SINCE[k:]))
    for k in range(len(_ADDED_SINCE))
)
_LOW_OF_FLOOR = (  # the natural low's parts, and the natural floor's they are made from
    ("_low_now", "_floor_now"),
    ("_low_before", "_floor_before"),
    ("natural_low", "floor"),
)


def _packed_layout() -> list[tuple[tuple[int, ...], np.dtype]]:
    """Each learnt part's per-metric shape and dtype, in :data:`_LEARNT` order."""
    if not _LAYOUT:
        one = Detector(1)
        for name in _LEARNT:
            value = getattr(one, name)
            _LAYOUT.append((tuple(value.shape[:-1]), value.dtype))
    return _LAYOUT


_LAYOUT: list[tuple[tuple[int, ...], np.dtype]] = []


@functools.cache
def _part_sizes() -> dict[str, int]:
    """Bytes of each learnt part of one metric's packed snapshot."""
    return {
        name: int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        for name, (shape, dtype) in zip(_LEARNT, _packed_layout(), strict=True)
    }


def _split(packed: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The parts of packed snapshots (bytes on the last axis) laid out as ``names``."""
    sizes, parts, at = _part_sizes(), {}, 0
    for name in names:
        parts[name], at = packed[..., at : at + sizes[name]], at + sizes[name]
    return parts


@functools.cache
def _new_metric_parts() -> dict[str, np.ndarray]:
    """The packed parts of a metric that has learnt nothing yet."""
    return _split(Detector(1).pack([0])[0], _LEARNT)


def packed_size() -> int:
    """Bytes of one metric's packed snapshot (:meth:`Detector.pack`)."""
    return sum(_part_sizes().values())


def upgrade_packed(row: np.ndarray) -> np.ndarray | None:
    """One metric's packed snapshot in an earlier layout (saved by an earlier version,
    before the parts in :data:`_ADDED` were learnt) as a row of this layout, those parts
    as a new metric starts with them (the natural low: from the natural floor, see
    :func:`_low_from_floor`); ``None`` if ``row`` has no known layout's size."""
    sizes = _part_sizes()
    for names in _EARLIER:
        if row.size == sum(sizes[n] for n in names):
            parts = {**_new_metric_parts(), **_split(row, names)}
            if "natural_low" not in names:
                parts.update(_low_from_floor(parts))
            return np.concatenate([parts[n] for n in _LEARNT])
    return None


def _low_from_floor(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The packed parts of the natural low, for a snapshot saved before it was learnt:
    the natural floor's at RESOLVE_FLOOR_SCALE, incidents included, as that version
    resolved by."""
    shapes = dict(zip(_LEARNT, (shape for shape, _ in _packed_layout()), strict=True))
    out = {}
    for low, floor in _LOW_OF_FLOOR:
        values = np.frombuffer(parts[floor].tobytes(), np.float64).reshape(shapes[floor])
        out[low] = np.ascontiguousarray(values[..., RESOLVE_FLOOR_SCALE]).view(np.uint8).ravel()
    return out


_GATHER_ROWS = 1024  # rows copied out at a time (bounds the temporary memory)

# attributes whose FIRST axis is the metric (every other array's last axis is): the
# large ones, kept as the leading rows of a buffer with spare rows (Detector.extend)
_ROWS_FIRST = frozenset({"_csum", "_cvalid", "_minutes", "_mcount", "_mvalid"})
# the parts of a snapshot written only when a minute closes (Detector.pack_later)
_MINUTE_RINGS = ("_minutes_t", "_mcount_t", "_mvalid_t")


_Z_GRID = np.linspace(0.5, 8.0, 600)
_LOG_P_GRID = np.log([0.5 * math.erfc(z / math.sqrt(2.0)) for z in _Z_GRID])


def _normal_quantile_z(p: np.ndarray) -> np.ndarray:
    """The z with P(Z < -z) = p for a standard normal Z (0.5 <= z <= 8)."""
    with np.errstate(divide="ignore"):
        logp = np.log(np.clip(p, 1e-300, 0.5))
    z: np.ndarray = np.interp(-logp, -_LOG_P_GRID, _Z_GRID)
    return z


def _scale_gain() -> np.ndarray:
    """Per scale: the standard deviations a one-second window needs for one false page
    a month over those a window of this scale needs (a month holds fewer of them); 1
    below GAIN_MIN_S."""
    widths = np.asarray(SCALES, float)
    z = _normal_quantile_z(widths / MONTH_S / len(SCALES))
    return np.where(widths >= GAIN_MIN_S, z[0] / z, 1.0)


SCALE_GAIN = _scale_gain()


def _reach(floor: np.ndarray) -> np.ndarray:
    """The natural floor a fall is weighed against, from the floor at each scale
    (``(scales, metrics)``): at a scale up to 512 s, the lowest of its own and those of
    the longer ones up to 512 s. A metric that falls to 15 % over 8 minutes on its own
    goes at least that low within some seconds of them, though its short windows, judged
    against the rate just before them while it slid, never saw it. The 17- and 34-minute
    scales keep their own: half-hour windows see the daily cycle's swings, which say
    nothing about how deep the metric falls within seconds. NaN stays NaN (a scale too
    short for the metric to learn from)."""
    k = len(SHORT_SCALES)
    short = floor[:k]
    out = floor.copy()
    out[:k] = np.where(np.isnan(short), np.nan, np.fmin.accumulate(short[::-1], axis=0)[::-1])
    return out


def _tail_scale(tail: np.ndarray) -> np.ndarray:
    """What a scale's residuals are divided by, from how often they fell below -TAIL_Z
    (``tail``): ``TAIL_Z / z`` of that frequency, never below 1."""
    scale: np.ndarray = np.maximum(TAIL_Z / _normal_quantile_z(tail), 1.0)
    return scale


# The natural floor keeps the FLOOR_RANK (3) lowest values of each half-day, sorted along
# the first axis. Selecting them with elementwise min and max is exact (NaN counts as
# +inf, where a sort puts it) and several times as fast as sorting millions of columns
# of 4 to 18 values along a strided axis.


def _lowest_with(low: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The three lowest of ``low`` (three lowest, sorted) and one more value ``x``:
    as :func:`_lowest_of_both` of ``low`` and the triple ``x``, NaN, NaN (NaN counts
    last), with the terms that NaN drops left out."""
    a0, a1, a2 = low
    return np.stack(
        [np.fmin(a0, x), np.fmin(a1, np.maximum(a0, x)), np.fmin(a2, np.maximum(a1, x))]
    )


def _lowest_of_both(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The three lowest of two sorted triples: the k-th lowest of the union is the lowest
    of ``max(a[i-1], b[k-i-1])`` over ``i``."""
    a0, a1, a2 = a
    b0, b1, b2 = b
    out = np.empty(np.broadcast_shapes(a.shape, b.shape), np.result_type(a, b))
    np.fmin(a0, b0, out=out[0, ...])
    np.fmin(np.fmin(a1, b1), np.maximum(a0, b0), out=out[1, ...])
    out[2, ...] = _third_of_both(a, b)
    return out


def _third_of_both(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The third lowest of two sorted triples (the last row of :func:`_lowest_of_both`)."""
    a0, a1, a2 = a
    b0, b1, b2 = b
    third: np.ndarray = np.fmin(np.fmin(a2, b2), np.fmin(np.maximum(a0, b1), np.maximum(a1, b0)))
    return third


def _three_lowest(values: np.ndarray) -> np.ndarray:
    """The three lowest along the first axis of ``values`` (at least one), sorted: as
    ``np.sort(values, axis=0)[:3]``, which it is for a few columns; for many, each
    slice is inserted in turn, in place, which takes a quarter of the time of sorting
    them all (one sort call costs less than the inserts' calls below a few hundred)."""
    if len(values) >= 3 and values[0].size <= SORT_MAX_COLUMNS:
        return np.sort(values, axis=0)[:3]
    low0 = values[0].copy()
    low1, low2 = np.full_like(low0, np.inf), np.full_like(low0, np.inf)
    up, up2 = np.empty_like(low0), np.empty_like(low0)
    for x in values[1:]:
        np.maximum(low0, x, out=up)
        np.minimum(low0, x, out=low0)
        np.maximum(low1, up, out=up2)
        np.minimum(low1, up, out=low1)
        np.minimum(low2, up2, out=low2)
    return np.stack([low0, low1, low2])


def _rank_floor(past: np.ndarray, now: np.ndarray) -> np.ndarray:
    """The FLOOR_RANK-th lowest ratio of the earlier half-days (``past``) and this one
    (``now``: each their lowest, sorted), within 0..1; NaN where there is none yet."""
    low = _third_of_both(past, now)
    return np.where(np.isfinite(low), np.clip(low, 0.0, 1.0), np.nan)


def _next_half_day(before: np.ndarray, now: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``now`` joins the earlier half-days (the oldest drops out); the new one is empty."""
    return np.concatenate([now[None], before[:-1]]), np.full_like(now, np.inf)


def _joined(short: np.ndarray, long: np.ndarray) -> np.ndarray:
    """The short scales' ``(scales, metrics, seconds)`` array followed by the long
    scales', given one value per metric (``(scales, metrics, 1)``) for every second."""
    out = np.empty((short.shape[0] + long.shape[0], *short.shape[1:]))
    out[: short.shape[0]] = short
    out[short.shape[0] :] = long
    return out


def _ring_slices(ring: np.ndarray, first: int, end: int) -> list[np.ndarray]:
    """The columns of ``ring`` (a ring buffer along its second axis) for positions
    ``first`` up to ``end``, as views: one slice, or two where they wrap around its end.
    Slices, not an index array: gathering the columns by index took 2-4 times as long
    as the sum or median taken over them."""
    size = ring.shape[1]
    lo, hi = first % size, (end - 1) % size + 1
    return [ring[:, lo:hi]] if lo < hi else [ring[:, lo:], ring[:, :hi]]


def _nanmedian(a: np.ndarray) -> np.ndarray:
    """Medians along the last axis ignoring NaN; NaN where there are no values."""
    rows = a.reshape(-1, a.shape[-1])
    srt = np.sort(rows, axis=1)  # NaN sorts last
    count = np.sum(~np.isnan(rows), axis=1)
    at = np.arange(len(rows))
    mid = (srt[at, np.maximum((count - 1) // 2, 0)] + srt[at, count // 2]) / 2
    out: np.ndarray = np.where(count > 0, mid, np.nan).astype(float)
    return out.reshape(a.shape[:-1])


def _nb_signed_root(s: np.ndarray, e: np.ndarray, excess: np.ndarray | float) -> np.ndarray:
    """Signed deviance residual of count ``s`` against a negative binomial with mean ``e``
    and variance ``e + excess * e**2`` (0 where nothing was expected or seen)."""
    k = 1.0 / np.asarray(excess)
    seen = s > 0
    sk = s + k
    with np.errstate(invalid="ignore", divide="ignore"):
        slog = np.log(np.where(seen, s, 1.0) / e)
        slog *= s
        klog = np.log(sk / (e + k))
        klog *= sk
        d = np.where(seen, slog, 0.0)
        d -= klog
        d *= 2.0
        np.sqrt(np.maximum(d, 0.0, out=d), out=d)
        d *= np.sign(s - e)
    return np.where((e > 0) & np.isfinite(d), d, 0.0)
