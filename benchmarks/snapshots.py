"""Cost of the detector snapshots: compressing each minute's, decompressing a takeover's.

Run from the repository root with the project's Python::

    .venv/bin/python benchmarks/snapshots.py          # 256 metrics, 5 rounds
    .venv/bin/python benchmarks/snapshots.py --smoke  # a few metrics: checks it runs

A worker snapshots every metric it judges once a minute (``cliffwatch.alerting.
snapshots``), and a worker taking a shard over reads them back. ``--metrics`` detectors
(rates log-normal, ~0.3-100 events/s: ``benchmarks/shards.py``'s templates) learn 40 minutes
of Poisson counts; each is encoded *young* (only those minutes in its 3-day ring of
per-minute rates) and *full* (every minute of the ring filled, as after three days).
Both are encoded and decoded with the format written now (Zstandard) and the one
written before (zlib, level 1; still read), the two interleaved round after round so a
noisy machine moves both alike. Shown: the median µs per metric, the bytes stored, and
what that costs a minute for a worker of 25,000 metrics.
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib

import numpy as np
from shards import names_and_rates, template_states  # the same detectors as seeded there

from cliffwatch.alerting import snapshots

WORKER_METRICS = 25_000


def encode_zlib(at: int, packed: np.ndarray, recent: np.ndarray) -> list[bytes]:
    """The snapshots as the previous version wrote them (zlib, level 1)."""
    head = snapshots._HEADER.pack(snapshots.ZLIB_MAGIC, at)
    recent = np.asarray(recent, np.float32)
    return [
        head + zlib.compress(row.tobytes() + seconds.tobytes(), 1)
        for row, seconds in zip(packed, recent, strict=True)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few metrics: checks it runs")
    parser.add_argument("--metrics", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    k, rounds = (8, 1) if args.smoke else (args.metrics, args.rounds)
    codecs = {"zstd": snapshots.encode, "zlib": encode_zlib}
    print(f"{k} metrics, {rounds} rounds; µs per metric (median of the rounds)")
    print(f"{'ring':<6} {'format':<6} {'encode µs':>9} {'decode µs':>9} {'bytes':>7} "
          f"{'encode s/min @25k':>17} {'decode s @25k':>13}")  # fmt: skip
    rates = names_and_rates(0, k)[1]
    for ring, (packed, recent) in template_states(rates, 1_800_000_000).items():
        enc: dict[str, list[float]] = {c: [] for c in codecs}
        dec: dict[str, list[float]] = {c: [] for c in codecs}
        size: dict[str, float] = {}
        for _ in range(rounds):
            for codec, encode in codecs.items():
                began = time.perf_counter()
                blobs = encode(0, packed, recent)
                encoded = time.perf_counter()
                back = [snapshots.decode("m", b) for b in blobs]
                enc[codec].append((encoded - began) / k * 1e6)
                dec[codec].append((time.perf_counter() - encoded) / k * 1e6)
                assert all(
                    s is not None and s.packed is not None and np.array_equal(s.packed, p)
                    for s, p in zip(back, packed, strict=True)
                ), codec
                size[codec] = float(np.mean([len(b) for b in blobs]))
        for codec in codecs:
            e, d = statistics.median(enc[codec]), statistics.median(dec[codec])
            per_minute, takeover = e * WORKER_METRICS / 1e6, d * WORKER_METRICS / 1e6
            print(f"{ring:<6} {codec:<6} {e:>9.1f} {d:>9.1f} {size[codec]:>7,.0f} "
                  f"{per_minute:>17.2f} {takeover:>13.2f}")  # fmt: skip
        e_ratio = statistics.median(enc["zlib"]) / statistics.median(enc["zstd"])
        d_ratio = statistics.median(dec["zlib"]) / statistics.median(dec["zstd"])
        print(f"{ring}: zstd encodes {e_ratio:.1f}x and decodes {d_ratio:.1f}x as fast as "
              f"zlib, in {size['zstd'] / size['zlib']:.0%} of the bytes")  # fmt: skip
    if args.smoke:
        print("smoke run: figures are not meaningful")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
