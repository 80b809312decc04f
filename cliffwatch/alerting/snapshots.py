"""Detector snapshots in Redis: what each metric has learnt, so a restarted worker, or the
worker that takes over a metric's shard, goes on where the last one stopped.

Per metric (see :mod:`cliffwatch.metrics.keys`), a string ``P{m}:detector``: :data:`MAGIC`,
the epoch second the snapshot is valid at (int64, little-endian), then, compressed together
with Zstandard at level 1, the :data:`RING_BLOCK` minutes of the 3-day ring of per-minute
rates around the minute just closed, the rest of the metric's packed state
(:meth:`~cliffwatch.rules.detector.Detector.pack`) and its counts of the last
:data:`~cliffwatch.rules.detector.RECENT_S` seconds (float32); and a hash
``P{m}:detector:ring`` of the ring's other blocks, each the epoch minute it was last
written at (int64) and its rates (float32, uncompressed; none if all are NaN). With the
recent seconds in the snapshot, whoever restores it reads from Redis only the seconds
since it was saved, not the ~18 minutes of history the detector's windows reach back
over.

Why the ring is stored in blocks: a minute changes one cell of it, but it is 4,387
minutes long, 70 % of a metric's state, and mostly the random low bits of float32
rates, which hardly compress (16.4 KB a metric compressed whole). A worker saves every
metric it judges every minute; rewriting the whole ring each time was 85 % of the bytes
written to Redis (273 MB/s at 1 M metrics). Now a block is written once, when the ring
moves past it (every :data:`RING_BLOCK` minutes), and by a worker's first save of a
metric (it cannot know what is stored): ``benchmarks/snapshots.py`` has the figures. A
block is used only if the minute it was written at is the one the snapshot's time says
it was last written at; one that is missing or stale (a save that failed, or a
snapshot older than the blocks) leaves those minutes of the ring empty, as a new
metric's, and the loss is logged.

Zstandard, not zlib: every metric is compressed again each minute, and zlib's level 1
spent ~8 times as long for a slightly larger blob; Zstandard also decompresses 4 times
as fast, which is a takeover's load. Snapshots written whole by earlier versions, with
Zstandard (:data:`WHOLE_MAGIC`), zlib (:data:`ZLIB_MAGIC`) or ``np.savez`` (a zip file),
are still read.

A snapshot in the layout of an earlier version is upgraded: the parts it lacks start as
a new metric's, or are made from what it holds (the natural low from the natural floor:
:func:`~cliffwatch.rules.detector.upgrade_packed`), so an upgrade does not send every
metric back to warming up. A snapshot that cannot be read (truncated, an
unknown layout) is logged and ignored: the metric then learns again from the history
Redis still has.
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import zstandard

from ..metrics.store import Store
from ..rules.detector import (
    RECENT_S,
    RING_MINUTES,
    RING_PART,
    Detector,
    packed_size,
    part_size,
    upgrade_packed,
)

log = logging.getLogger("cliffwatch.worker")

MAGIC = b"CWS3"
"""The first bytes of a snapshot in this format (the ring's other blocks apart)."""
WHOLE_MAGIC = b"CWS2"
"""The first bytes of a snapshot of earlier versions: the whole ring in it, Zstandard."""
ZLIB_MAGIC = b"CWS1"
"""The first bytes of a snapshot of earlier versions: the whole ring in it, zlib."""
LEVEL = 1
"""Zstandard's compression level: the fastest of the positive ones (the negative ones
trade size for more speed)."""
CHUNK = 2_000
"""Metrics packed, compressed and written per round trip (bounds the memory it takes)."""
RING_BLOCK = 240
"""Minutes of the 3-day ring per stored block: 19 blocks of up to 960 bytes."""
BLOCKS = -(-RING_MINUTES // RING_BLOCK)
_FIELDS = [str(b) for b in range(BLOCKS)]

_HEADER = struct.Struct("<4sq")
_STAMP = struct.Struct("<q")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One metric's stored snapshot: valid at epoch second ``at``; ``packed`` (a row of
    :meth:`Detector.pack`) and ``recent`` (its counts in the :data:`RECENT_S` seconds
    before ``at``) or, for an old ``np.savez`` one, ``arrays``. ``lost``: blocks of its
    ring that were missing or stale (those minutes are empty)."""

    at: int
    packed: np.ndarray | None = None
    recent: np.ndarray | None = None
    arrays: dict[str, np.ndarray] | None = None
    lost: int = 0


def _block_cells(block: int) -> range:
    """The ring positions of ``block``."""
    return range(block * RING_BLOCK, min((block + 1) * RING_BLOCK, RING_MINUTES))


def _last_minute(at: int) -> int:
    """The epoch minute that closed last at whole minute ``at``: its ring cell was
    written last."""
    return at // 60 - 1


def _current(at: int) -> int:
    """The block the minute closed last at ``at`` was written to: kept in the snapshot."""
    return _last_minute(at) % RING_MINUTES // RING_BLOCK


def _written_at(block: int, at: int) -> int:
    """The epoch minute ``block`` (not the current one) was last written at, as of
    ``at``: when the ring last passed its last cell."""
    last = _last_minute(at)
    return last - (last - _block_cells(block)[-1]) % RING_MINUTES


def _due(at: int, since: int | None) -> list[int]:
    """The blocks to write with a snapshot at ``at``: those completed since the one
    written at ``since`` (every one but the current when ``None``)."""
    now = _current(at)
    return [
        b
        for b in range(BLOCKS)
        if b != now and (since is None or _written_at(b, at) > _last_minute(since))
    ]


def _cells(at: int, blocks: Sequence[int]) -> list[int]:
    """The ring positions a snapshot at ``at`` writing ``blocks`` copies out: the current
    block's, then those of ``blocks``."""
    return [c for b in (_current(at), *blocks) for c in _block_cells(b)]


def encode(
    at: int, packed: np.ndarray, recent: np.ndarray, blocks: Sequence[int] | None = None
) -> list[tuple[bytes, dict[str, bytes]]]:
    """One ``(snapshot, {block: data})`` per row of ``packed`` (:meth:`Detector.pack`)
    and ``recent`` (:meth:`Detector.recent_counts`), valid at second ``at``, with the
    ring's ``blocks`` (default: every one but the current)."""
    blocks = _due(at, None) if blocks is None else blocks
    size = part_size(RING_PART)
    cells = np.ascontiguousarray(packed[:, :size].view(np.float32)[:, _cells(at, blocks)])
    return _encode(at, np.hstack([cells.view(np.uint8), packed[:, size:]]), recent, blocks)


def _encode(
    at: int, packed: np.ndarray, recent: np.ndarray, blocks: Sequence[int]
) -> list[tuple[bytes, dict[str, bytes]]]:
    """:func:`encode` of rows holding only the ring cells :func:`_cells` ``(at, blocks)``
    (:meth:`Detector.pack_later`)."""
    head = _HEADER.pack(MAGIC, int(at))
    recent = np.asarray(recent, np.float32)
    ends = np.cumsum([4 * len(_block_cells(b)) for b in (_current(at), *blocks)]).tolist()
    stamps = [_stamps(at)[b] for b in blocks]
    rates = packed[:, : ends[-1]].view(np.float32)
    empty = [  # per block, per row: no rate in it (as in a young metric's ring)
        np.asarray(np.isnan(rates[:, ends[k] // 4 : ends[k + 1] // 4]).all(axis=1))
        for k in range(len(blocks))
    ]
    zstd = zstandard.ZstdCompressor(level=LEVEL)  # one per call: not to share across threads
    out = []
    for i, (row, seconds) in enumerate(zip(packed, recent, strict=True)):
        data = row.tobytes()
        written = {
            _FIELDS[b]: stamp if bool(empty[k][i]) else stamp + data[ends[k] : ends[k + 1]]
            for k, (b, stamp) in enumerate(zip(blocks, stamps, strict=True))
        }
        body = data[: ends[0]] + data[ends[-1] :] + seconds.tobytes()
        out.append((head + zstd.compress(body), written))
    return out


_local = threading.local()


def _unzstd(data: bytes) -> bytes:
    """``data`` decompressed, by this thread's own decompressor (one is ~20 µs to make,
    and not to share across threads); ``ValueError`` if it claims to be larger than any
    snapshot."""
    size = zstandard.frame_content_size(data)
    if not 0 <= size <= 2 * (packed_size() + 4 * RECENT_S):
        raise ValueError(f"a frame of {size} bytes")
    unzstd = getattr(_local, "unzstd", None)
    if unzstd is None:
        unzstd = _local.unzstd = zstandard.ZstdDecompressor()
    return unzstd.decompress(data)


def decode(metric: str, blob: bytes | None, ring: Sequence[bytes | None] = ()) -> Snapshot | None:
    """A stored snapshot and its ring's blocks (by block; :func:`load` reads them) as a
    :class:`Snapshot`; ``None`` if there is none or it cannot be read (logged)."""
    if blob is None:
        return None
    try:
        if blob[:4] == MAGIC:
            _, at = _HEADER.unpack_from(blob)
            return _assemble(int(at), _unzstd(blob[_HEADER.size :]), ring)
        if blob[:4] in (WHOLE_MAGIC, ZLIB_MAGIC):
            magic, at = _HEADER.unpack_from(blob)
            body = blob[_HEADER.size :]
            raw = _unzstd(body) if magic == WHOLE_MAGIC else zlib.decompress(body)
            return _snapshot(int(at), raw)
        with np.load(io.BytesIO(blob)) as z:
            arrays = {k: z[k] for k in z.files}
        return Snapshot(int(arrays["at"]), arrays=arrays)
    except (
        ValueError,
        OSError,
        EOFError,
        KeyError,
        zlib.error,
        zstandard.ZstdError,
        struct.error,
    ) as exc:
        log.warning("ignoring unreadable snapshot of %s: %s", metric, exc)
        return None


def _assemble(at: int, raw: bytes, ring: Sequence[bytes | None]) -> Snapshot:
    """The snapshot whose decompressed body is ``raw`` (the current block of the ring
    first), the ring's other blocks taken from ``ring`` where they were written at the
    minute ``at`` says."""
    now, stamps = _current(at), _stamps(at)
    parts, lost = [], 0
    for b, stamp in enumerate(stamps):
        if b == now:
            parts.append(raw[: _NAN[b]])
            continue
        data = ring[b] if b < len(ring) else None
        if data is None or not data.startswith(stamp):
            lost += 1
            parts.append(_EMPTY[b])
        elif len(data) == _STAMP.size:  # no rate in the block
            parts.append(_EMPTY[b])
        elif len(data) == _STAMP.size + _NAN[b]:
            parts.append(data[_STAMP.size :])
        else:
            lost += 1
            parts.append(_EMPTY[b])
    return _snapshot(at, b"".join(parts) + raw[_NAN[now] :], lost)


@functools.lru_cache(maxsize=4)
def _stamps(at: int) -> list[bytes]:
    """Each block's stamp as stored with it, were it written by ``at`` (the current
    block's too, though it is never stored)."""
    return [_STAMP.pack(_written_at(b, at)) for b in range(BLOCKS)]


_NAN = [4 * len(_block_cells(b)) for b in range(BLOCKS)]  # bytes of each block's rates
_EMPTY = [np.full(n // 4, np.nan, np.float32).tobytes() for n in _NAN]


def _snapshot(at: int, raw: bytes, lost: int = 0) -> Snapshot:
    """The snapshot of a packed row (this layout or an earlier one's, upgraded) followed
    by its recent seconds."""
    size = len(raw) - 4 * RECENT_S
    row = np.frombuffer(raw, np.uint8, max(size, 0))
    packed = row if size == packed_size() else upgrade_packed(row)
    if packed is None or size <= 0:
        raise ValueError(f"{len(raw)} bytes, not {packed_size() + 4 * RECENT_S}")
    return Snapshot(at, packed, np.frombuffer(raw, np.float32, RECENT_S, size), lost=lost)


def save(
    store: Store,
    detector: Detector,
    names: Sequence[str],
    rows: Sequence[int],
    at: int,
    since: Mapping[str, int] | None = None,
) -> None:
    """Store what ``detector``'s metrics at ``rows`` (named ``names``) learnt, as of
    second ``at`` (a whole minute), :data:`CHUNK` metrics per round trip; ``since``: the
    second of each metric's last snapshot written with this one's blocks (see
    :func:`copy`). Raises ``StoreError``."""
    write(store, copy(detector, names, rows, at, since))


@dataclass(frozen=True, slots=True)
class Copied:
    """One chunk of snapshots to write: valid at ``at``, of ``names``, with the ring's
    ``blocks``; ``finish`` gives the packed rows (with only the ring's cells to store)
    and recent seconds (:meth:`Detector.pack_later`)."""

    at: int
    names: Sequence[str]
    blocks: Sequence[int]
    finish: Callable[[], tuple[np.ndarray, np.ndarray]]


def copy(
    detector: Detector,
    names: Sequence[str],
    rows: Sequence[int],
    at: int,
    since: Mapping[str, int] | None = None,
) -> list[Copied]:
    """What :func:`save` stores, copied out of ``detector`` in the two steps of
    :meth:`Detector.pack_later` (:data:`CHUNK` metrics at a time): now only what its
    next seconds would overwrite, about 4 KB per metric; :func:`write` copies the rest,
    compresses and stores it, and must be done before ``detector`` is fed
    :data:`~cliffwatch.rules.detector.LEND_S` seconds more or moves its rows.
    ``since``: for each metric, the second of its last snapshot written by this worker
    with every block of the ring it had completed; only the blocks completed since are
    written again (every one, for a chunk with a metric not in ``since``)."""
    out = []
    for lo in range(0, len(rows), CHUNK):
        part = names[lo : lo + CHUNK]
        last = [(since or {}).get(m) for m in part]
        blocks = _due(at, None if None in last else min(s for s in last if s is not None))
        finish = detector.pack_later(rows[lo : lo + CHUNK], _cells(at, blocks))
        out.append(Copied(at, part, blocks, finish))
    return out


def write(store: Store, chunks: Sequence[Copied]) -> None:
    """Finish copying, compress and store snapshots copied by :func:`copy`, a round
    trip per chunk. Raises ``StoreError``."""
    for chunk in chunks:
        packed, recent = chunk.finish()
        encoded = _encode(chunk.at, packed, recent, chunk.blocks)
        store.set_snapshots(dict(zip(chunk.names, encoded, strict=True)))


def load(store: Store, names: Sequence[str]) -> list[Snapshot | None]:
    """The stored snapshots of ``names`` (``None`` where there is none or it is
    unreadable). Raises ``StoreError``."""
    out: list[Snapshot | None] = []
    for lo in range(0, len(names), CHUNK):
        part = names[lo : lo + CHUNK]
        stored = store.get_snapshots(part, _FIELDS)
        out.extend(decode(m, blob, ring) for m, (blob, ring) in zip(part, stored, strict=True))
    short = [m for m, s in zip(names, out, strict=True) if s is not None and s.lost]
    if short:
        log.warning(
            "%d snapshots lacked blocks of their 3-day ring (missing or stale), e.g. %s: "
            "those minutes start empty",
            len(short),
            ", ".join(short[:3]),
        )
    return out


def restore(detector: Detector, rows: Sequence[int], snaps: Sequence[Snapshot]) -> None:
    """Give ``detector``'s metrics at ``rows`` back their snapshots. Raises
    ``ValueError`` for an old-format snapshot of another shape."""
    packed = [(r, s.packed) for r, s in zip(rows, snaps, strict=True) if s.packed is not None]
    for lo in range(0, len(packed), CHUNK):
        part = packed[lo : lo + CHUNK]
        detector.unpack([r for r, _ in part], np.stack([p for _, p in part]))
    for r, s in zip(rows, snaps, strict=True):
        if s.arrays is not None:
            detector.restore(r, s.arrays)
