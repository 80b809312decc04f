"""Sharded workers at scale: many metrics split across several ``cliffwatch worker``
processes on one real Redis, their tick durations, and the takeover after a SIGKILL.

Run from the repository root with the project's Python::

    .venv/bin/python benchmarks/shards.py          # 100,000 metrics, 4 workers; exit 1 on a miss
    .venv/bin/python benchmarks/shards.py --smoke  # 2,000 metrics, 2 workers: checks it runs

What it does, on a throwaway ``redis-server`` started for the run (so its memory is the
run's alone):

1. **Seeds what the metrics learnt.** ``--templates`` detectors (rates log-normal,
   ~0.3-100 events/s) learn 40 minutes of Poisson counts ending at a whole minute T0;
   each metric gets the snapshot of one of them (``cliffwatch.alerting.snapshots``, with
   its last 18 minutes of counts and, as a metric running for days has, a full 3-day
   ring of per-minute rates, which the workers compress into each minute's snapshots
   again), and the workers run with ``--warmup 30``, so every metric is *judged*
   (scored, learnt from and decided on) from its first tick. A day of history per
   metric would take a day to feed; what a tick costs does not depend on how long a
   metric learnt, only on how many are judged (checked below: every metric's status
   must be ``ok``) and on how full the rings it compresses are.
2. **App traffic.** A separate process writes each second's Poisson counts of every
   metric with ``Store.write_counts`` (one HINCRBY per metric and second, as the apps'
   flushers do) and records itself as an emitter, so the workers tick as soon as it has
   flushed.
3. **Workers.** ``--workers`` ``cliffwatch worker`` processes start together on a glob
   rule; the run waits until they hold all shards, judge all metrics and have caught up
   with the clock, then records every tick of every worker that starts in the next
   ``--seconds`` (from what each publishes in ``Pworkers:info``), with their CPU, RSS
   and Redis's memory.
4. **Takeover.** One worker is killed with SIGKILL; the run measures until its shards'
   leases are taken and until every metric is judged again by the survivors (seen
   through their published info, which is renewed every 0.5 s), and
   records every tick of the survivors from the kill until ``--after`` seconds later.

Goals (full run): every tick <= 1 s while all workers run; the killed worker's metrics
judged again within 10 s; each metric judged by exactly one worker; no incident opened
that one lone detector, restored from the same snapshot and fed the same counts, would
not open at the same second. (The traffic is Poisson, and a dip of it deep enough to
page comes about once in 1,450 metric-days: a run is ~250, and the fixed seed makes
one of them, ``m022126``'s 15 events in 5 s against 52, at about the 47th second.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis

from cliffwatch.alerting import snapshots
from cliffwatch.alerting.shards import SHARDS, shard_of
from cliffwatch.metrics.store import Store
from cliffwatch.rules.detector import HISTORY_S, Detector

CLIFFWATCH = Path(sys.executable).parent / "cliffwatch"
TICK_GOAL_S = 1.0
TAKEOVER_GOAL_S = 10.0
LEARN_MINUTES = 40
WARMUP = 30
EMITTER = "bench:traffic"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def names_and_rates(n: int, templates: int) -> tuple[list[str], np.ndarray]:
    """The metric names and each template's rate (metric i follows template i % K)."""
    rates = np.random.default_rng(7).lognormal(1.5, 1.2, templates).clip(0.3, 100.0)
    return [f"bench.shard.m{i:06d}" for i in range(n)], rates


# -- the app traffic (a child process) ----------------------------------------------------


