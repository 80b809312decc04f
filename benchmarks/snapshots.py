"""Cost of the detector snapshots: writing each minute's, reading a takeover's.

Run from the repository root with the project's Python::

    .venv/bin/python benchmarks/snapshots.py          # 256 metrics, 5 rounds
    .venv/bin/python benchmarks/snapshots.py --smoke  # a few metrics: checks it runs

A worker snapshots every metric it judges once a minute (``cliffwatch.alerting.
snapshots``), and a worker taking a shard over reads them back. ``--metrics`` detectors
(rates log-normal, ~0.3-100 events/s: ``benchmarks/shards.py``'s templates) learn 40 minutes
of Poisson counts; each is encoded *young* (only those minutes in its 3-day ring of
per-minute rates) and *full* (every minute of the ring filled, as after three days).
Two formats, interleaved round after round so a noisy machine moves both alike:

* ``blocks`` (written now): each minute the snapshot without the ring's completed
  blocks; a block is written once when the ring moves past it (every 240 minutes), so
  a minute writes 1/240 of each on average (counted in "bytes a minute"). Read back:
  the snapshot and every block.
* ``whole`` (written before, still read): the whole state compressed each minute.

Shown: the median µs per metric to encode a minute's snapshot and to decode a whole one,
the bytes written a minute and stored, and what that costs a worker of 25,000 metrics.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import zstandard
from shards import names_and_rates, template_states  # the same detectors as seeded there

from cliffwatch.alerting import snapshots

WORKER_METRICS = 25_000
AT = 1_800_000_000 - 1_800_000_000 % 60
RING = [str(b) for b in range(snapshots.BLOCKS)]

Encoded = list[tuple[bytes, dict[str, bytes]]]


def whole(packed: np.ndarray, recent: np.ndarray) -> Encoded:
    """The snapshots as the previous version wrote them: all in one Zstandard blob."""
    head = snapshots._HEADER.pack(snapshots.WHOLE_MAGIC, AT)
    zstd = zstandard.ZstdCompressor(level=snapshots.LEVEL)
    recent = np.asarray(recent, np.float32)
    return [
        (head + zstd.compress(row.tobytes() + seconds.tobytes()), {})
        for row, seconds in zip(packed, recent, strict=True)
    ]


def a_minute(packed: np.ndarray, recent: np.ndarray) -> Encoded:
    """What a minute writes now: no block of the ring (most minutes), from rows holding
    only the current block's cells, as ``Detector.pack_later`` copies them out (the
    copying itself, cheaper than the whole ring's before, is not timed in either)."""
    return snapshots._encode(AT, packed, recent, [])


def cut(packed: np.ndarray) -> np.ndarray:
    """Whole packed rows with only the current block of the ring (``a_minute``'s input)."""
    size = snapshots.part_size(snapshots.RING_PART)
    ring = packed[:, :size].view(np.float32)[:, snapshots._cells(AT, [])]
    return np.hstack([np.ascontiguousarray(ring).view(np.uint8), packed[:, size:]])


def written(blobs: Encoded, every: Encoded | None) -> float:
    """Mean bytes written a minute: the snapshot, plus a block each RING_BLOCK minutes."""
    head = np.mean([len(h) for h, _ in blobs])
    if every is None:
        return float(head)
    blocks = np.mean([sum(map(len, r.values())) for _, r in every]) / (snapshots.BLOCKS - 1)
    return float(head + blocks / snapshots.RING_BLOCK * (snapshots.BLOCKS - 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few metrics: checks it runs")
    parser.add_argument("--metrics", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    k, rounds = (8, 1) if args.smoke else (args.metrics, args.rounds)
    formats: dict[str, tuple[Callable[[np.ndarray, np.ndarray], Encoded], bool]] = {
        "blocks": (a_minute, True),
        "whole": (whole, False),
    }
    print(f"{k} metrics, {rounds} rounds; µs per metric (median of the rounds)")
    print(f"{'ring':<6} {'format':<6} {'encode µs':>9} {'decode µs':>9} {'bytes a minute':>14} "
          f"{'bytes stored':>12} {'encode s/min @25k':>17} {'MB/min @25k':>11} "
          f"{'decode s @25k':>13}")  # fmt: skip
    rates = names_and_rates(0, k)[1]
    for ring, (packed, recent) in template_states(rates, AT).items():
        enc: dict[str, list[float]] = {f: [] for f in formats}
        dec: dict[str, list[float]] = {f: [] for f in formats}
        minute: dict[str, float] = {}
        stored: dict[str, float] = {}
        for _ in range(rounds):
            for name, (encode, split) in formats.items():
                rows = cut(packed) if split else packed
                began = time.perf_counter()
                blobs = encode(rows, recent)
                encoded = time.perf_counter()
                full = snapshots.encode(AT, packed, recent) if split else blobs
                decoding = time.perf_counter()
                back = [snapshots.decode("m", h, [r.get(f) for f in RING]) for h, r in full]
                enc[name].append((encoded - began) / k * 1e6)
                dec[name].append((time.perf_counter() - decoding) / k * 1e6)
                assert all(
                    s is not None and s.packed is not None and np.array_equal(s.packed, p)
                    for s, p in zip(back, packed, strict=True)
                ), name
                minute[name] = written(blobs, full if split else None)
                stored[name] = float(np.mean([len(h) + sum(map(len, r.values())) for h, r in full]))
        for name in formats:
            e, d = statistics.median(enc[name]), statistics.median(dec[name])
            per_minute, takeover = e * WORKER_METRICS / 1e6, d * WORKER_METRICS / 1e6
            mb = minute[name] * WORKER_METRICS / 1e6
            print(f"{ring:<6} {name:<6} {e:>9.1f} {d:>9.1f} {minute[name]:>14,.0f} "
                  f"{stored[name]:>12,.0f} {per_minute:>17.2f} {mb:>11.1f} "
                  f"{takeover:>13.2f}")  # fmt: skip
        e_ratio = statistics.median(enc["whole"]) / statistics.median(enc["blocks"])
        print(f"{ring}: a minute's snapshots encode {e_ratio:.1f}x as fast in blocks, and "
              f"write {minute['blocks'] / minute['whole']:.0%} of the bytes")  # fmt: skip
    if args.smoke:
        print("smoke run: figures are not meaningful")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
