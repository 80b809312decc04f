"""Rules files and the running worker: nothing pages from a rules file that failed to
load. The worker refuses to start on a broken file, naming the problem; SIGHUP reloads
the file — a good one takes effect (a new metric is watched), a broken one keeps the old
rules and says why in one line. Real worker processes on the test Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cliffwatch.metrics.store import Store

CLIFFWATCH = Path(sys.executable).parent / "cliffwatch"
OLD, NEW = "orders.created", "signups.completed"
BROKEN = f'[[rule]]\nmetric = "{OLD}"\nthreshold = "steep"\n'


def rules_text(*metrics: str) -> str:
    return "".join(f'[[rule]]\nmetric = "{m}"\n\n' for m in metrics)


class WorkerProcess:
    """``cliffwatch -v worker`` as a process; its stderr collected line by line."""

    def __init__(self, rules: Path, redis_url: str, prefix: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIFFWATCH_")}
        self.process = subprocess.Popen(
            [str(CLIFFWATCH), "-v", "worker", "--rules", str(rules), "--redis-url", redis_url,
             "--prefix", prefix],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="worker-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def matching(self, text: str) -> list[str]:
        return [line for line in list(self.lines) if text in line]

    def alive(self) -> bool:
        assert self.process.poll() is None, "worker exited:\n" + "\n".join(self.lines)
        return True

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[Store]:
    s = Store.from_url(redis_url, prefix=prefix)
    now = int(time.time())
    s.write_counts({now - 60 + k: {OLD: 5, NEW: 3} for k in range(60)})
    yield s
    s.close()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def watched(store: Store, metric: str, since: float) -> bool:
    """The worker has written ``metric``'s status at or after ``since``."""
    return int(store.get_state(metric).get("status_at") or 0) >= int(since)


def test_the_worker_refuses_to_start_on_a_broken_rules_file(
    tmp_path: Path, redis_url: str, prefix: str, store: Store
) -> None:
    """`worker --rules` with a broken file exits 1 at once with one line FILE:LINE: why,
    and writes nothing to Redis (nothing can page)."""
    rules = tmp_path / "rules.toml"
    rules.write_text(BROKEN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIFFWATCH_")}
    done = subprocess.run(
        [str(CLIFFWATCH), "worker", "--rules", str(rules), "--redis-url", redis_url,
         "--prefix", prefix], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"Error: {rules}:3: 'threshold' must be a number, got \"steep\""]
    assert store.get_state(OLD) == {}


def test_sighup_with_a_good_file_watches_the_new_metric(
    tmp_path: Path, redis_url: str, prefix: str, store: Store,
    workers: list[WorkerProcess], wait_for: Callable[..., None],
) -> None:
    """A rules file that gains a metric, then SIGHUP: the worker watches the new metric
    too, keeps the old one, and logs that it reloaded."""
    rules = tmp_path / "rules.toml"
    rules.write_text(rules_text(OLD))
    w = WorkerProcess(rules, redis_url, prefix)
    workers.append(w)
    started = time.time()
    wait_for(lambda: w.alive() and watched(store, OLD, started), timeout=20,
             what="the worker to watch the first metric")
    assert store.get_state(NEW) == {}

    rules.write_text(rules_text(OLD, NEW))
    reloaded_at = time.time()
    os.kill(w.process.pid, signal.SIGHUP)
    wait_for(lambda: w.alive() and w.matching("rules reloaded"), timeout=10,
             what="the worker to log the reload")
    wait_for(lambda: watched(store, NEW, reloaded_at) and watched(store, OLD, reloaded_at),
             timeout=20, what="the worker to watch both metrics")
    assert w.stop() == 0


def test_sighup_with_a_broken_file_keeps_the_old_rules_and_says_why(
    tmp_path: Path, redis_url: str, prefix: str, store: Store,
    workers: list[WorkerProcess], wait_for: Callable[..., None],
) -> None:
    """A rules file broken while the worker runs, then SIGHUP: one log line says the
    reload failed, naming file, line and reason; the worker keeps judging with the old
    rules; once the file is fixed, the next SIGHUP takes it."""
    rules = tmp_path / "rules.toml"
    rules.write_text(rules_text(OLD))
    w = WorkerProcess(rules, redis_url, prefix)
    workers.append(w)
    started = time.time()
    wait_for(lambda: w.alive() and watched(store, OLD, started), timeout=20,
             what="the worker to watch the first metric")

    rules.write_text(BROKEN)
    os.kill(w.process.pid, signal.SIGHUP)
    wait_for(lambda: w.alive() and w.matching("rules reload failed"), timeout=10,
             what="the worker to log the failed reload")
    [line] = w.matching("rules reload failed")
    assert f"keeping the old rules: {rules}:3: 'threshold' must be a number" in line
    after = time.time()
    wait_for(lambda: w.alive() and watched(store, OLD, after + 1), timeout=20,
             what="the worker to go on judging with the old rules")
    assert w.matching("Traceback") == []

    rules.write_text(rules_text(OLD, NEW))
    fixed_at = time.time()
    os.kill(w.process.pid, signal.SIGHUP)
    wait_for(lambda: w.alive() and watched(store, NEW, fixed_at), timeout=20,
             what="the fixed file to take effect")
    assert len(w.matching("rules reload failed")) == 1
    assert w.stop() == 0
