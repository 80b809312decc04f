"""Speed of the app side: emit(), @event, threads, Redis commands per flush, Redis memory.

Run from the repository root with the project's Python, against a real Redis::

    .venv/bin/python benchmarks/emit.py            # full run; exit 1 if a goal fails
    .venv/bin/python benchmarks/emit.py --smoke    # a few seconds, only checks it runs

Every ratio compares figures measured in the same run, interleaved, so a noisy machine
moves both sides alike. All keys live under a unique prefix and are deleted at the end.
``--redis-url`` (default ``redis://127.0.0.1:6379/0``) picks the server.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import timeit
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import redis
from blinker import Signal

import cliffwatch
from cliffwatch.metrics.counter import Counter
from cliffwatch.metrics.store import Store

DEFAULT_URL = "redis://127.0.0.1:6379/0"


class Goals:
    """Collects PASS/FAIL lines; ``failed`` says whether any goal was missed."""

    def __init__(self) -> None:
        self.failed = False

    def check(self, what: str, ok: bool, detail: str) -> None:
        """Print one goal with PASS or FAIL."""
        self.failed |= not ok
        print(f"  {'PASS' if ok else 'FAIL'}  {what}: {detail}")


class CountingRedis(redis.Redis):
    """A real Redis client that records how many commands each pipeline sends."""

    sent: list[int]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute
        sent = self.sent

        def counted(raise_on_error: bool = True) -> Any:
            sent.append(len(pipe.command_stack))
            return execute(raise_on_error)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix``; return how many."""
    deleted = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def per_call_ns(stmt: Callable[[], Any], number: int) -> float:
    """Nanoseconds per call of ``stmt`` over ``number`` calls (loop overhead included)."""
    return timeit.Timer(stmt).timeit(number) / number * 1e9


def interleaved(stmts: dict[str, Callable[[], Any]], number: int, repeats: int) -> dict[str, float]:
    """Median ns per call of each statement, the statements timed in turn each repeat."""
    runs: dict[str, list[float]] = {name: [] for name in stmts}
    for _ in range(repeats):
        for name, stmt in stmts.items():
            runs[name].append(per_call_ns(stmt, number))
    return {name: statistics.median(values) for name, values in runs.items()}


def bench_emit_cost(goals: Goals, smoke: bool) -> float:
    """emit() against a bare blinker send, and @event against emit(). Returns events/s."""
    number, repeats = (20_000, 3) if smoke else (200_000, 15)
    counts: defaultdict[str, int] = defaultdict(int)

    def receiver(sender: str, count: int = 1, **_: object) -> None:
        counts[sender] += count

    bare = Signal()
    bare.connect(receiver)
    bare_send = bare.send

    @cliffwatch.event("bench.decorated")
    def decorated() -> None:
        return None

    emit = cliffwatch.emit

    def empty() -> None:
        return None

    stmts: dict[str, Callable[[], Any]] = {
        "empty call": empty,
        "blinker Signal.send": lambda: bare_send("bench.bare", count=1),
        "cliffwatch.emit": lambda: emit("bench.emit"),
        "@event call": decorated,
    }
    # the lambdas add one Python call to each side; "empty call" measures that overhead
    for stmt in stmts.values():
        stmt()
    ns = interleaved(stmts, number, repeats)
    base = ns["empty call"]
    net = {name: value - base for name, value in ns.items() if name != "empty call"}
    print(f"per call, median of {repeats} interleaved repeats of {number:,} calls:")
    print(f"  {'':22} {'raw ns':>8} {'net ns':>8}")
    print(f"  {'empty call':22} {base:8.0f} {'':>8}")
    for name, value in net.items():
        print(f"  {name:22} {ns[name]:8.0f} {value:8.0f}")
    emit_ratio = net["cliffwatch.emit"] / net["blinker Signal.send"]
    event_ratio = net["@event call"] / net["cliffwatch.emit"]
    raw_rate = 1e9 / ns["cliffwatch.emit"]
    print(f"  emit / bare blinker send (net) = {emit_ratio:.2f}")
    print(f"  @event call / emit (net)       = {event_ratio:.2f}")
    print(f"  one thread: {raw_rate:,.0f} events/s (loop and call overhead included)")
    goals.check("emit() cost vs bare blinker send", emit_ratio <= 1.3, f"{emit_ratio:.2f} (<= 1.3)")
    goals.check("events/s from one thread", raw_rate >= 300_000, f"{raw_rate:,.0f} (>= 300,000)")
    goals.check("@event overhead vs emit()", event_ratio <= 1.5, f"{event_ratio:.2f} (<= 1.5)")
    return raw_rate


