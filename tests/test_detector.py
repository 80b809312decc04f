"""The detector's math on small synthetic series, without Redis."""

from __future__ import annotations

import copy
import functools
import math
import struct
import zlib

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from cliffwatch.alerting import snapshots
from cliffwatch.rules.detector import (
    _ADDED_SINCE,
    _LEARNT,
    _LOW_OF_FLOOR,
    HISTORY_S,
    LEND_S,
    RECENT_MINUTES,
    RECENT_S,
    RESOLVE_FLOOR_SCALE,
    RING_MINUTES,
    SCALES,
    SHORT_SCALES,
    SORT_MAX_COLUMNS,
    TAIL_P,
    Detector,
    _lowest_of_both,
    _lowest_with,
    _nb_signed_root,
    _rank_floor,
    _reach,
    _split,
    _three_lowest,
)

T0 = 1_700_000_000 - 1_700_000_000 % 60  # a whole minute
WARMUP = 30


def bursty(curve: np.ndarray, seed: int, cv: float = 0.15) -> np.ndarray:
    """Per-second counts at the rates of ``curve``, bursty like real traffic: each
    10-second block's rate times a gamma multiplier with coefficient of variation ``cv``."""
    rng = np.random.default_rng(seed)
    burst = np.repeat(rng.gamma(1 / cv**2, cv**2, len(curve) // 10 + 1), 10)
    return rng.poisson(curve * burst[: len(curve)]).astype(float)


def poisson(rate: float, seconds: int, seed: int = 0) -> np.ndarray:
    """Per-second counts at ``rate``, bursty as :func:`bursty` (cv 0.15)."""
    return bursty(np.full(seconds, rate), seed)


def run(series: np.ndarray, threshold: float = -3.0, step: int | None = None) -> list:
    det = Detector(1, threshold, warmup_minutes=WARMUP)
    x = series[None, :]
    if step is None:
        return det.update(x, T0)
    out = []
    for j in range(0, x.shape[1], step):
        out += det.update(x[:, j : j + step], T0 + j)
    return out


def history(rate: float, minutes: int = 45, seed: int = 0) -> np.ndarray:
    return poisson(rate, minutes * 60, seed)


def test_signed_root_of_silence_is_minus_sqrt_2e_for_poisson() -> None:
    """With no burstiness, a silent window's residual is -sqrt(2E), as for a Poisson."""
    r = _nb_signed_root(np.array([0.0]), np.array([8.0]), 1e-9)
    assert r[0] == pytest.approx(-4.0, rel=1e-4)


def test_busy_outage_pages_within_two_seconds_and_resolves_once() -> None:
    """At 50/s an outage pages within 2 s of its first silent second and resolves once
    the rate is back."""
    h = history(50)
    start = len(h)
    series = np.concatenate([h, np.zeros(300), poisson(50, 600, seed=1)])
    out = run(series)
    assert [t.state for t in out] == ["firing", "resolved"]
    assert T0 + start <= out[0].at <= T0 + start + 2
    assert out[0].rate == 0.0 and out[0].baseline == pytest.approx(50, rel=0.25)
    back = T0 + start + 300
    assert back <= out[1].at <= back + 90


def test_quiet_metric_outage_pages_within_a_few_optimal_delays() -> None:
    """At 0.5/s the optimal delay for an outage at one false alarm a month is about
    log(2.6e6)/0.5 = 30 s; the page comes within three times that."""
    h = history(0.5, seed=2)
    start = len(h)
    series = np.concatenate([h, np.zeros(900), poisson(0.5, 900, seed=3)])
    out = run(series)
    assert out and out[0].state == "firing"
    limit = math.log(30 * 86400) / 0.5
    assert out[0].at - (T0 + start) <= 3 * limit
    assert [t.state for t in out] == ["firing", "resolved"]


@pytest.mark.parametrize("seed", range(3))
def test_trickle_outage_pages_within_two_optimal_delays(seed: int) -> None:
    """At 0.05/s (three events a minute) the optimal delay for an outage at one false
    alarm a month is log(2.6e6)/0.05 = 295 s; a long silence, judged against how few
    windows of its length a month holds, pages within twice that."""
    minutes = 12 * 60
    h = poisson(0.05, minutes * 60, seed=50 + seed)
    det = Detector(1, warmup_minutes=minutes)
    assert det.update(h[None], T0) == []
    after = np.concatenate([np.zeros(1800), poisson(0.05, 1800, seed=60 + seed)])
    out = det.update(after[None], T0 + len(h))
    assert [t.state for t in out] == ["firing", "resolved"]
    limit = math.log(30 * 86400) / 0.05
    assert out[0].at - (T0 + len(h)) <= 2 * limit


def test_halving_pages_but_later_than_an_outage() -> None:
    """A fall to half at 50/s pages, later than an outage would, and resolves."""
    h = history(50, seed=4)
    start = len(h)
    series = np.concatenate([h, poisson(25, 900, seed=5), poisson(50, 900, seed=6)])
    out = run(series)
    assert [t.state for t in out] == ["firing", "resolved"]
    assert 2 <= out[0].at - (T0 + start) <= 120


def with_dips(rate: float, minutes: int, dips: list[int], seed: int) -> np.ndarray:
    """Counts at ``rate`` (bursty as :func:`poisson`) with natural dips to 5 % starting
    at each minute in ``dips``: a 1-minute ramp down, 15 minutes low, a ramp back up."""
    curve = np.full(minutes * 60, rate)
    for m in dips:
        a = m * 60
        curve[a : a + 60] = np.linspace(rate, 0.05 * rate, 60)
        curve[a + 60 : a + 960] = 0.05 * rate
        curve[a + 960 : a + 1020] = np.linspace(0.05 * rate, rate, 60)
    return bursty(curve, seed)


@pytest.mark.parametrize(("dips", "resolves"), [([40, 100, 150], True), ([], False)])
def test_outage_resolves_at_the_metrics_natural_low_level(
    dips: list[int], resolves: bool
) -> None:
    """After an outage the metric comes back at a tenth of its level. One that dipped
    to 5 % on its own three times (while warming up) is back within its nature: the
    incident resolves within a minute of the outage's end. A steady one at a tenth is
    still down: it keeps firing."""
    history_min = 180
    h = with_dips(50, history_min, dips, seed=30)
    rng = np.random.default_rng(31)
    after = rng.poisson(np.concatenate([np.full(1800, 50.0), np.zeros(600), np.full(1800, 5.0)]))
    det = Detector(1, -3.0, warmup_minutes=history_min)
    out = det.update(np.concatenate([h, after.astype(float)])[None], T0)
    outage = T0 + len(h) + 1800
    assert out[0].state == "firing" and outage <= out[0].at <= outage + 2
    if resolves:
        assert [t.state for t in out] == ["firing", "resolved"]
        assert outage + 600 < out[1].at <= outage + 660
        assert out[1].rate < 0.2 * 50
    else:
        assert [t.state for t in out] == ["firing"]


@pytest.mark.parametrize("seed", [60, 61])
def test_an_incident_is_over_where_the_metric_goes_by_itself_not_where_incidents_took_it(
    seed: int,
) -> None:
    """A steady metric falls to 30 % for 12 minutes four times in three hours. Each fall
    pages and resolves only once the rate is back, within a minute of its end: three
    incidents at 30 % do not make 30 % the level at which the fourth counts as over.
    (They still count among the natural falls when scoring: the fourth pages anyway.)"""
    curve = np.full(240 * 60, 50.0)
    starts = [60, 110, 160, 210]  # minutes
    for m in starts:
        curve[m * 60 : (m + 12) * 60] = 15.0
    out = run(bursty(curve, seed))
    assert [t.state for t in out] == ["firing", "resolved"] * len(starts)
    for m, fired, resolved in zip(starts, out[::2], out[1::2], strict=True):
        began, ended = T0 + m * 60, T0 + (m + 12) * 60
        assert began <= fired.at <= began + 30
        assert ended <= resolved.at <= ended + 60, (m, resolved.at - ended)


@pytest.mark.parametrize("seed", range(104, 112))
def test_the_minutes_before_a_page_are_the_incidents_not_the_metrics_nature(seed: int) -> None:
    """A quiet metric (0.3/s) falls to 30 % for 25 minutes; at that volume the page
    takes minutes. The minutes of the fall before the page are the incident's: they
    do not lower the natural low (where the metric goes by itself), which is what it
    was before the fall, so the incident resolves only once the rate is back. (Counted
    as the metric's own, they took the natural low to 45-79 % and resolved two of these
    incidents 2 to 14 minutes early.)"""
    warm, low = 12 * 3600, 1500
    curve = np.full(warm + low + 3600, 0.3)
    curve[warm : warm + low] = 0.3 * 0.3
    counts = bursty(curve, seed)[None]
    det = Detector(1, warmup_minutes=warm // 60)
    assert det.update(counts[:, :warm], T0) == []
    natural_low = det.natural_low[0]
    began, ended = T0 + warm, T0 + warm + low
    out = det.update(counts[:, warm : warm + low + 120], began)
    assert [t.state for t in out] == ["firing", "resolved"]
    assert began < out[0].at <= began + low // 2
    assert ended <= out[1].at
    assert det.natural_low[0] == natural_low  # as it was when the incident ended
    assert det.update(counts[:, warm + low + 120 :], ended + 120) == []


@pytest.mark.parametrize("seed", range(120, 128))
def test_an_outage_never_becomes_the_metrics_nature_not_even_before_its_page(
    seed: int,
) -> None:
    """At 0.1/s an outage pages about four minutes in; its silent minutes before the
    page would otherwise set the natural floor of the 4- and 8-minute windows (to
    17-39 % from 43-51 %), and the next outage would count as partly natural. The
    natural floor at those scales is no lower after the outage than before it."""
    warm, low = 12 * 3600, 1200
    curve = np.full(warm + low + 3600, 0.1)
    curve[warm : warm + low] = 0.0
    counts = bursty(curve, seed)[None]
    det = Detector(1, warmup_minutes=warm // 60)
    det.update(counts[:, :warm], T0)
    short = len(SHORT_SCALES)  # up to 512 s
    before = det.floor[:short, 0].copy()
    assert np.isfinite(before[-2:]).all()  # the 256 s and 512 s floors are learnt
    out = det.update(counts[:, warm:], T0 + warm)
    assert [t.state for t in out] == ["firing", "resolved"]
    assert T0 + warm + 120 < out[0].at <= T0 + warm + 600
    after = det.floor[:short, 0]
    assert ((after >= before) | np.isnan(before)).all(), (before, after)


@pytest.mark.parametrize("seed", range(130, 136))
def test_outages_shorter_than_the_long_windows_do_not_lower_their_floor(seed: int) -> None:
    """Three 6-minute outages an hour apart at 1/s: each pages and resolves. The 8- to
    34-minute windows outlast them and never fall silent, yet an outage is no measure
    of the metric's own falls at any scale: the natural floor there is what it was
    before (counted once each, three of them took the 512 s floor from 0.85-0.88 to
    0.27-0.33, and a later fall to a third would have counted as natural)."""
    warm, every, low = 12 * 3600, 3600, 360
    curve = np.full(warm + 3 * every + 3600, 1.0)
    starts = [warm + k * every for k in range(3)]
    for a in starts:
        curve[a : a + low] = 0.0
    counts = bursty(curve, seed)[None]
    det = Detector(1, warmup_minutes=warm // 60)
    det.update(counts[:, :warm], T0)
    before = det.floor[:, 0].copy()
    out = det.update(counts[:, warm:], T0 + warm)
    assert [t.state for t in out] == ["firing", "resolved"] * 3
    for a, fired in zip(starts, out[::2], strict=True):
        assert T0 + a < fired.at <= T0 + a + 60
    longer = np.asarray(SCALES) >= 512
    assert (det.floor[longer, 0] >= before[longer] - 0.01).all(), (before, det.floor[:, 0])


@pytest.mark.parametrize("seed", range(140, 146))
def test_a_fall_not_yet_paged_does_not_become_the_normal_rate_until_its_lead_in_ends(
    seed: int,
) -> None:
    """A 0.3/s metric falls to 10 % and stays there, with a threshold that never pages
    (a quiet metric's fall can take many minutes to page). 35 minutes in, the last
    hour's median alone is the fall's own rate (0.03-0.05); the normal rate is still
    near the rate before the fall, because the fall went deeper than the metric's
    natural floor and the hour before its 16-minute lead-in counts too. Once that hour
    is mostly the fall as well (70 minutes in) the new level is the normal rate: it is
    held, not frozen."""
    warm, low, held = 12 * 3600, 70 * 60, 35 * 60
    curve = np.full(warm + low, 0.3)
    curve[warm:] = 0.03
    counts = bursty(curve, seed)[None]
    det = Detector(1, thresholds=-1e9, warmup_minutes=warm // 60)
    det.update(counts[:, :warm], T0)
    before = det.recent[0]
    assert 0.25 < before < 0.35
    det.update(counts[:, warm : warm + held], T0 + warm)
    assert det.recent[0] > 0.8 * before, (before, det.recent[0])
    assert not det.firing[0]
    det.update(counts[:, warm + held :], T0 + warm + held)
    assert det.recent[0] < 0.06, det.recent[0]


def diving(rate: float, minutes: int, seed: int, every_s: int = 600) -> np.ndarray:
    """Counts at ``rate`` (bursty as :func:`poisson`) that dive to 30 % for 15 s every
    ``every_s`` seconds, as some real series do on their own."""
    curve = np.full(minutes * 60, rate)
    for a in range(300, len(curve) - 15, every_s):
        curve[a : a + 15] = 0.3 * rate
    return bursty(curve, seed)


def test_a_metric_that_dives_on_its_own_learns_a_heavier_tail() -> None:
    """Dives every 10 minutes make falls 2.5 sd deep several times as common as the
    noise model says: the short scales' residuals get stretched (>= 1.15). Plain bursty
    traffic matches the model: nothing is stretched by more than 5 %."""
    minutes = 360
    dives = Detector(1, warmup_minutes=minutes)
    dives.update(diving(50, minutes, seed=40)[None], T0)
    plain = Detector(1, warmup_minutes=minutes)
    plain.update(poisson(50, minutes * 60, seed=41)[None], T0)
    assert np.all(dives.tail_scale[:5, 0] >= 1.15)
    assert np.all(plain.tail_scale[:, 0] <= 1.05)


def test_the_tail_softens_partial_falls_but_never_silence() -> None:
    """On the diving metric, a 12-second fall to 12 % (deeper than its dives) would page
    by the noise model alone; with the learnt tail it scores softer by the stretch and
    does not page. An outage scores and pages exactly as by the model alone, on the
    same second."""
    minutes = 360
    det = Detector(1, warmup_minutes=minutes)
    det.update(diving(50, minutes, seed=42)[None], T0)
    model_only = copy.deepcopy(det)  # the same, its tail put back to the model's
    model_only.tail[:] = TAIL_P
    model_only.tail_scale[:] = 1.0
    rng = np.random.default_rng(43)
    after = rng.poisson(np.concatenate([np.full(300, 50.0), np.full(12, 6.0)])).astype(float)
    start = T0 + minutes * 60

    def lowest_score(d: Detector, counts: np.ndarray) -> tuple[float, list]:
        low, out = 0.0, []
        for j, c in enumerate(counts):
            out += d.update(np.array([[c]]), start + j)
            low = min(low, float(d.score[0]))
        return low, out

    fall = copy.deepcopy(det), copy.deepcopy(model_only)
    softened, not_paged = lowest_score(fall[0], after)
    modelled, paged_by_model = lowest_score(fall[1], after)
    assert modelled < modelled / 1.15 <= softened < 0
    assert [t.state for t in paged_by_model] == ["firing"] and not_paged == []

    outage = np.concatenate([after[:300], np.zeros(30)])
    _, paged = lowest_score(det, outage)
    _, paged_model = lowest_score(model_only, outage)
    assert paged and paged[0].state == "firing"
    assert (paged[0].at, paged[0].score) == (paged_model[0].at, paged_model[0].score)
    assert paged[0].at <= start + 301


def test_surge_that_ends_does_not_page() -> None:
    """A 10-minute surge to 3x that ends abruptly: falling back to normal is no drop."""
    h = history(50, seed=7)
    series = np.concatenate([h, poisson(150, 600, seed=8), poisson(50, 1800, seed=9)])
    assert run(series) == []


def surge_in_the_evening(seed: int, after: np.ndarray | None = None) -> np.ndarray:
    """An hour at 50/s, a 20-minute decline to 30/s and 5 minutes there, a 10-minute
    surge to three times that (90/s), then ``after`` (the rates per second; 30 minutes
    at 30/s when not given)."""
    rest = np.full(1800, 30.0) if after is None else after
    day, decline, evening = np.full(3600, 50.0), np.linspace(50, 30, 1200), np.full(300, 30.0)
    curve = np.concatenate([day, decline, evening, np.full(600, 90.0), rest])
    return bursty(curve, seed)


SURGE_ENDS_S = 3600 + 1200 + 300 + 600


@pytest.mark.parametrize("seed", range(8))
def test_a_surge_that_ends_is_judged_against_the_rate_before_it(seed: int) -> None:
    """A surge at the end of a decline falls back to where the metric ran before it,
    40 % below its normal rate: that is no drop (the windows right after it, whose rate
    before is the surge's, were judged against the normal rate and paged on 7 of
    these 8 seeds)."""
    assert run(surge_in_the_evening(seed)) == []


@pytest.mark.parametrize("after", [0.0, 6.0])
def test_after_a_surge_an_outage_or_a_deep_drop_still_pages(after: float) -> None:
    """Judged against the rate before the surge, an outage after it still pages within
    two seconds, and a fall to a fifth of that rate within a minute."""
    rates = np.concatenate([np.full(600, after), np.full(1200, 30.0)])
    out = run(surge_in_the_evening(30, rates))
    assert [t.state for t in out] == ["firing", "resolved"]
    assert out[0].at - (T0 + SURGE_ENDS_S) <= (2 if after == 0 else 60)


def test_a_snapshot_taken_during_a_surge_remembers_the_rate_before_it() -> None:
    """Restored from a snapshot taken in the middle of the surge, a detector judges its
    end as the original does: against the rate before it, so neither pages."""
    counts = surge_in_the_evening(31)
    cut = SURGE_ENDS_S - 300
    a = Detector(1, warmup_minutes=WARMUP)
    a.update(counts[None, :cut], T0)
    b = Detector(1, warmup_minutes=WARMUP)
    b.restore(0, a.snapshot(0))
    b.prime(counts[None, cut - HISTORY_S : cut], T0 + cut - HISTORY_S)
    fresh = Detector(1, warmup_minutes=WARMUP)
    fresh.restore(0, {k: v for k, v in a.snapshot(0).items() if "surge" not in k})
    fresh.prime(counts[None, cut - HISTORY_S : cut], T0 + cut - HISTORY_S)
    assert a.update(counts[None, cut:], T0 + cut) == []
    assert b.update(counts[None, cut:], T0 + cut) == []
    assert fresh.update(counts[None, cut:], T0 + cut) != []  # what the snapshot carries


def test_gap_in_the_data_does_not_page() -> None:
    """Five minutes with no data at all (NaN) are not zero events."""
    h = history(50, seed=10)
    series = np.concatenate([h, np.full(300, np.nan), poisson(50, 900, seed=11)])
    assert run(series) == []


def very_bursty(rate: float, seconds: int, seed: int) -> np.ndarray:
    """Counts whose 10-second blocks swing with a coefficient of variation of 0.5."""
    return bursty(np.full(seconds, rate), seed, cv=0.5)


def test_a_gap_leaves_the_learnt_noise_alone() -> None:
    """Ten minutes without data teach the scales up to 64 s nothing: their burstiness is
    what it was before the gap (a gap once overwrote it with the long scales', which
    still see data from before the gap, making the next burst look like a cliff)."""
    det = Detector(1, warmup_minutes=WARMUP)
    det.update(very_bursty(40, 120 * 60, seed=70)[None], T0)
    short = np.asarray(SCALES) <= 64
    before = det.excess[short, 0].copy()
    assert before[0] > 0.1  # the bursts were learnt
    det.update(np.full((1, 600), np.nan), T0 + 120 * 60)
    assert det.excess[short, 0] == pytest.approx(before, rel=0.02)


@pytest.mark.parametrize("seed", range(3))
def test_a_gap_never_pages_on_the_seconds_before_it(seed: int) -> None:
    """25 s at 30 % (a lull of very bursty traffic), then ten minutes without data: while
    the gap lasts, no window with data in fewer than half its seconds is scored, so
    the lull is never judged again against a long scale's smaller noise."""
    h = very_bursty(40, 180 * 60, seed=80 + seed)
    rng = np.random.default_rng(90 + seed)
    lull = rng.poisson(12.0, 25).astype(float)
    after = np.concatenate([lull, np.full(600, np.nan), very_bursty(40, 300, seed=95 + seed)])
    det = Detector(1, warmup_minutes=180)
    det.update(h[None], T0)
    out = det.update(after[None], T0 + len(h))
    assert [t for t in out if t.at >= T0 + len(h) + 25] == []


def test_short_blip_at_low_volume_does_not_page() -> None:
    """Three silent seconds at 2/s happen by chance every few hours: no page."""
    h = history(2, seed=12)
    series = np.concatenate([h, np.zeros(3), poisson(2, 900, seed=13)])
    assert run(series) == []


def test_slow_decline_does_not_page() -> None:
    """The rate easing to half over an hour (an evening) is not a cliff."""
    h = history(50, seed=14)
    rng = np.random.default_rng(15)
    ramp = rng.poisson(np.linspace(50, 25, 3600)).astype(float)
    assert run(np.concatenate([h, ramp])) == []


def drifting(rate: float, minutes: int, seed: int) -> np.ndarray:
    """Counts around ``rate`` that drift by up to 30 % over tens of minutes and dip to
    40 % for 5 minutes every 40 minutes, bursty as :func:`poisson`."""
    t = np.arange(minutes * 60)
    curve = rate * (1 + 0.3 * np.sin(2 * np.pi * t / 2400 + 1) * np.sin(2 * np.pi * t / 7000))
    for a in range(1800, len(curve) - 900, 2400):
        curve[a : a + 120] *= np.linspace(1, 0.4, 120)
        curve[a + 120 : a + 420] *= 0.4
        curve[a + 420 : a + 540] *= np.linspace(0.4, 1, 120)
    return bursty(curve, seed)


@pytest.mark.parametrize("seed", [50, 51])
def test_the_end_of_a_fade_already_below_the_natural_floor_does_not_page(seed: int) -> None:
    """A metric that dips to 40 % on its own fades over 12 minutes to 15 % of its rate
    (judged all along against the rate just before: a decline under way), then to
    nothing within a minute. That last minute falls steeply against the rate just
    before it, but what is left of a fall already deeper than the metric's natural
    floor is a small part of its normal rate: no page (scores stay above -2.5; measured
    against the rate before alone, that minute paged). An outage from the normal
    level pages at once."""
    minutes = 240
    det = Detector(1, warmup_minutes=minutes)
    det.update(drifting(200, minutes, seed)[None], T0)
    start = T0 + minutes * 60
    outage = copy.deepcopy(det)
    fade = np.concatenate(
        [np.linspace(200, 30, 720), np.linspace(30, 0, 60), np.zeros(120), np.linspace(0, 200, 300)]
    )
    counts, low = bursty(fade, seed + 1), 0.0
    for j, c in enumerate(counts):
        assert det.update(np.array([[c]]), start + j) == []
        low = min(low, float(det.score[0]))
    assert low > -2.5

    paged = outage.update(np.zeros((1, 5)), start)
    assert [t.state for t in paged] == ["firing"] and paged[0].at <= start + 1


def sliding(rate: float, low: float, minutes: int, seed: int) -> np.ndarray:
    """Per-second counts at ``rate`` (bursty, cv 0.3) that slide to ``low`` times it over
    6 minutes every 50 minutes, stay there 3 minutes and climb back over 4."""
    curve = np.full(minutes * 60, rate)
    bottom = low * rate
    dive = np.concatenate(
        [np.linspace(rate, bottom, 360), np.full(180, bottom), np.linspace(bottom, rate, 240)]
    )
    for at in range(40, minutes - 20, 50):
        curve[at * 60 : at * 60 + len(dive)] = dive
    return bursty(curve, seed, cv=0.3)


@pytest.mark.parametrize("seed", range(8))
def test_a_dive_no_deeper_than_the_metrics_own_does_not_page_for_coming_down_faster(
    seed: int,
) -> None:
    """A metric (20/s, bursty) slides on its own to 10 % of its rate every 50 minutes.
    Its windows of a few seconds, judged against the rate just before them while it
    slid, never saw it that low; its 4- to 8-minute windows did. Then one dive comes
    down faster: to 60 % over 5 minutes, then to 10 % within 10 seconds. Those seconds
    are weighed against how deep the metric goes at the longer scales too: no page
    (weighed against their own scale's falls alone, 7 of these 8 seeds paged). An
    outage at the same point pages at once."""
    minutes, rate = 300, 20.0
    det = Detector(1, warmup_minutes=minutes)
    det.update(sliding(rate, 0.1, minutes, seed)[None], T0)
    start = T0 + minutes * 60
    outage = copy.deepcopy(det)
    faster = np.concatenate(
        [
            np.linspace(rate, 0.6 * rate, 300),
            np.linspace(0.6 * rate, 0.1 * rate, 10),
            np.full(170, 0.1 * rate),
            np.linspace(0.1 * rate, rate, 240),
        ]
    )
    for j, c in enumerate(bursty(faster, seed + 1000, cv=0.3)):
        assert det.update(np.array([[c]]), start + j) == []

    paged = outage.update(np.zeros((1, 10)), start)
    assert [t.state for t in paged] == ["firing"] and paged[0].at <= start + 5


def swinging(rate: float, seconds: int, seed: int, swing: float = 0.4) -> np.ndarray:
    """The per-second rate of a metric whose level swings on its own, as a tweet
    series' does: every 5 minutes a new level (gamma, coefficient of variation
    ``swing``, mean ``rate``), the rate in between interpolated."""
    rng = np.random.default_rng(seed + 500)
    k = 1 / swing**2
    knots = rng.gamma(k, 1 / k, seconds // 300 + 2)
    return np.interp(np.arange(seconds), np.arange(len(knots)) * 300, rate * knots)


@pytest.mark.parametrize("seed", range(8))
def test_a_fall_deeper_than_the_metrics_own_is_judged_by_how_many_windows_a_month_holds(
    seed: int,
) -> None:
    """A metric at 0.5/s (bursty, cv 0.2) whose level swings by 40 % every 5 minutes
    falls to 10 % for 20 minutes, far deeper than it has fallen on its own. Its noise at
    the scales that see such a fall is wide, so the fall is fewer sd deep there than a
    one-second window needs for one false page a month; as for a silence, a month holds
    far fewer windows that long, and it pages within 5 minutes. (Held to the one-second
    window's 5.5 sd, 2 of these 8 seeds never paged.)"""
    warm, fall = 12 * 3600, 1200
    curve = swinging(0.5, warm + fall + 600, seed)
    curve[warm : warm + fall] *= 0.1
    counts = bursty(curve, seed, cv=0.2)[None]
    det = Detector(1, warmup_minutes=warm // 60)
    assert det.update(counts[:, :warm], T0) == []
    out = det.update(counts[:, warm : warm + fall], T0 + warm)
    assert out and out[0].state == "firing"
    assert out[0].at <= T0 + warm + 300


def test_a_fall_is_weighed_against_the_lowest_floor_at_its_scale_or_a_longer_one() -> None:
    """Up to 512 s, each scale's floor is the lowest of its own and the longer ones'; the
    17- and 34-minute floors keep theirs and lower no other; an unlearnt scale stays
    unlearnt and does not break the chain."""
    nan = np.nan
    floor = np.array([nan, 0.6, 0.5, 0.7, 0.4, 0.8, 0.3, nan, 0.5, 0.6, 0.1, 0.2])
    want = np.array([nan, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, nan, 0.5, 0.6, 0.1, 0.2])
    assert len(floor) == len(SCALES)
    np.testing.assert_array_equal(_reach(floor[:, None])[:, 0], want)


def test_nothing_pages_while_warming_up() -> None:
    """An outage before the metric has WARMUP minutes of data is not judged."""
    series = np.concatenate([poisson(50, 20 * 60, seed=16), np.zeros(300)])
    assert run(series) == []


def test_steeper_threshold_needs_a_deeper_fall() -> None:
    """Threshold -4 ('steeper') pages later than -3 on the same halving."""
    h = history(50, seed=17)
    series = np.concatenate([h, poisson(25, 900, seed=18), poisson(50, 600, seed=19)])
    at3 = run(series, -3.0)[0].at
    out4 = run(series, -4.0)
    assert not out4 or out4[0].at > at3


def test_result_does_not_depend_on_chunking() -> None:
    """Feeding a second at a time (the worker) gives the same alerts as whole blocks
    (backtest)."""
    h = history(20, seed=20)
    series = np.concatenate([h, np.zeros(120), poisson(20, 600, seed=21)])
    block = [(t.state, t.at, round(t.score, 6)) for t in run(series)]
    single = [(t.state, t.at, round(t.score, 6)) for t in run(series, step=1)]
    odd = [(t.state, t.at, round(t.score, 6)) for t in run(series, step=37)]
    assert block == single == odd and block


def test_snapshot_restore_and_prime_continue_exactly() -> None:
    """A detector rebuilt from snapshots plus the last seconds decides as the original."""
    h = history(30, minutes=50, seed=22)
    cut = len(h)
    tail = np.concatenate([np.zeros(200), poisson(30, 600, seed=23)])
    a = Detector(1, warmup_minutes=WARMUP)
    a.update(h[None, :], T0)
    b = Detector(1, warmup_minutes=WARMUP)
    b.restore(0, a.snapshot(0))
    b.prime(h[None, cut - HISTORY_S :], T0 + cut - HISTORY_S)
    ta = a.update(tail[None, :], T0 + cut)
    tb = b.update(tail[None, :], T0 + cut)
    assert [(t.state, t.at) for t in ta] == [(t.state, t.at) for t in tb]
    assert [t.state for t in ta] == ["firing", "resolved"]


def test_a_rebuilt_detector_keeps_the_floor_learnt_in_earlier_half_days() -> None:
    """The natural floor remembers the metric's falls of earlier half-days: a detector
    rebuilt from a snapshot (restore) or from packed rows (unpack) learns the same floor
    in the minutes after as the original does."""
    minutes = 15 * 60  # T0 is 107 minutes before a half-day ends: two end within this
    h = history(30, minutes=minutes, seed=41)
    h[60 * 60 : 66 * 60] *= 0.25  # a natural dip (never paged: not warm) in the first
    cut = len(h)
    after = poisson(30, 180, seed=42)
    a, b, c = (Detector(1, warmup_minutes=24 * 60) for _ in range(3))
    a.update(h[None, :], T0)
    b.restore(0, a.snapshot(0))
    c.unpack([0], a.pack([0]))
    for d in (b, c):
        d.prime(h[None, cut - HISTORY_S :], T0 + cut - HISTORY_S)
    for d in (a, b, c):
        d.update(after[None, :], T0 + cut)
    at_512 = SCALES.index(512)
    assert a.floor[at_512, 0] < 0.5  # the dip, two half-days back, sets it
    np.testing.assert_array_equal(b.floor, a.floor)
    np.testing.assert_array_equal(c.floor, a.floor)
    np.testing.assert_array_equal(b.natural_low, a.natural_low)
    np.testing.assert_array_equal(c.natural_low, a.natural_low)


def test_metrics_taken_on_and_handed_over_go_on_exactly_as_in_one_detector() -> None:
    """A worker takes metrics on by appending a detector lined up with its own
    (:meth:`Detector.extend`, in place, into spare rows or, when they run out, a larger
    buffer) and hands them over with :meth:`Detector.take`: either way each metric goes
    on exactly as it would have in one detector fed everything."""
    rates = np.linspace(2.0, 60.0, 24)
    h = np.stack([history(r, minutes=50, seed=90 + i) for i, r in enumerate(rates)])
    tail = np.stack([poisson(r, 900, seed=130 + i) for i, r in enumerate(rates)])
    tail[[3, 20], 300:420] = 0.0  # two outages, one in each part
    whole = Detector(24, warmup_minutes=WARMUP)
    whole.update(h, T0)
    running = Detector(4, warmup_minutes=WARMUP)
    running.update(h[:4], T0)
    spare = len(running._room["_csum"])
    # the first fits the spare rows, the second does not; the last are built in the
    # running detector's spare rows
    for lo, hi, host in [(4, 6, None), (6, 20, None), (20, 24, running)]:
        newcomers = Detector(hi - lo, warmup_minutes=WARMUP, host=host)
        newcomers.align(0)
        newcomers.update(h[lo:hi], T0)
        running.extend(newcomers)
    assert running.n == 24 and spare < 24 <= len(running._room["_csum"])
    expected = whole.update(tail, T0 + h.shape[1])
    got = running.update(tail, T0 + h.shape[1])
    assert [(t.index, t.state, t.at) for t in got] == [
        (t.index, t.state, t.at) for t in expected
    ]
    assert {t.index for t in got if t.state == "firing"} == {3, 20}
    np.testing.assert_array_equal(running.score, whole.score)
    np.testing.assert_array_equal(running._csum, whole._csum)
    kept = running.take([20, 3, 7])
    more = np.stack([poisson(r, 300, seed=170 + i) for i, r in enumerate(rates)])
    end = T0 + h.shape[1] + tail.shape[1]
    whole.update(more, end)
    kept.update(more[[20, 3, 7]], end)
    np.testing.assert_array_equal(kept.score, whole.score[[20, 3, 7]])
    np.testing.assert_array_equal(kept.baseline, whole.baseline[[20, 3, 7]])
    with pytest.raises(ValueError, match="cannot join"):
        kept.extend(Detector(1, warmup_minutes=WARMUP))


def test_a_detector_takes_on_as_many_metrics_again_without_moving_its_own() -> None:
    """The large arrays keep room for as many metrics again: a worker taking over all
    the metrics of a dead one as large as itself builds them in that room, and its own
    rows stay where they are (no buffer is replaced, so none is copied)."""
    running = Detector(20, warmup_minutes=WARMUP)
    running.update(np.full((20, 120), 5.0), T0)
    buffers = dict(running._room)
    newcomers = Detector(20, warmup_minutes=WARMUP, host=running)
    newcomers.align(0)
    newcomers.update(np.full((20, 120), 5.0), T0)
    running.extend(newcomers)
    assert running.n == 40
    assert all(running._room[name] is buffer for name, buffer in buffers.items())


def test_metrics_kept_in_place_go_on_exactly_as_before() -> None:
    """A worker handing a few metrics over keeps the rest in place
    (:meth:`Detector.keep`): the kept metrics past the new end move into the dropped
    ones' rows, ``order`` says which metric is where, and each goes on exactly as in a
    detector that kept everything, taking newcomers on afterwards as usual."""
    rates = np.linspace(2.0, 60.0, 10)
    h = np.stack([history(r, minutes=50, seed=200 + i) for i, r in enumerate(rates)])
    whole = Detector(10, warmup_minutes=WARMUP)
    whole.update(h, T0)
    running = Detector(10, warmup_minutes=WARMUP)
    running.update(h, T0)
    buffer = running._room["_minutes"]
    order = running.keep([9, 1, 6, 2])
    assert sorted(order.tolist()) == [1, 2, 6, 9] and running.n == 4
    assert order[1] == 1 and order[2] == 2  # kept rows before the new end stay put
    assert running._minutes.base is buffer  # moved within the buffer, not copied out
    newcomer = Detector(1, warmup_minutes=WARMUP, host=running)
    newcomer.align(0)
    newcomer.update(h[[0]], T0)
    running.extend(newcomer)
    order = np.append(order, 0)
    tail = np.stack([poisson(r, 600, seed=240 + i) for i, r in enumerate(rates)])
    tail[[6, 0], 200:320] = 0.0  # an outage of a moved metric and of the newcomer
    at = T0 + h.shape[1]
    expected = whole.update(tail, at)
    got = running.update(tail[order], at)
    assert [(int(order[t.index]), t.state, t.at) for t in got] == [
        (t.index, t.state, t.at) for t in expected if t.index in set(order.tolist())
    ]
    assert {int(order[t.index]) for t in got if t.state == "firing"} == {0, 6}
    np.testing.assert_array_equal(running.score, whole.score[order])
    np.testing.assert_array_equal(running._csum, whole._csum[order])
    np.testing.assert_array_equal(running.pack(range(5)), whole.pack(order))
    with pytest.raises(ValueError, match="within"):
        running.keep([5])


@pytest.mark.parametrize("minutes", [8, 40])
def test_a_snapshot_copied_in_two_steps_is_the_one_of_its_minute(minutes: int) -> None:
    """:meth:`Detector.pack_later` copies at a whole minute only what the next
    ``LEND_S`` seconds would overwrite; the rest, copied that many seconds later, makes
    exactly what :meth:`pack` and :meth:`recent_counts` gave at the minute (young and
    full rings of running sums; seconds of no data included)."""
    rates = np.array([0.5, 4.0, 30.0])
    h = np.stack([history(r, minutes=minutes, seed=300 + i) for i, r in enumerate(rates)])
    h[1, -400:-380] = np.nan
    det = Detector(3, warmup_minutes=WARMUP)
    det.update(h, T0)
    rows = [2, 0, 1]
    packed, recent = det.pack(rows), det.recent_counts(rows)
    finish = det.pack_later(rows)
    later = np.stack([poisson(r, LEND_S, seed=340 + i) for i, r in enumerate(rates)])
    det.update(later, T0 + h.shape[1])
    assert not np.array_equal(det.recent_counts(rows), recent, equal_nan=True)
    got_packed, got_recent = finish()
    np.testing.assert_array_equal(got_packed, packed)
    np.testing.assert_array_equal(got_recent, recent)


def test_seconds_fed_unjudged_are_kept_but_not_decided_on() -> None:
    """Seconds another worker already judged are fed with ``judge=False``: an outage
    among them gives no transition (it was that worker's to page), and quiet ones fill
    the per-minute rates and the windows as usual, so an outage right after them pages
    and resolves at the same seconds as in a detector that judged everything."""
    h = history(30, minutes=50, seed=60)
    later = poisson(30, 400, seed=61)
    later[200:260] = 0.0  # after the hand-over
    at = T0 + len(h)
    whole, taken, other = (Detector(1, warmup_minutes=WARMUP) for _ in range(3))
    for det in (whole, taken, other):
        det.update(h[None], at - len(h))
    expected = whole.update(later[None], at)
    assert [t.state for t in expected] == ["firing", "resolved"]
    assert taken.update(later[None, :150], at, judge=False) == []
    got = taken.update(later[None, 150:], at + 150)
    assert [(t.state, t.at) for t in got] == [(t.state, t.at) for t in expected]
    np.testing.assert_array_equal(taken.minute_rates(0, 60), whole.minute_rates(0, 60))
    assert other.update(later[None, 150:], at + 150, judge=False) == []


@pytest.mark.parametrize("since", range(len(_ADDED_SINCE)))
def test_a_snapshot_saved_by_an_earlier_version_is_upgraded(since: int) -> None:
    """A snapshot in an earlier layout (before the tail's parts, or before the natural
    low's) is read, not thrown away, so an upgrade does not send every metric back to
    warming up: all it held comes back, the tail starts as a new metric's, and the
    natural low as the natural floor at its scale (what that version resolved by). A
    blob of no known layout is ignored."""
    det = Detector(1, warmup_minutes=WARMUP)
    det.update(very_bursty(40, 90 * 60, seed=75)[None], T0)
    parts = _split(det.pack([0])[0], _LEARNT)
    missing = frozenset().union(*_ADDED_SINCE[since:])
    earlier = np.concatenate([parts[n] for n in _LEARNT if n not in missing])
    blob = snapshots.encode(T0 + 90 * 60, earlier[None], det.recent_counts([0]))[0]
    snap = snapshots.decode("orders.created", blob)
    assert snap is not None and snap.at == T0 + 90 * 60
    back = Detector(1, warmup_minutes=WARMUP)
    snapshots.restore(back, [0], [snap])
    new, low = Detector(1), dict(_LOW_OF_FLOOR)
    assert np.isfinite(det.floor[RESOLVE_FLOOR_SCALE, 0])  # learnt: not as a new metric's
    for name in _LEARNT:
        if name in missing and name in low:
            expected = getattr(det, low[name])[..., RESOLVE_FLOOR_SCALE, :]
        else:
            expected = getattr(new if name in missing else det, name)
        np.testing.assert_array_equal(getattr(back, name), expected, err_msg=name)
    header = blob[: len(snapshots.MAGIC) + 8]  # magic and the second it is valid at
    unknown = earlier[:-5].tobytes() + np.zeros(RECENT_S, np.float32).tobytes()
    assert snapshots.decode("orders.created", header + zstandard.compress(unknown)) is None


def test_a_snapshot_compressed_with_zlib_by_an_earlier_version_is_still_read() -> None:
    """Snapshots are now compressed with Zstandard; one an earlier version wrote with
    zlib (its own magic) gives back exactly what the metric had learnt, as the new
    format does."""
    det = Detector(1, warmup_minutes=WARMUP)
    det.update(very_bursty(40, 90 * 60, seed=76)[None], T0)
    at = T0 + 90 * 60
    packed, recent = det.pack([0]), det.recent_counts([0]).astype(np.float32)
    earlier = snapshots._HEADER.pack(snapshots.ZLIB_MAGIC, at) + zlib.compress(
        packed[0].tobytes() + recent[0].tobytes(), 1
    )
    now = snapshots.encode(at, packed, recent)[0]
    assert now[:4] == snapshots.MAGIC != snapshots.ZLIB_MAGIC
    for blob in (earlier, now):
        snap = snapshots.decode("orders.created", blob)
        assert snap is not None and snap.at == at
        assert snap.packed is not None and snap.recent is not None
        np.testing.assert_array_equal(snap.packed, packed[0])
        np.testing.assert_array_equal(snap.recent, recent[0])


def test_a_snapshot_claiming_to_be_larger_than_any_is_ignored_unread() -> None:
    """A Zstandard frame whose header claims more bytes than any snapshot holds (a
    corrupt or foreign value under the key) is ignored before it is decompressed:
    decompressing it would first ask for that much memory (a MemoryError here)."""
    header = snapshots._HEADER.pack(snapshots.MAGIC, T0)
    # a frame of one raw byte whose header says 1 TiB: magic, descriptor (8-byte content
    # size, single segment), the size, then a last raw block of 1 byte
    huge = struct.pack("<IBQ", 0xFD2FB528, 0xE0, 2**40) + bytes([9, 0, 0]) + b"x"
    assert zstandard.frame_content_size(huge) == 2**40
    assert snapshots.decode("orders.created", header + huge) is None
    assert snapshots.decode("orders.created", header + b"not a frame") is None


def test_the_recent_rate_is_the_median_of_the_last_hours_minutes_across_the_rings_end(
) -> None:
    """The recent normal rate is the median of the last hour's per-minute rates, also
    when that hour spans the end of the ring of minutes and its start (read as two
    slices)."""
    first = (1_700_000_000 // 60 // RING_MINUTES + 1) * RING_MINUTES - 1000  # epoch minute
    minutes = 1000 + RECENT_MINUTES // 2  # the last hour: 30 minutes each side of the end
    rates = np.arange(1.0, minutes + 1)  # one rate per minute, each its own
    det = Detector(2, warmup_minutes=10 * minutes)  # learning only
    det.update(np.repeat(np.stack([rates, 2 * rates]), 60, axis=1), first * 60)
    hour = rates[-RECENT_MINUTES:]
    assert (first + minutes - RECENT_MINUTES) % RING_MINUTES > (first + minutes) % RING_MINUTES
    np.testing.assert_array_equal(det.recent, [np.median(hour), 2 * np.median(hour)])


LOW = st.sampled_from([0.0, 0.05, 0.2, 0.7, 1.0, math.inf, math.nan])  # ties, inf, NaN


@given(st.lists(st.lists(LOW, min_size=3, max_size=3), min_size=1, max_size=6), LOW)
def test_the_natural_floor_selects_the_three_lowest_as_a_sort_would(
    halves: list[list[float]], new: float
) -> None:
    """The natural floor keeps each half-day's three lowest minutes, sorted, and is the
    third lowest of them all: chosen with min and max, it is what sorting everything
    gives, NaN counted last as a sort puts it."""
    low = np.sort(np.asarray(halves), axis=1)  # each half-day's three lowest, sorted
    now = _lowest_with(low[0], np.float64(new))
    np.testing.assert_array_equal(now, np.sort(np.append(low[0], new))[:3])
    every = np.sort(np.concatenate([now, low[1:].ravel()]))
    third = functools.reduce(_lowest_of_both, low[1:], now)[-1]
    np.testing.assert_array_equal(third, every[2])
    past = functools.reduce(_lowest_of_both, low[1:], np.full(3, np.inf))
    floor = _rank_floor(past, now)  # the third lowest, within 0..1 (NaN: none yet)
    np.testing.assert_array_equal(floor, every[2] if np.isfinite(every[2]) else np.nan)


@given(st.lists(st.lists(st.sampled_from([0.0, 0.05, 0.2, 0.7, 1.0, math.inf]),
                         min_size=2, max_size=2), min_size=1, max_size=16))
def test_the_minutes_a_page_may_take_back_give_their_three_lowest_as_a_sort_would(
    minutes: list[list[float]],
) -> None:
    """The last minutes' lowest ratios (each minute's, at two scales), not yet counted
    for good, take part in the natural floor by their three lowest: chosen by min and
    max, they are what sorting them gives (infinity: a minute that learnt nothing)."""
    values = np.asarray(minutes, np.float32)
    expected = np.sort(np.concatenate([values, np.full((2, 2), np.inf, np.float32)]), axis=0)
    np.testing.assert_array_equal(_three_lowest(values), expected[:3])
    # as many metrics as a worker's: chosen by inserting the minutes in turn
    many = np.repeat(values[:, :, None], SORT_MAX_COLUMNS, axis=2)
    np.testing.assert_array_equal(
        _three_lowest(many), np.repeat(expected[:3, :, None], SORT_MAX_COLUMNS, axis=2)
    )


def test_minute_rates_are_the_last_minutes_oldest_first() -> None:
    """minute_rates gives each of the last N minutes' events/s (NaN without data), the
    minute being filled last, over its seconds so far."""
    det = Detector(2, warmup_minutes=1)
    start = 1_800_000_000  # a whole minute
    counts = np.full((2, 5 * 60 + 20), 10.0)
    counts[0, 120:180] = np.nan  # minute 2 of metric 0: no data
    counts[0, 240:300] = 3.0  # minute 4: 3/s
    counts[0, 300:] = 0.0  # the minute being filled: 20 s of nothing so far
    det.update(counts, start)
    rates = det.minute_rates(0, 8)
    assert rates.shape == (8,)
    assert np.isnan(rates[:2]).all() and np.isnan(rates[4])
    assert rates[2:4].tolist() == [10.0, 10.0] and rates[5:].tolist() == [10.0, 3.0, 0.0]
    assert det.minute_rates(1, 3).tolist() == [10.0, 10.0, 10.0]
    det.update(np.full((2, 40), 0.0), start + 320)  # the minute closes: 20 s of 0, 40 of 0
    assert det.minute_rates(0, 2).tolist() == [3.0, 0.0]
    with pytest.raises(IndexError):
        det.minute_rates(2)


def test_last_data_is_the_newest_second_with_data_whatever_the_chunks() -> None:
    """``last_data`` is the epoch second of each metric's newest second with data: NaN
    seconds (no data) leave it alone, zeros move it, priming counts too, and -inf means
    none yet."""
    counts = np.full((3, 120), np.nan)
    counts[0, :100] = 5.0  # data, then 20 s without
    counts[1, :] = 0.0  # zero events every second: data
    for step in (1, 7, 120):
        det = Detector(3, warmup_minutes=WARMUP)
        for j in range(0, 120, step):
            det.update(counts[:, j : j + step], T0 + j)
        assert det.last_data[0] == T0 + 99 and det.last_data[1] == T0 + 119
        assert det.last_data[2] == -math.inf
    primed = Detector(3, warmup_minutes=WARMUP)
    primed.prime(counts, T0)
    assert list(primed.last_data[:2]) == [T0 + 99, T0 + 119]
    primed.update(np.full((3, 5), np.nan), T0 + 130)  # a jump, then no data
    assert list(primed.last_data[:2]) == [T0 + 99, T0 + 119]