def traffic(url: str, prefix: str, n: int, templates: int, seconds: float, out: str) -> None:
    """Write every metric's count for each second just after it closes, until
    ``seconds`` have passed; dump the write durations to ``out``.

    This process stands in for the whole fleet's flushers, which in production run on
    the app hosts, not beside the workers. So it writes what ``Store.write_counts`` would
    (one HINCRBY per metric and second, an EXPIRE per metric and minute, the emitter's
    last flush) as Redis protocol built in one go and handed to ``redis-cli --pipe`` (the
    mass-insertion mode), instead of 100,000 redis-py pipeline calls a second: that
    took 1.8 s of a core per second and starved the workers under test."""
    names, rates = names_and_rates(n, templates)
    per_metric = rates[np.arange(n) % templates]
    store = Store.from_url(url, prefix=prefix)
    where = store.client.connection_pool.connection_kwargs
    host, port = where["host"], str(where["port"])
    rng = np.random.default_rng(3)
    durations: list[float] = []
    written: list[int] = []
    keys: list[bytes] = []
    key_minute = -1
    stop_at = time.time() + seconds
    while time.time() < stop_at:
        time.sleep(1.01 - time.time() % 1.0)
        second = int(time.time()) - 1
        minute = second - second % 60
        counts = rng.poisson(per_metric).tolist()
        t0 = time.perf_counter()
        expires: list[bytes] = []
        if minute != key_minute:  # a new minute's hashes: their keys, and their EXPIRE
            keys = [_bulk(store.keys.seconds(m, minute)) for m in names]
            ttl = _bulk(str(store.retention_s))
            expires = [b"*3\r\n$6\r\nEXPIRE\r\n" + k + ttl for k in keys]
            key_minute = minute
        field = _bulk(str(second - minute))
        payload = b"".join(
            [
                b"*4\r\n$7\r\nHINCRBY\r\n%s%s%s" % (k, field, _bulk(str(c)))
                for k, c in zip(keys, counts, strict=True)
            ]
            + expires  # after the HINCRBYs that create the hashes
            + [_command("HSET", store.keys.emitters, EMITTER, str(second + 1))]
        )
        done = subprocess.run(
            ["redis-cli", "-h", host, "-p", port, "--pipe"], input=payload, capture_output=True
        )
        if done.returncode != 0 or b"errors: 0," not in done.stdout:
            raise SystemExit(f"traffic: redis-cli --pipe failed: {done.stdout[-300:]!r}")
        durations.append(time.perf_counter() - t0)
        written.append(second)
        if len(durations) % 5 == 0:
            Path(out).write_text(json.dumps([durations, written]))


def _bulk(text: str) -> bytes:
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _command(*words: str) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(_bulk(w) for w in words)


# -- seeding ------------------------------------------------------------------------------


