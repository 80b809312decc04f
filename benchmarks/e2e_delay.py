"""End-to-end delay: an outage starts in a running app -> the Slack request is received.

Run from the repository root with the project's Python, against a real Redis::

    .venv/bin/python benchmarks/e2e_delay.py            # 10 outages, ~8 min; exit 1 on FAIL
    .venv/bin/python benchmarks/e2e_delay.py --smoke    # 1 outage, ~1 min; only checks it runs

What runs: the real ``cliffwatch worker`` process (``--warmup 30``, its history
pre-filled with 40 minutes of Poisson traffic at the app's rate), an app process
counting one metric through ``@event`` at about 50 events/s (Poisson arrivals), and a
local Slack stand-in (``tests/httpstub.py``) recording when each request arrives.

Each outage: at a random phase of a second the app stops emitting (its process and its
flusher keep running, so Redis gets zeros: the business stopped, not the app) and prints
the wall time T it stopped at; the delay is *Slack request received - T*. The app then
resumes and the benchmark waits for the resolve before the next outage. Goal: p50 <= 2 s,
p95 <= 3 s. Keys live under a unique prefix and are deleted at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import redis

from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import SLACK_TOKEN_ENV

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from httpstub import Recorder, Request  # noqa: E402

DEFAULT_URL = "redis://127.0.0.1:6379/0"
CLIFFWATCH = Path(sys.executable).parent / "cliffwatch"
METRIC = "orders.created"
RATE = 50.0  # events/s
HISTORY_MINUTES = 40
WARMUP_MINUTES = 30
TOKEN = "xoxb-0000-3333-benchmarktoken"
POST = "/api/chat.postMessage"
GOAL_P50_S, GOAL_P95_S = 2.0, 3.0

# The app: counts METRIC through @event at about RATE/s (Poisson arrivals). On stdin,
# "pause" stops selling and prints the wall time it stopped at; "resume"; "quit".
APP = textwrap.dedent(f"""
    import random
    import sys
    import threading
    import time

    import cliffwatch

    cliffwatch.configure(sys.argv[1], prefix=sys.argv[2])

    @cliffwatch.event({METRIC!r})
    def place_order() -> str:
        return "order"

    selling = threading.Event()
    lock = threading.Lock()  # a pause waits for an event being placed

    def shop() -> None:
        arrivals = random.Random()
        due = time.time()
        while True:
            selling.wait()
            now = time.time()
            due = max(due, now - 0.5)  # after a pause, start afresh
            due += arrivals.expovariate({RATE})
            if due > now:
                time.sleep(due - now)
            with lock:
                if selling.is_set():
                    place_order()

    selling.set()
    threading.Thread(target=shop, daemon=True).start()
    for line in sys.stdin:
        command = line.strip()
        if command == "pause":
            with lock:
                selling.clear()
                stopped = time.time()
            print(f"paused {{stopped:.6f}}", flush=True)
        elif command == "resume":
            selling.set()
        elif command == "quit":
            break
    cliffwatch.shutdown()
""")


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i : i + 1000])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms; raise ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def posts(stub: Recorder) -> list[Request]:
    """Slack messages that open an incident (chat.postMessage, not a thread reply)."""
    return [r for r in stub.requests_to(POST) if not r.data.get("thread_ts")]


def replies(stub: Recorder) -> list[Request]:
    """Slack thread replies (the resolve)."""
    return [r for r in stub.requests_to(POST) if r.data.get("thread_ts")]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation)."""
    return float(np.percentile(values, q))


