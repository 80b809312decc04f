"""Helpers the deployment tests share: app processes, steady emitters, a worker on rules
without notifiers, and the Redis connection count."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import redis

import cliffwatch
from cliffwatch.alerting.alert import Alert
from cliffwatch.alerting.worker import Worker
from cliffwatch.errors import CliffwatchError
from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import RuleSet, parse_rules

RATE = 50.0  # events/s of normal traffic
HISTORY_MINUTES = 40  # written before the worker starts...
WARMUP_MINUTES = 30  # ...so it judges at once

APP = textwrap.dedent("""
    import sys, threading, time
    import cliffwatch
    url, prefix, threads, metrics = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    cliffwatch.configure(url, prefix=prefix)
    names = [f"app.m{i:03d}" for i in range(metrics)]
    end = time.time() + 2.5  # at least two flushes
    def work(k):
        i = k
        while time.time() < end:
            cliffwatch.emit(names[i % len(names)])
            i += threads
            if i % 50 == 0:
                time.sleep(0.001)
    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool: t.start()
    for t in pool: t.join()
    print("ready", flush=True)
    sys.stdin.read()  # hold the connection until the test has counted it
    cliffwatch.shutdown()
""")


def rules(metrics: Iterable[str]) -> RuleSet:
    """One paging rule per metric, no Slack or PagerDuty (alerts are collected)."""
    text = "".join(f'[[rule]]\nmetric = "{m}"\n\n' for m in metrics)
    return parse_rules(text, "<test rules>", env={})


def worker(store: Store, metrics: list[str], alerts: list[Alert],
           clock: Callable[[], float] = time.time) -> Worker:
    """A started worker acting alone (no leader), alerts appended to ``alerts``."""
    w = Worker(store, rules(metrics), notifiers={}, clock=clock,
               warmup_minutes=WARMUP_MINUTES, on_alert=alerts.append)
    w.start()
    return w


def prefill(store: Store, metrics: list[str], end: int, seed: int = 0) -> None:
    """``HISTORY_MINUTES`` of Poisson traffic at ``RATE`` before epoch second ``end``."""
    rng = np.random.default_rng(seed)
    start = end - HISTORY_MINUTES * 60
    for first in range(start, end, 600):
        seconds = range(first, min(first + 600, end))
        store.write_counts({s: {m: int(rng.poisson(RATE)) for m in metrics} for s in seconds})


class Steady:
    """Emits each metric at ``RATE`` events/s from one thread, in the real time of
    the app side, until stopped; counts what it emitted."""

    def __init__(self, metrics: list[str]) -> None:
        self.metrics = metrics
        self.emitted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-emitter", daemon=True)

    def _run(self) -> None:
        tick = 1.0 / RATE
        next_at = time.monotonic()
        while not self._stop.is_set():
            for m in self.metrics:
                cliffwatch.emit(m)
                self.emitted += 1
            next_at += tick
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Steady:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class Ticking:
    """Ticks a worker on the real clock from a thread, as ``run()`` would; a tick that
    fails because Redis is away is counted and tried again."""

    def __init__(self, w: Worker) -> None:
        self.worker = w
        self.ticks = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticking-worker", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.worker.tick()
                self.ticks += 1
            except CliffwatchError:
                self.failed += 1
            self._stop.wait(0.25)

    def __enter__(self) -> Ticking:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def total_in_redis(store: Store, metrics: list[str], start: int, end: int) -> int:
    """Events stored for ``metrics`` in epoch seconds ``[start, end)``."""
    return int(np.nansum(store.read_counts(metrics, start, end)))


def connected_clients(port: int) -> int:
    """``connected_clients`` of ``INFO clients`` on one server (the asking one included)."""
    c = redis.Redis(port=port)
    try:
        return int(c.info("clients")["connected_clients"])
    finally:
        c.close()


class Apps:
    """``count`` app processes, each ``configure()`` + several threads emitting many
    metrics; held open until :meth:`finish` so their connections can be counted."""

    def __init__(self, url: str, prefix: str, count: int, threads: int, metrics: int,
                 workdir: Path) -> None:
        script = workdir / "app.py"
        script.write_text(APP)
        self.procs = [
            subprocess.Popen([sys.executable, str(script), url, prefix, str(threads),
                              str(metrics)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(count)
        ]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline()  # blocks until the app printed or died
            assert line.strip() == "ready", f"app process {p.pid} failed (exit {p.poll()})"
            assert time.monotonic() < deadline, "app processes took too long"

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for pipe in (p.stdin, p.stdout):
                if pipe is not None and not pipe.closed:
                    pipe.close()
