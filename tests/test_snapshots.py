"""Detector snapshots in Redis, their 3-day ring stored in blocks written once each."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cliffwatch.alerting import snapshots
from cliffwatch.metrics.store import Store
from cliffwatch.rules.detector import RING_MINUTES, Detector

T0 = 1_700_000_000 - 1_700_000_000 % 60  # a whole minute
NAMES = ["orders.created", "signups.completed"]


def fed(minutes: int, seed: int = 1) -> Detector:
    """A detector of two metrics fed ``minutes`` of Poisson counts from T0."""
    det = Detector(len(NAMES), warmup_minutes=30)
    rng = np.random.default_rng(seed)
    det.update(rng.poisson([[20.0], [3.0]], (len(NAMES), minutes * 60)).astype(float), T0)
    return det


def feed(det: Detector, minutes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    assert det.next_second is not None
    counts = rng.poisson([[20.0], [3.0]], (len(NAMES), minutes * 60)).astype(float)
    det.update(counts, det.next_second)


def completed(after: int, upto: int) -> list[int]:
    """The blocks whose last cell the ring passed from second ``after`` to ``upto``
    (whole minutes), worked out cell by cell."""
    out = []
    for minute in range(after // 60, upto // 60):  # the minutes that closed in between
        cell = minute % RING_MINUTES
        block = cell // snapshots.RING_BLOCK
        if cell == min((block + 1) * snapshots.RING_BLOCK, RING_MINUTES) - 1:
            out.append(block)
    return sorted(out)


def test_a_snapshot_that_wrote_only_the_blocks_completed_since_the_last_reads_back_whole(
    store: Store,
) -> None:
    """A worker's first snapshot of a metric writes every block of its ring; later ones
    write only the blocks the ring has moved past since (none most minutes), and what
    is read back is exactly what the detector holds then."""
    det = fed(300)
    first = det.next_second
    assert first is not None
    snapshots.save(store, det, NAMES, [0, 1], first)  # nothing written before: all
    feed(det, 1, seed=2)
    minute = det.next_second
    assert minute is not None
    [chunk] = snapshots.copy(det, NAMES, [0, 1], minute, dict.fromkeys(NAMES, first))
    assert chunk.blocks == completed(first, minute) == []
    snapshots.write(store, [chunk])
    feed(det, 500, seed=3)  # the ring passes the ends of several blocks
    last = det.next_second
    assert last is not None
    [chunk] = snapshots.copy(det, NAMES, [0, 1], last, dict.fromkeys(NAMES, minute))
    assert chunk.blocks == completed(minute, last) and len(chunk.blocks) == 3
    snapshots.write(store, [chunk])
    back = snapshots.load(store, NAMES)
    for i, snap in enumerate(back):
        assert snap is not None and snap.at == last and snap.lost == 0
        np.testing.assert_array_equal(snap.packed, det.pack([i])[0])
        np.testing.assert_array_equal(snap.recent, det.recent_counts([i])[0])
    assert np.isfinite(det.minute_rates(0, 800)).all()  # the ring held data to compare


def test_a_metric_new_to_this_worker_has_every_block_written(store: Store) -> None:
    """A chunk with one metric this worker has not saved before writes every block,
    so whatever another worker stored for it earlier is never mixed in."""
    det = fed(60)
    at = det.next_second
    assert at is not None
    [chunk] = snapshots.copy(det, NAMES, [0, 1], at, {NAMES[0]: at - 60})
    assert len(chunk.blocks) == snapshots.BLOCKS - 1


def test_a_missing_or_stale_block_leaves_only_its_minutes_empty(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A block deleted, or one written at another minute than the snapshot's time says
    (a save that failed, an older lap of the ring), is not used: its minutes come back
    empty (NaN, as a new metric's), everything else exactly as saved, and the loss is
    logged with the metric's name."""
    det = fed(300)
    at = det.next_second
    assert at is not None
    snapshots.save(store, det, NAMES, [0, 1], at)
    now = snapshots._current(at)
    gone, stale = (now + 3) % snapshots.BLOCKS, (now + 5) % snapshots.BLOCKS
    ring = store.keys.detector_ring(NAMES[0])
    store.client.hdel(ring, str(gone))
    data = store.client.hget(ring, str(stale))
    assert isinstance(data, bytes)
    lap = snapshots._STAMP.pack(snapshots._written_at(stale, at) - RING_MINUTES)
    store.client.hset(ring, str(stale), lap + data[snapshots._STAMP.size :])
    with caplog.at_level(logging.WARNING, "cliffwatch"):
        first, second = snapshots.load(store, NAMES)
    assert first is not None and first.lost == 2 and first.packed is not None
    assert second is not None and second.lost == 0
    assert "1 snapshots lacked blocks" in caplog.text and NAMES[0] in caplog.text
    whole = det.pack([0])[0].copy()
    cells = whole[: 4 * RING_MINUTES].view(np.float32)
    for block in (gone, stale):
        span = snapshots._block_cells(block)
        cells[span.start : span.stop] = np.nan
    np.testing.assert_array_equal(first.packed, whole)
    restored = Detector(1, warmup_minutes=30)
    snapshots.restore(restored, [0], [first])
    assert np.isnan(restored._minutes[0, snapshots._block_cells(gone)]).all()