def run_threads(
    name: str, threads: int, seconds: float, send: Callable[[str], Any] = cliffwatch.emit
) -> tuple[int, float]:
    """Call ``send(name)`` from ``threads`` threads for ``seconds``; return (calls, elapsed)."""
    emit = send
    barrier = threading.Barrier(threads + 1)
    done: list[int] = []
    lock = threading.Lock()
    deadline = [0.0]

    def work() -> None:
        barrier.wait()
        end = deadline[0]
        sent = 0
        while time.perf_counter() < end:
            for _ in range(1000):
                emit(name)
            sent += 1000
        with lock:
            done.append(sent)

    pool = [threading.Thread(target=work, name=f"bench-emit-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    barrier.wait()
    for thread in pool:
        thread.join()
    return sum(done), time.perf_counter() - began


def bench_threads(goals: Goals, url: str, smoke: bool) -> None:
    """1 thread, then 8 threads, emitting for a while; totals read back from Redis."""
    seconds = 0.3 if smoke else 2.0
    prefix = f"cliffwatch-bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(url)
    try:
        rounds = 1 if smoke else 3
        results: list[tuple[int, int, int, float]] = []  # (threads, sent, stored, elapsed)
        for round_ in range(rounds):
            for threads in (1, 8):
                name = f"bench.threads{threads}.r{round_}"
                first = int(time.time()) - 2
                cliffwatch.configure(url, prefix=prefix)
                sent, elapsed = run_threads(name, threads, seconds)
                if not cliffwatch.shutdown(timeout=10.0):
                    print("  (final flush did not finish in 10 s)")
                last = int(time.time()) + 2
                store = Store(client, prefix=prefix)
                stored = int(np.nansum(store.read_counts([name], first, last)))
                results.append((threads, sent, stored, elapsed))
        print(
            f"threads emitting one metric for ~{seconds} s (configure, flusher running), "
            f"{rounds} interleaved rounds:"
        )
        print(f"  {'threads':>7} {'emitted':>12} {'in Redis':>12} {'events/s':>12}")
        for threads, sent, stored, elapsed in results:
            print(f"  {threads:7d} {sent:12,d} {stored:12,d} {sent / elapsed:12,.0f}")
        # control: the same loop around a bare blinker send (no cliffwatch, no lock
        # of ours), to show what the interpreter alone does with 8 threads
        counts: defaultdict[str, int] = defaultdict(int)

        def receiver(sender: str, count: int = 1, **_: object) -> None:
            counts[sender] += count

        bare = Signal()
        bare.connect(receiver)
        control = {
            t: run_threads("bench.bare", t, seconds, lambda n: bare.send(n, count=1))
            for t in (1, 8)
        }
        # second control: the same receiver behind a threading.Lock, as any thread-safe
        # counter needs; under the GIL a contended lock makes threads queue on it
        lock = threading.Lock()

        def locked_receiver(sender: str, count: int = 1, **_: object) -> None:
            with lock:
                counts[sender] += count

        locked = Signal()
        locked.connect(locked_receiver)
        locked_control = {
            t: run_threads("bench.locked", t, seconds, lambda n: locked.send(n, count=1))
            for t in (1, 8)
        }
        for label, runs in (("(blinker)", control), ("(+Lock)", locked_control)):
            for threads, (calls, elapsed) in runs.items():
                print(f"  {threads:7d} {calls:12,d} {label:>12} {calls / elapsed:12,.0f}")
        for label, runs in (
            ("bare blinker send", control),
            ("blinker send + locked dict", locked_control),
        ):
            c_one, c_eight = (calls / elapsed for calls, elapsed in runs.values())
            print(f"  control, {label}: 8 threads / 1 thread = {c_eight / c_one:.2f}")
        one = statistics.median(s / e for t, s, _, e in results if t == 1)
        eight = statistics.median(s / e for t, s, _, e in results if t == 8)
        exact = all(sent == stored for _, sent, stored, _ in results)
        goals.check(
            "exact totals in Redis after shutdown",
            exact,
            "equal in every run" if exact else "MISMATCH",
        )
        goals.check(
            "8-thread throughput >= 1 thread (medians)",
            eight >= one,
            f"{eight:,.0f}/s vs {one:,.0f}/s ({eight / one:.2f}x)",
        )
    finally:
        cliffwatch.shutdown(timeout=5.0)
        delete_prefix(client, prefix)
        client.close()


def bench_commands_per_flush(goals: Goals, url: str, smoke: bool) -> None:
    """Redis commands of flushing 1 metric x 10 events vs 1 metric x 100,000 events."""
    prefix = f"cliffwatch-bench-{uuid.uuid4().hex[:8]}:"
    client = cast(CountingRedis, CountingRedis.from_url(url))
    client.sent = []
    now = [float(int(time.time()) // 60 * 60 + 5)]  # seconds 5..8 of a minute: one hash
    store = Store(client, prefix=prefix)
    counter = Counter(store, clock=lambda: now[0])
    big = 10_000 if smoke else 100_000
    try:
        sent = {}
        for label, events in (("warm-up", 1), ("10 events", 10), (f"{big:,} events", big)):
            for _ in range(events):
                counter.add("bench.flush")
            now[0] += 1.0
            client.sent.clear()
            counter.flush()
            sent[label] = sum(client.sent)
        print("Redis commands per flush of one second of one metric (counting client):")
        for label, commands in sent.items():
            print(f"  {label:>16}: {commands} commands")
        small, large = sent["10 events"], sent[f"{big:,} events"]
        read = Store(client, prefix=prefix).read_counts(
            ["bench.flush"], int(now[0]) - 3, int(now[0])
        )
        stored = [int(v) for v in read[0]]
        print(f"  stored counts: {stored}")
        goals.check(
            "commands per flush independent of events (O(metrics))",
            small == large and stored == [1, 10, big],
            f"{small} vs {large}",
        )
    finally:
        counter.close(timeout=2.0)
        delete_prefix(client, prefix)
        client.close()


def bench_memory(goals: Goals, url: str, smoke: bool) -> None:
    """Redis bytes per retained second-sample: an hour of seconds for 100 metrics."""
    seconds, metrics = (300, 10) if smoke else (3600, 100)
    prefix = f"cliffwatch-bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(url)
    store = Store(client, prefix=prefix)
    names = [f"bench.memory.m{i:03d}" for i in range(metrics)]
    rng = np.random.default_rng(7)
    rates = rng.uniform(0.5, 500.0, metrics)
    start = int(time.time()) // 60 * 60 - seconds
    try:
        for block in range(start, start + seconds, 600):
            width = min(600, start + seconds - block)
            counts = rng.poisson(rates[:, None], (metrics, width))
            store.write_counts(
                {
                    block + j: {name: int(counts[i, j]) for i, name in enumerate(names)}
                    for j in range(width)
                }
            )
        total = keys = 0
        other = 0
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            usage = client.memory_usage(key, samples=0) or 0
            if b":s:" in key:
                total += usage
                keys += 1
            else:
                other += usage
        samples = seconds * metrics
        per = total / samples
        print(
            f"Redis memory: {metrics} metrics x {seconds} s = {samples:,} samples "
            f"(Poisson counts, rates 0.5-500/s)"
        )
        print(f"  {keys:,} per-minute hashes, {total:,} B (MEMORY USAGE); other keys {other:,} B")
        print(f"  {per:.2f} B per second-sample ({total / keys:.0f} B per hash of 60)")
        goals.check("Redis memory per second-sample", per <= 8.0, f"{per:.2f} B (<= 8 B)")
    finally:
        delete_prefix(client, prefix)
        client.close()


def main(argv: list[str] | None = None) -> int:
    """Run every section; return 1 if a goal failed (0 with ``--smoke``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds; only checks it runs")
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    args = parser.parse_args(argv)
    goals = Goals()
    prefix = f"cliffwatch-bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(args.redis_url)
    cliffwatch.configure(args.redis_url, prefix=prefix)
    try:
        bench_emit_cost(goals, args.smoke)
    finally:
        cliffwatch.shutdown(timeout=10.0)
        delete_prefix(client, prefix)
        client.close()
    print()
    bench_threads(goals, args.redis_url, args.smoke)
    print()
    bench_commands_per_flush(goals, args.redis_url, args.smoke)
    print()
    bench_memory(goals, args.redis_url, args.smoke)
    print()
    if args.smoke:
        print("smoke run: figures are not meaningful; goals not enforced")
        return 0
    print("all goals met" if not goals.failed else "SOME GOALS FAILED")
    return 1 if goals.failed else 0


if __name__ == "__main__":
    sys.exit(main())