class Run:
    """The stub, the worker and the app of one benchmark run."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir
        self.prefix = f"cliffwatch-bench-{uuid.uuid4().hex[:8]}:"
        self.client = redis.Redis.from_url(url)
        self.store = Store(self.client, prefix=self.prefix)
        self.stub = Recorder().start()
        self.logs: list[IO[str]] = []
        self.worker: subprocess.Popen[str] | None = None
        self.app: subprocess.Popen[str] | None = None
        # Recorder times are time.monotonic() in this process; app times are time.time()
        self.wall_minus_mono = time.time() - time.monotonic()

    def _log(self, name: str) -> IO[str]:
        log = open(self.workdir / f"{name}.log", "w")  # noqa: SIM115 (closed in close())
        self.logs.append(log)
        return log

    def log_tail(self, name: str) -> str:
        """The end of what process ``name`` printed."""
        return (self.workdir / f"{name}.log").read_text()[-3000:]

    def start(self) -> None:
        """Pre-fill the history, start the worker and the app."""
        rules = self.workdir / "rules.toml"
        rules.write_text(
            f'[[rule]]\nmetric = "{METRIC}"\n\n'
            f'[slack]\nchannel = "#oncall"\nbase_url = "{self.stub.slack_api_url}"\n'
        )
        app = self.workdir / "app.py"
        app.write_text(APP)
        end = int(time.time())
        counts = np.random.default_rng(11).poisson(RATE, HISTORY_MINUTES * 60).tolist()
        start = end - len(counts)
        self.store.write_counts({start + k: {METRIC: c} for k, c in enumerate(counts)})
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIFFWATCH_")}
        worker_cmd = [
            str(CLIFFWATCH), "worker", "--rules", str(rules), "--redis-url", self.url,
            "--prefix", self.prefix, "--warmup", str(WARMUP_MINUTES),
        ]  # fmt: skip
        self.worker = subprocess.Popen(
            worker_cmd,
            env={**env, SLACK_TOKEN_ENV: TOKEN},
            stdout=self._log("worker"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.app = subprocess.Popen(
            [sys.executable, str(app), self.url, self.prefix],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log("app"),
            text=True,
        )
        began = time.time()

        def judged_normal() -> bool:
            self.check_alive()
            state = self.store.get_state(METRIC)
            return state.get("status") == "ok" and int(state.get("status_at", 0)) >= began + 4

        wait_until(judged_normal, 30, "the worker to judge the app's traffic as normal")

    def check_alive(self) -> None:
        """Raise ``RuntimeError`` with its log if the worker or the app has exited."""
        for name, proc in (("worker", self.worker), ("app", self.app)):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the {name} exited:\n{self.log_tail(name)}")

    def command(self, word: str) -> None:
        """Send a command line to the app."""
        assert self.app is not None and self.app.stdin is not None
        self.check_alive()
        self.app.stdin.write(word + "\n")
        self.app.stdin.flush()

    def outage(self, resolve: bool) -> dict[str, float]:
        """One outage; return its timings (wall-clock epoch seconds)."""
        assert self.app is not None and self.app.stdout is not None
        before = len(posts(self.stub))
        time.sleep(random.uniform(0.0, 1.0))  # start at a random phase of the second
        self.command("pause")
        line = self.app.stdout.readline().split()
        if len(line) != 2 or line[0] != "paused":
            raise RuntimeError(f"unexpected answer from the app: {line!r}")
        stopped = float(line[1])
        wait_until(lambda: len(posts(self.stub)) > before, 30, "the Slack post")
        received = posts(self.stub)[before].received_at + self.wall_minus_mono
        state = self.store.get_state(METRIC)
        fired_second = int(state.get("started_at", 0))
        timings = {"stopped": stopped, "received": received, "fired_second": fired_second}
        replied = len(replies(self.stub))
        self.command("resume")
        if resolve:
            wait_until(lambda: len(replies(self.stub)) > replied, 120, "the resolve")
        return timings

    def close(self) -> None:
        """Stop the processes and the stub, delete the keys."""
        for proc in (self.app, self.worker):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        if self.app is not None:
            for stream in (self.app.stdin, self.app.stdout):
                if stream is not None:
                    stream.close()
        for log in self.logs:
            log.close()
        self.stub.close()
        delete_prefix(self.client, self.prefix)
        self.client.close()


def main(argv: list[str] | None = None) -> int:
    """Run the outages; return 1 if the goal is missed (0 with ``--smoke``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="1 outage; only checks it runs")
    parser.add_argument("--outages", type=int, default=10, help="outages to time (default 10)")
    parser.add_argument("--settle", type=float, default=10.0, help="s of normal traffic between")
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    args = parser.parse_args(argv)
    outages = 1 if args.smoke else args.outages
    if outages < 1:
        parser.error("--outages must be >= 1")
    with tempfile.TemporaryDirectory(prefix="cliffwatch-e2e-") as tmp:
        run = Run(args.redis_url, Path(tmp))
        try:
            run.start()
            print(
                f"{outages} outage(s) of {METRIC} at ~{RATE:.0f} events/s; "
                "times relative to T, the wall time the app stopped emitting:"
            )
            print(f"  {'#':>2} {'T mod 1':>8} {'fired on':>9} {'second end':>11} {'Slack':>7}")
            delays: list[float] = []
            lags: list[float] = []
            for i in range(outages):
                t = run.outage(resolve=i < outages - 1)
                stopped, received = t["stopped"], t["received"]
                fired_end = t["fired_second"] + 1  # the judged second that fired ended here
                delays.append(received - stopped)
                lags.append(received - fired_end)
                fired_on = f"T{int(t['fired_second']) - math.floor(stopped):+d}s"
                print(
                    f"  {i + 1:2d} {stopped % 1:8.2f} {fired_on:>9}"
                    f" {fired_end - stopped:+10.2f}s {received - stopped:6.2f}s"
                )
                if i < outages - 1:
                    time.sleep(args.settle)
        except Exception:
            for name in ("worker", "app"):
                print(f"--- {name} log ---\n{run.log_tail(name)}", file=sys.stderr)
            raise
        finally:
            run.close()
    p50, p95 = percentile(delays, 50), percentile(delays, 95)
    print(
        f"  'fired on': the second (floor(T) = T+0s) whose count made the detector fire; "
        f"'second end': when it ended;\n  'Slack': when the Slack request arrived. "
        f"Slack - second end: median {statistics.median(lags):.2f} s, max {max(lags):.2f} s"
    )
    ok = p50 <= GOAL_P50_S and p95 <= GOAL_P95_S
    print(
        f"  {'PASS' if ok else 'FAIL'}  outage -> Slack request: p50 {p50:.2f} s "
        f"(<= {GOAL_P50_S:.0f}), p95 {p95:.2f} s (<= {GOAL_P95_S:.0f}), n={len(delays)}"
    )
    if args.smoke:
        print("smoke run: figures are not meaningful; goal not enforced")
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
