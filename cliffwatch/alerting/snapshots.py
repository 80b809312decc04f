"""Detector snapshots in Redis: what each metric has learnt, so a restarted worker, or the
worker that takes over a metric's shard, goes on where the last one stopped.

One string per metric (``P{m}:detector``, see :mod:`cliffwatch.metrics.keys`):
:data:`MAGIC`, the epoch second the snapshot is valid at (int64, little-endian), then the
metric's packed state (:meth:`~cliffwatch.rules.detector.Detector.pack`, about 20 KB)
and its counts of the last :data:`~cliffwatch.rules.detector.RECENT_S` seconds (float32,
4.3 KB), compressed together with Zstandard at level 1. Packing and restoring are one
array copy for many metrics at once; compression takes a young metric's mostly empty
3-day ring of per-minute rates to a few hundred bytes, a full one to about two thirds.
With the recent seconds in the snapshot, whoever restores it reads from Redis only the
seconds since it was saved, not the ~18 minutes of history the detector's windows reach
back over.

Zstandard, not zlib: every metric is compressed again each minute, and a full ring is
mostly the random low bits of float32 rates, where zlib's level 1 spent ~380 µs a metric
(9.5 CPU-seconds a minute for a worker of 25,000 metrics) and Zstandard's ~45 µs, for a
slightly smaller blob; it also decompresses 4 times as fast, which is a takeover's
load (``benchmarks/snapshots.py``). Snapshots written by earlier versions, with zlib
(:data:`ZLIB_MAGIC`) or ``np.savez`` (a zip file), are still read.

A snapshot in the layout of an earlier version is upgraded: the parts it lacks start as
a new metric's, or are made from what it holds (the natural low from the natural floor:
:func:`~cliffwatch.rules.detector.upgrade_packed`), so an upgrade does not send every
metric back to warming up. A snapshot that cannot be read (truncated, an
unknown layout) is logged and ignored: the metric then learns again from the history
Redis still has.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import zstandard

from ..metrics.store import Store
from ..rules.detector import RECENT_S, Detector, packed_size, upgrade_packed

log = logging.getLogger("cliffwatch.worker")

MAGIC = b"CWS2"
"""The first bytes of a snapshot in this format (Zstandard)."""
ZLIB_MAGIC = b"CWS1"
"""The first bytes of a snapshot of earlier versions: the same, compressed with zlib."""
LEVEL = 1
"""Zstandard's compression level: the fastest of the positive ones (the negative ones
trade size for more speed)."""
CHUNK = 2_000
"""Metrics packed, compressed and written per round trip (bounds the memory it takes)."""

_HEADER = struct.Struct("<4sq")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One metric's stored snapshot: valid at epoch second ``at``; ``packed`` (a row of
    :meth:`Detector.pack`) and ``recent`` (its counts in the :data:`RECENT_S` seconds
    before ``at``) or, for an old ``np.savez`` one, ``arrays``."""

    at: int
    packed: np.ndarray | None = None
    recent: np.ndarray | None = None
    arrays: dict[str, np.ndarray] | None = None


def encode(at: int, packed: np.ndarray, recent: np.ndarray) -> list[bytes]:
    """One blob per row of ``packed`` (:meth:`Detector.pack`) and ``recent``
    (:meth:`Detector.recent_counts`), valid at second ``at``."""
    head = _HEADER.pack(MAGIC, int(at))
    recent = np.asarray(recent, np.float32)
    zstd = zstandard.ZstdCompressor(level=LEVEL)  # one per call: not to share across threads
    return [
        head + zstd.compress(row.tobytes() + seconds.tobytes())
        for row, seconds in zip(packed, recent, strict=True)
    ]


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


def decode(metric: str, blob: bytes | None) -> Snapshot | None:
    """A stored blob as a :class:`Snapshot`; ``None`` if there is none or it cannot be
    read (logged)."""
    if blob is None:
        return None
    try:
        if blob[:4] in (MAGIC, ZLIB_MAGIC):
            magic, at = _HEADER.unpack_from(blob)
            body = blob[_HEADER.size :]
            raw = _unzstd(body) if magic == MAGIC else zlib.decompress(body)
            size = len(raw) - 4 * RECENT_S
            row = np.frombuffer(raw, np.uint8, max(size, 0))
            # an earlier version's layout is upgraded; None: no known layout
            packed = row if size == packed_size() else upgrade_packed(row)
            if packed is None or size <= 0:
                raise ValueError(f"{len(raw)} bytes, not {packed_size() + 4 * RECENT_S}")
            return Snapshot(int(at), packed, np.frombuffer(raw, np.float32, RECENT_S, size))
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


def save(
    store: Store, detector: Detector, names: Sequence[str], rows: Sequence[int], at: int
) -> None:
    """Store what ``detector``'s metrics at ``rows`` (named ``names``) learnt, as of
    second ``at`` (a whole minute), :data:`CHUNK` metrics per round trip. Raises
    ``StoreError``."""
    write(store, copy(detector, names, rows, at))


Copied = tuple[int, Sequence[str], Callable[[], tuple[np.ndarray, np.ndarray]]]
"""One chunk of snapshots to write: ``(at, names, finish)``, ``finish`` giving the
packed rows and recent seconds (:meth:`Detector.pack_later`)."""


def copy(detector: Detector, names: Sequence[str], rows: Sequence[int], at: int) -> list[Copied]:
    """What :func:`save` stores, copied out of ``detector`` in the two steps of
    :meth:`Detector.pack_later` (:data:`CHUNK` metrics at a time): now only what its
    next seconds would overwrite, about 4 KB per metric; :func:`write` copies the rest,
    compresses and stores it, and must be done before ``detector`` is fed
    :data:`~cliffwatch.rules.detector.LEND_S` seconds more or moves its rows."""
    return [
        (at, names[lo : lo + CHUNK], detector.pack_later(rows[lo : lo + CHUNK]))
        for lo in range(0, len(rows), CHUNK)
    ]


def write(store: Store, chunks: Sequence[Copied]) -> None:
    """Finish copying, compress and store snapshots copied by :func:`copy`, a round
    trip per chunk. Raises ``StoreError``."""
    for at, names, finish in chunks:
        packed, recent = finish()
        store.set_blobs(dict(zip(names, encode(at, packed, recent), strict=True)))


def load(store: Store, names: Sequence[str]) -> list[Snapshot | None]:
    """The stored snapshots of ``names`` (``None`` where there is none or it is
    unreadable). Raises ``StoreError``."""
    out: list[Snapshot | None] = []
    for lo in range(0, len(names), CHUNK):
        part = names[lo : lo + CHUNK]
        out.extend(map(decode, part, store.get_blobs(part)))
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
