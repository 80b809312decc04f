"""Speed of the worker side: one detector tick for N metrics, and backtest throughput.

Run from the repository root with the project's Python, against a real Redis::

    .venv/bin/python benchmarks/detector_tick.py            # full run; exit 1 on a missed goal
    .venv/bin/python benchmarks/detector_tick.py --smoke    # a few seconds, only checks it runs

For each N, in a fresh child process (so its peak RSS is its own): a ``Detector`` of N
metrics is warmed with ~20 minutes of Poisson counts fed in one block, then timed over
30 single-second ``update()`` calls (one of them closes a minute). Separately, one
second is written to Redis for the N metrics and read back with ``Store.read_counts``.
50,000 metrics run only if the peak RSS measured at 10,000, scaled up, stays under
``--max-rss-gb`` (default 8). Keys live under a unique prefix and are deleted after.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import numpy as np
import redis

from cliffwatch.metrics.store import Store
from cliffwatch.rules.detector import Detector

DEFAULT_URL = "redis://127.0.0.1:6379/0"
SIZES = (100, 1_000, 10_000, 50_000)
TICK_GOAL_MS = 250.0
TICK_GOAL_N = 10_000
BACKTEST_GOAL = 200_000.0
EPOCH = 1_700_000_040  # a whole minute


def max_rss_mb() -> float:
    """Peak resident memory of this process, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation)."""
    return float(np.percentile(np.asarray(values), q))


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    batch: list[Any] = []
    for key in client.scan_iter(match=f"{prefix}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


def one_size(n: int, url: str, warm_s: int, ticks: int, reads: int) -> dict[str, Any]:
    """Warm a detector of ``n`` metrics, time ``ticks`` one-second updates and ``reads``
    reads of one second from Redis; return the figures."""
    rng = np.random.default_rng(n)
    rates = rng.lognormal(1.0, 1.5, n)  # ~0.1 to ~100 events/s
    # start the timed ticks at second 45 of a minute, so one of them closes a minute
    start = EPOCH - 3600  # a whole minute; warm_s ends at second 45
    detector = Detector(n)
    began = time.perf_counter()
    detector.update(rng.poisson(rates[:, None], (n, warm_s)).astype(float), start)
    warm_elapsed = time.perf_counter() - began
    second = start + warm_s
    tick_ms: list[float] = []
    closing_ms = None
    for _ in range(ticks):
        counts = rng.poisson(rates[:, None], (n, 1)).astype(float)
        t0 = time.perf_counter()
        detector.update(counts, second)
        ms = (time.perf_counter() - t0) * 1e3
        tick_ms.append(ms)
        second += 1
        if second % 60 == 0:
            closing_ms = ms

    prefix = f"cliffwatch-bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(url)
    store = Store(client, prefix=prefix)
    names = [f"bench.tick.m{i:05d}" for i in range(n)]
    read_ms: list[float] = []
    try:
        counts = rng.poisson(rates)
        store.write_counts({EPOCH: {name: int(c) for name, c in zip(names, counts, strict=True)}})
        for _ in range(reads):
            t0 = time.perf_counter()
            got = store.read_counts(names, EPOCH, EPOCH + 1)
            read_ms.append((time.perf_counter() - t0) * 1e3)
        if not np.array_equal(got[:, 0], counts):
            raise RuntimeError("read_counts returned other counts than were written")
    finally:
        delete_prefix(client, prefix)
        client.close()
    return {
        "n": n,
        "warm_s": warm_s,
        "warm_elapsed_s": warm_elapsed,
        "tick_median_ms": statistics.median(tick_ms),
        "tick_p95_ms": percentile(tick_ms, 95),
        "tick_max_ms": max(tick_ms),
        "tick_minute_close_ms": closing_ms,
        "read_median_ms": statistics.median(read_ms),
        "read_p95_ms": percentile(read_ms, 95),
        "max_rss_mb": max_rss_mb(),
    }


def run_child(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`one_size` for ``n`` in a fresh Python process; return its figures."""
    command = [sys.executable, __file__, "--one", str(n), "--redis-url", args.redis_url]
    if args.smoke:
        command.append("--smoke")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"the run for N={n} failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def backtest_throughput(smoke: bool) -> tuple[int, float]:
    """Feed a (6 metrics x 2 days) synthetic block to one ``update``; return
    (metric-seconds, elapsed seconds)."""
    seconds = 2 * 3600 if smoke else 2 * 86400
    rng = np.random.default_rng(6)
    base = np.array([0.3, 1.2, 5.0, 20.0, 120.0, 900.0])
    t = np.arange(seconds)
    daily = 1.0 + 0.6 * np.sin(2 * np.pi * t / 86400.0)
    counts = rng.poisson(base[:, None] * daily[None, :]).astype(float)
    counts[:, rng.random(seconds) < 0.001] = np.nan  # a few seconds with no data
    detector = Detector(len(base))
    began = time.perf_counter()
    detector.update(counts, EPOCH)
    return counts.size, time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    """Run every size and the backtest; return 1 if a goal failed (0 with ``--smoke``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds; only checks it runs")
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    parser.add_argument(
        "--max-rss-gb",
        type=float,
        default=8.0,
        help="skip 50,000 metrics if its estimated peak RSS exceeds this",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    warm_s, ticks, reads = (120 + 45, 3, 2) if args.smoke else (20 * 60 + 45, 30, 10)
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.redis_url, warm_s, ticks, reads)))
        return 0

    failed = False
    sizes = (100, 1_000) if args.smoke else SIZES
    print(
        f"detector update() of one second, after {warm_s} s of history fed in one block; "
        f"{ticks} ticks; read = Store.read_counts of one second from Redis ({reads} reads)"
    )
    header = (
        f"{'metrics':>8} {'tick med':>9} {'tick p95':>9} {'tick max':>9} "
        f"{'min-close':>9} {'read med':>9} {'read p95':>9} {'total med':>9} "
        f"{'warm-up':>8} {'peak RSS':>9}"
    )
    print(header)
    print(
        f"{'':>8} {'ms':>9} {'ms':>9} {'ms':>9} {'ms':>9} {'ms':>9} {'ms':>9} {'ms':>9} "
        f"{'s':>8} {'MiB':>9}"
    )
    results: dict[int, dict[str, Any]] = {}
    for n in sizes:
        if n == 50_000 and 10_000 in results:
            estimate = results[10_000]["max_rss_mb"] * 5 / 1024
            if estimate > args.max_rss_gb:
                print(
                    f"{n:8,d}  skipped: estimated peak RSS {estimate:.1f} GB "
                    f"> {args.max_rss_gb} GB (5x the 10,000 run)"
                )
                continue
        r = results[n] = run_child(n, args)
        closing = r["tick_minute_close_ms"]
        print(
            f"{n:8,d} {r['tick_median_ms']:9.1f} {r['tick_p95_ms']:9.1f} "
            f"{r['tick_max_ms']:9.1f} {closing if closing is not None else float('nan'):9.1f} "
            f"{r['read_median_ms']:9.1f} {r['read_p95_ms']:9.1f} "
            f"{r['tick_median_ms'] + r['read_median_ms']:9.1f} "
            f"{r['warm_elapsed_s']:8.1f} {r['max_rss_mb']:9,.0f}"
        )
    print("  min-close: the one tick that also closed a minute (learning the normal rate)")

    cells, elapsed = backtest_throughput(args.smoke)
    rate = cells / elapsed
    print(
        f"backtest: Detector.update on one (6 metrics x {cells // 6:,} s) block: "
        f"{elapsed:.2f} s, {rate:,.0f} metric-seconds/s"
    )

    print("goals:")
    if TICK_GOAL_N in results:
        r = results[TICK_GOAL_N]
        total = r["tick_median_ms"] + r["read_median_ms"]
        worst = r["tick_p95_ms"] + r["read_p95_ms"]
        ok = total < TICK_GOAL_MS
        failed |= not ok
        print(
            f"  {'PASS' if ok else 'FAIL'}  {TICK_GOAL_N:,} metrics per tick (detector + read, "
            f"median): {total:.1f} ms (< {TICK_GOAL_MS:.0f} ms); p95 + p95: {worst:.1f} ms"
        )
    ok = rate >= BACKTEST_GOAL
    failed |= not ok
    print(
        f"  {'PASS' if ok else 'FAIL'}  backtest throughput: {rate:,.0f} metric-seconds/s "
        f"(>= {BACKTEST_GOAL:,.0f})"
    )
    if args.smoke:
        print("smoke run: figures are not meaningful; goals not enforced")
        return 0
    print("all goals met" if not failed else "SOME GOALS FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
