"""End to end: an app process emitting through ``@event``, the real ``cliffwatch worker``
process, a real Redis, and Slack and PagerDuty stood in for by a local HTTP server."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from httpstub import PAGERDUTY_PATH, Recorder, Request, slack_channel_id
from procs import CLIFFWATCH, Processes
from procs import environment as _environment

from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import PAGERDUTY_ROUTING_KEY_ENV, SLACK_TOKEN_ENV

METRIC = "orders.created"
RATE = 50.0  # events/s
HISTORY_MINUTES = 40
WARMUP_MINUTES = 30
TOKEN = "xoxb-0000-2222-endtoendtoken"
ROUTING_KEY = "E2EtestROUTINGkey0123456789abcde"
POST, UPDATE = "/api/chat.postMessage", "/api/chat.update"

# The app: counts METRIC through @event at about RATE/s (Poisson arrivals) until told on
# stdin to "pause" (its flusher keeps writing zeros: the business stopped, not the app),
# "resume" or "quit".
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

    def shop() -> None:
        arrivals = random.Random(7)
        due = time.time()
        while True:
            selling.wait()
            now = time.time()
            due = max(due, now - 0.5)  # after a pause, start afresh
            due += arrivals.expovariate({RATE})
            if due > now:
                time.sleep(due - now)
            if selling.is_set():
                place_order()

    selling.set()
    threading.Thread(target=shop, daemon=True).start()
    for line in sys.stdin:
        command = line.strip()
        if command == "pause":
            selling.clear()
        elif command == "resume":
            selling.set()
        elif command == "quit":
            break
    cliffwatch.shutdown()
""")


def prefill(store: Store) -> None:
    """HISTORY_MINUTES of Poisson traffic at RATE, ending just before the current second,
    so the worker has enough to judge the metric at once."""
    end = int(time.time())
    counts = np.random.default_rng(11).poisson(RATE, HISTORY_MINUTES * 60).tolist()
    start = end - len(counts)
    store.write_counts({start + k: {METRIC: c} for k, c in enumerate(counts)})


def labels(requests: list[Request]) -> list[str]:
    out = []
    for r in requests:
        if r.path == PAGERDUTY_PATH:
            out.append(f"pagerduty {r.json['event_action']}")
        elif r.path == POST:
            out.append("slack reply" if r.data.get("thread_ts") else "slack post")
        elif r.path == UPDATE:
            out.append("slack update")
        else:
            out.append(f"unexpected {r.method} {r.path}")
    return out


def has(*wanted: str) -> Callable[[list[Request]], bool]:
    return lambda requests: all(w in labels(requests) for w in wanted)


def test_an_outage_in_a_running_app_pages_once_and_resolves_once(
    tmp_path: Path, redis_url: str, prefix: str, store: Store, stub: Recorder,
    processes: Processes, wait_for: Callable[..., None],
) -> None:
    """A running app stops selling: the worker process pages PagerDuty and Slack once,
    within seconds; sales resume: it resolves that incident once; nothing else is sent;
    SIGTERM stops the worker promptly with exit status 0."""
    assert CLIFFWATCH.exists(), f"the console script {CLIFFWATCH} is not installed"
    rules = tmp_path / "rules.toml"
    rules.write_text(textwrap.dedent(f"""
        [[rule]]
        metric = "{METRIC}"

        [slack]
        channel = "#oncall"
        base_url = "{stub.slack_api_url}"

        [pagerduty]
        url = "{stub.pagerduty_url}"
        source = "e2e-shop"
    """))
    app_script = tmp_path / "app.py"
    app_script.write_text(APP)

    prefill(store)
    worker = processes.start(
        "worker",
        [str(CLIFFWATCH), "worker", "--rules", str(rules), "--redis-url", redis_url,
         "--prefix", prefix, "--warmup", str(WARMUP_MINUTES)],
        _environment(**{SLACK_TOKEN_ENV: TOKEN, PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY}))
    app = processes.start("app", [sys.executable, str(app_script), redis_url, prefix],
                          _environment(), stdin=subprocess.PIPE)
    assert app.stdin is not None

    def command(word: str) -> None:
        assert app.poll() is None, processes.log("app")
        assert app.stdin is not None
        app.stdin.write(word + "\n")
        app.stdin.flush()

    # The app flushes, and the worker has judged several of its seconds as normal.
    wait_for(lambda: store.emitters(), timeout=15, what="the app's first flush")
    selling_from = time.time()

    def judged_normal() -> bool:
        assert worker.poll() is None, processes.log("worker")
        st = store.get_state(METRIC)
        return st.get("status") == "ok" and int(st.get("status_at", 0)) >= selling_from + 4

    wait_for(judged_normal, timeout=20, what="the worker to judge the app's traffic")
    assert stub.requests == [], labels(stub.requests)

    # The business stops (the app keeps running and flushing zeros): one page.
    command("pause")
    paused_at = time.monotonic()
    stub.wait_for(has("pagerduty trigger", "slack post"), timeout=20)
    assert time.monotonic() - paused_at < 10, "paging took too long"
    assert labels(stub.requests) == ["pagerduty trigger", "slack post"]

    # Sales resume: the same incident resolves.
    command("resume")
    stub.wait_for(has("pagerduty resolve", "slack reply"), timeout=60)

    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.wait(timeout=10) == 0, processes.log("worker")
    assert time.monotonic() - signalled < 5, "the worker took too long to stop"
    command("quit")
    assert app.wait(timeout=10) == 0, processes.log("app")

    # Everything sent, now that the worker has exited: one incident, opened and closed.
    sent = stub.requests
    assert labels(sent) == ["pagerduty trigger", "slack post",
                            "pagerduty resolve", "slack update", "slack reply"]
    trigger, resolve = (r.json for r in stub.requests_to(PAGERDUTY_PATH))
    assert trigger["routing_key"] == resolve["routing_key"] == ROUTING_KEY
    assert trigger["dedup_key"] == resolve["dedup_key"]
    assert trigger["payload"]["source"] == "e2e-shop"
    assert trigger["payload"]["severity"] == "critical"
    assert METRIC in trigger["payload"]["summary"]
    post, reply = stub.requests_to(POST)
    [update] = stub.requests_to(UPDATE)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in (post, update, reply))
    assert post.data["channel"] == "#oncall"
    assert update.data["channel"] == reply.data["channel"] == slack_channel_id("#oncall")
    assert reply.data["thread_ts"] == update.data["ts"]
    assert store.get_state(METRIC)["state"] == "ok"
    assert store.get_state(METRIC)["pending"] == ""