def template_states(rates: np.ndarray, t0: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What one detector per rate learnt from LEARN_MINUTES of Poisson counts ending at
    the whole minute ``t0``: ``{"young" | "full": (packed rows, recent seconds)}``, young
    with only those minutes in its 3-day ring of per-minute rates, full with every
    minute of it filled around its rate (as after three days)."""
    k = len(rates)
    start = t0 - LEARN_MINUTES * 60
    det = Detector(k, warmup_minutes=WARMUP)
    rng = np.random.default_rng(11)
    det.update(rng.poisson(rates[:, None], (k, t0 - start)).astype(float), start)
    out = {"young": (det.pack(range(k)), det.recent_counts(range(k)))}
    ring = det._minutes[:k]
    ring[:] = (rates[:, None] * rng.normal(1.0, 0.1, ring.shape)).astype(np.float32)
    out["full"] = (det.pack(range(k)), det.recent_counts(range(k)))
    return out


def seed(
    store: Store, names: list[str], rates: np.ndarray
) -> tuple[int, dict[str, float], list[bytes]]:
    """Write a snapshot for every metric, valid at the last whole minute T0, with every
    per-minute rate of its 3-day ring filled (what a metric running for days has, and
    what the workers then compress each minute); return T0, the snapshot sizes (young,
    with only the minutes learnt, and full, as seeded) and the templates' snapshots
    (metric i got template i % K's)."""
    k = len(rates)
    t0 = int(time.time()) // 60 * 60
    learnt = template_states(rates, t0)
    young = snapshots.encode(t0, *learnt["young"])
    blobs = snapshots.encode(t0, *learnt["full"])
    pipe = store.client.pipeline(transaction=False)
    for i, name in enumerate(names):
        pipe.set(store.keys.detector(name), blobs[i % k])
        if len(pipe) >= 10_000:
            pipe.execute()
    pipe.sadd(store.keys.metrics, *names)
    pipe.execute()
    sizes = {
        "young_b": float(np.mean([len(b) for b in young])),
        "full_b": float(np.mean([len(b) for b in blobs])),
    }
    return t0, sizes, blobs


def replay(store: Store, name: str, blob: bytes, t0: int, end: int) -> list[int]:
    """The seconds at which one lone detector opens an incident for ``name``, restored
    from its seeded snapshot ``blob`` and fed the counts Redis holds from ``t0`` to
    ``end``: what the sharded workers should have decided, no more, no less."""
    snap = snapshots.decode(name, blob)
    assert snap is not None and snap.recent is not None
    det = Detector(1, warmup_minutes=WARMUP)
    snapshots.restore(det, [0], [snap])
    history = np.full((1, HISTORY_S), np.nan, np.float32)
    history[0, -len(snap.recent) :] = snap.recent
    det.prime(history, t0 - HISTORY_S)
    fired = det.update(store.read_counts([name], t0, end), t0)
    return [t.at for t in fired if t.state == "firing"]


def unexplained(
    store: Store, names: list[str], states: list[dict[str, str]], blobs: list[bytes], t0: int
) -> list[str]:
    """The incidents the workers opened (by the metrics' alert ``states``) that a lone
    detector fed the same counts would not have opened at the same second (see
    :func:`replay`); the others are dips of the Poisson traffic itself, deep enough to
    page (one comes in about 1,450 metric-days)."""
    end = int(time.time()) - 5
    out = []
    for i, (name, st) in enumerate(zip(names, states, strict=True)):
        if st.get("incident_id"):
            at = int(st.get("started_at") or 0)
            if at not in replay(store, name, blobs[i % len(blobs)], t0, end):
                out.append(f"{name} at {at}")
    return out


# -- watching the workers -----------------------------------------------------------------


def infos(store: Store) -> dict[str, dict[str, Any]]:
    return {t: json.loads(i) for t, i in store.live_workers().items()}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, MiB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    got = {line.split(":")[0]: int(line.split()[1]) for line in status if line[:2] == "Vm"}
    return got.get("VmRSS", 0) / 1024, got.get("VmHWM", 0) / 1024


def last_ticks(store: Store) -> dict[str, int]:
    """The number of the last tick each live worker has published: token -> number."""
    return {t: max((int(k) for k, _ in i.get("ticks", [])), default=0)
            for t, i in infos(store).items()}  # fmt: skip


class Recorder:
    """Every tick each live worker starts from now on, polled every 0.2 s in a thread:
    workers publish only their last few ticks, so the polling goes on while the run waits
    for other things."""

    def __init__(self, store: Store) -> None:
        self.seen: dict[str, dict[int, float]] = {}
        self._since, self._store, self._stop = last_ticks(store), store, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for token, info in infos(self._store).items():
                for number, took in info.get("ticks", []):
                    if int(number) > self._since.get(token, 0):
                        self.seen.setdefault(token, {})[int(number)] = float(took)
            self._stop.wait(0.2)

    def stop(self) -> dict[str, dict[int, float]]:
        """Stop polling; token -> {tick number: seconds it took}."""
        self._stop.set()
        self._thread.join()
        return self.seen


def summary(ticks: dict[int, float]) -> tuple[float, float, float, int]:
    values = sorted(ticks.values())
    if not values:
        return (float("nan"),) * 3 + (0,)  # type: ignore[return-value]
    return (
        statistics.median(values),
        float(np.percentile(values, 95)),
        max(values),
        len(values),
    )


def wait(condition: Any, timeout: float, what: str) -> float:
    """Poll ``condition`` every 0.1 s; return the seconds it took. Raises on timeout."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - began


# -- the run ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small and short: checks it runs")
    parser.add_argument("--metrics", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0, help="ticks recorded")
    parser.add_argument("--after", type=float, default=30.0, help="ticks recorded after kill")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds to wait after the workers caught up, before recording",
    )
    parser.add_argument("--templates", type=int, default=256)
    parser.add_argument("--logs", type=Path, help="copy the workers' logs to this directory")
    parser.add_argument("--traffic", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.traffic:
        url, prefix, n, k, seconds, out = args.traffic
        traffic(url, prefix, int(n), int(k), float(seconds), out)
        return 0
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean up
    if args.smoke:
        args.metrics, args.workers, args.seconds, args.after = 2_000, 2, 10.0, 5.0
    server = shutil.which("redis-server")
    if server is None or shutil.which("redis-cli") is None or not CLIFFWATCH.exists():
        print("needs redis-server and redis-cli on PATH and the cliffwatch console script")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="cliffwatch-shards-"))
    port = free_port()
    redis_proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        return run(args, f"redis://127.0.0.1:{port}/0", redis_proc.pid, tmp, procs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("worker*.log"):
                shutil.copy(log, args.logs / log.name)
        shutil.rmtree(tmp, ignore_errors=True)


def run(
    args: argparse.Namespace,
    url: str,
    redis_pid: int,
    tmp: Path,
    procs: dict[str, subprocess.Popen[bytes]],
) -> int:
    n, w = args.metrics, args.workers
    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    client = redis.Redis.from_url(url)
    wait(lambda: _pings(client), 10, "redis-server to start")
    store = Store(client, prefix=prefix)
    names, rates = names_and_rates(n, args.templates)
    began = time.perf_counter()
    t0, sizes, blobs = seed(store, names, rates)
    print(f"seeded {n:,} snapshots in {time.perf_counter() - began:.1f} s (valid at T0={t0})")

    total_s = 600 + args.seconds + args.after
    out = tmp / "traffic.json"
    procs["traffic"] = subprocess.Popen(
        [sys.executable, __file__, "--traffic", url, prefix, str(n), str(args.templates),
         str(total_s), str(out)]
    )  # fmt: skip
    rules = tmp / "rules.toml"
    rules.write_text('[[rule]]\nmetric = "bench.shard.*"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIFFWATCH_")}
    for k in range(w):
        log = open(tmp / f"worker{k}.log", "w")  # noqa: SIM115 (lives as long as the run)
        procs[f"worker{k}"] = subprocess.Popen(
            [str(CLIFFWATCH), "-v", "worker", "--rules", str(rules), "--redis-url", url, "--prefix",
             prefix, "--warmup", str(WARMUP)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    pid_of = {p.pid: name for name, p in procs.items()}

    def all_judged() -> bool:
        live = infos(store)
        return (
            len(live) == w
            and sum(int(i.get("metrics", 0)) for i in live.values()) == n
            and all(i.get("ticks") for i in live.values())
        )

    began = time.perf_counter()
    start_s = wait(all_judged, 900, f"{w} workers to judge all {n:,} metrics")
    print(f"{w} workers judge all {n:,} metrics {start_s:.1f} s after starting")
    try:
        wait(lambda: _caught_up(store), 120, "the workers to catch up with the clock")
        print(f"... and are caught up with the clock after {time.perf_counter() - began:.1f} s")
    except TimeoutError:
        print("... and are NOT caught up with the clock 120 s later: recording anyway")
    time.sleep(args.settle)

    # -- all workers, live ------------------------------------------------------------
    tokens = {t: pid_of.get(int(i["pid"]), "?") for t, i in infos(store).items()}
    cpu_before = {name: cpu_s(p.pid) for name, p in procs.items()} | {"redis": cpu_s(redis_pid)}
    wall = time.monotonic()
    judged_from = {t: int(i.get("judged_to") or 0) for t, i in infos(store).items()}
    recorder = Recorder(store)
    time.sleep(args.seconds)
    ticks = recorder.stop()
    wall = time.monotonic() - wall
    cpu = {k: (cpu_s(procs[k].pid if k in procs else redis_pid) - v) / wall
           for k, v in cpu_before.items()}  # fmt: skip
    live = infos(store)
    holders = store.shard_holders(SHARDS)
    judges = {holders[shard_of(m)] for m in names}
    states = store.get_states(names)
    ok = sum(1 for st in states if st.get("status") == "ok")
    judged_by = sum(1 for m, st in zip(names, states, strict=True)
                    if st.get("judged_by") == holders[shard_of(m)])  # fmt: skip
    opened = sum(1 for st in states if st.get("incident_id"))
    mem = client.info("memory")
    snap_bytes = _snapshot_bytes(client, store, names)

    print(f"\n{n:,} metrics, {w} workers, {args.seconds:.0f} s of live ticks "
          f"({SHARDS} shards)")  # fmt: skip
    print(f"{'worker':<8} {'shards':>6} {'metrics':>8} {'ticks':>5} {'median s':>9} "
          f"{'p95 s':>7} {'max s':>7} {'lag s':>6} {'CPU %':>6} {'CPU s/s':>7} "
          f"{'RSS MiB':>8} {'peak MiB':>8}")  # fmt: skip
    worst = need = 0.0
    for token, name in sorted(tokens.items(), key=lambda x: x[1]):
        med, p95, mx, count = summary(ticks.get(token, {}))
        worst = max(worst, mx)
        rss, peak = rss_mb(procs[name].pid)
        info = live.get(token, {})
        lag = time.time() - int(info.get("judged_to") or 0)
        judged = int(info.get("judged_to") or 0) - judged_from.get(token, 0)
        per_second = cpu[name] * wall / judged if judged > 0 else float("nan")
        need = max(need, per_second)
        print(f"{name:<8} {info.get('shards', 0):>6} {info.get('metrics', 0):>8,} {count:>5} "
              f"{med:>9.3f} {p95:>7.3f} {mx:>7.3f} {lag:>6.1f} {cpu[name] * 100:>6.0f} "
              f"{per_second:>7.3f} {rss:>8,.0f} {peak:>8,.0f}")  # fmt: skip
    print("CPU s/s: CPU seconds each worker spent per second of data it judged (what a tick "
          "takes with a core to itself)")  # fmt: skip
    print(f"traffic process CPU {cpu['traffic'] * 100:.0f} %, redis-server CPU "
          f"{cpu['redis'] * 100:.0f} %, all CPUs {os.cpu_count()} x 100 %; load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"Redis used_memory {mem['used_memory'] / 2**20:,.0f} MiB; snapshots "
          f"{snap_bytes / 2**20:,.0f} MiB ({snap_bytes / n:,.0f} B per metric with a full "
          f"3-day ring, {sizes['young_b']:,.0f} B with 40 minutes learnt)")  # fmt: skip
    print(f"judged by exactly one worker: {len(judges - {None}) == w and None not in judges} "
          f"(statuses written by the lease holder: {judged_by:,} of {n:,}); status ok: "
          f"{ok:,} of {n:,}; incidents opened: {opened}")  # fmt: skip

    # -- takeover ---------------------------------------------------------------------
    victim_token = next(t for t, name in tokens.items() if name == "worker0")
    victim = procs["worker0"]
    lost = [s for s, h in enumerate(holders) if h == victim_token]
    lost_metrics = sum(1 for m in names if shard_of(m) in set(lost))
    recorder = Recorder(store)
    killed_wall = time.time()
    killed = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    survivors = [t for t in tokens if t != victim_token]

    def leases_moved() -> bool:
        now = store.shard_holders(SHARDS)
        return all(now[s] in survivors for s in lost)

    def taken_on() -> bool:
        live = infos(store)
        return sum(int(live.get(t, {}).get("metrics", 0)) for t in survivors) == n

    def judged_again() -> bool:
        live = infos(store)
        return taken_on() and all(
            int(live.get(t, {}).get("judged_to") or 0) >= killed_wall for t in survivors
        )

    wait(leases_moved, 120, "the killed worker's shards to be taken")
    leases_s = time.monotonic() - killed
    wait(taken_on, 180, "every metric to be taken on")
    taken_s = time.monotonic() - killed
    lag_then = killed_wall + taken_s - min(
        int(i.get("judged_to") or 0) for t, i in infos(store).items() if t in survivors
    )
    gains = [infos(store).get(t, {}).get("gained") for t in survivors]
    wait(judged_again, 180, "every metric to be judged past the kill")
    judged_s = time.monotonic() - killed
    time.sleep(args.after)
    after = recorder.stop()
    print(f"\nSIGKILL of worker0 ({len(lost)} shards, {lost_metrics:,} metrics): leases "
          f"taken after {leases_s:.1f} s; every metric taken on (restored, caught up to "
          f"where its new worker was, joined) after {taken_s:.1f} s, the survivors then "
          f"{lag_then:.0f} s behind the clock; every metric judged past the second of the "
          f"kill after {judged_s:.1f} s")  # fmt: skip
    print(f"taking on [metrics, seconds] per survivor: {gains}")
    worst_after = 0.0
    live = infos(store)
    for token in survivors:
        name = tokens[token]
        med, p95, mx, count = summary(after.get(token, {}))
        worst_after = max(worst_after, mx)
        rss, peak = rss_mb(procs[name].pid)
        print(f"{name:<8} {live.get(token, {}).get('metrics', 0):>8,} metrics, ticks since "
              f"the kill: median {med:.3f} s, p95 {p95:.3f} s, max {mx:.3f} s; "
              f"RSS {rss:,.0f} MiB, peak {peak:,.0f} MiB")  # fmt: skip
    states = store.get_states(names)
    opened_after = sum(1 for st in states if st.get("incident_id"))
    wrong = unexplained(store, names, states, blobs, t0)
    print(f"incidents opened: {opened_after}, of which {opened_after - len(wrong)} a lone "
          f"detector opens at the same second on the same counts (the traffic's own dips)"
          + (f"; not: {', '.join(wrong)}" if wrong else ""))  # fmt: skip
    durations = _traffic_durations(procs["traffic"], out)

    print("\ngoals:")
    failed = False
    for ok_, text in (
        (worst <= TICK_GOAL_S, f"every tick <= {TICK_GOAL_S:.0f} s with {w} workers "
         f"(worst {worst:.2f} s)"),
        (taken_s <= TAKEOVER_GOAL_S, f"metrics of the killed worker taken on within "
         f"{TAKEOVER_GOAL_S:.0f} s ({taken_s:.1f} s; judged past the kill after "
         f"{judged_s:.1f} s)"),
        (need <= TICK_GOAL_S, f"CPU per judged second <= {TICK_GOAL_S:.0f} s for every "
         f"worker (worst {need:.2f} s)"),
        (len(judges - {None}) == w and judged_by == n, "each metric judged by exactly one "
         "worker"),
        (not wrong, f"no incident opened that a lone detector would not open ({len(wrong)} "
         f"of {opened_after})"),
    ):  # fmt: skip
        failed |= not ok_
        print(f"  {'PASS' if ok_ else 'FAIL'}  {text}")
    if durations:
        times, seconds = durations
        span = seconds[-1] - seconds[0] + 1
        print(f"traffic: write of one second of {n:,} counts, median "
              f"{statistics.median(times):.3f} s, max {max(times):.3f} s; wrote "
              f"{len(seconds):,} of the {span:,} seconds it ran (a slow write skips "
              f"seconds: no data)")  # fmt: skip
    if args.smoke:
        print("smoke run: figures are not meaningful; goals not enforced")
        return 0
    print("all goals met" if not failed else "SOME GOALS FAILED")
    return 1 if failed else 0


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _caught_up(store: Store) -> bool:
    now = time.time()
    return all(int(i.get("judged_to") or 0) >= now - 3 for i in infos(store).values())


def _snapshot_bytes(client: redis.Redis, store: Store, names: list[str]) -> int:
    total = 0
    for lo in range(0, len(names), 10_000):
        pipe = client.pipeline(transaction=False)
        for m in names[lo : lo + 10_000]:
            pipe.strlen(store.keys.detector(m))
        total += sum(pipe.execute())
    return total


def _traffic_durations(proc: subprocess.Popen[bytes], out: Path) -> list[list[Any]]:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return json.loads(out.read_text()) if out.exists() else []


if __name__ == "__main__":
    sys.exit(main())
