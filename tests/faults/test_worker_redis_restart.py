"""The worker through a Redis restart: a real ``cliffwatch worker`` process and an app
process on a throwaway ``redis-server`` that is stopped for about 5 s and started again
empty, while the app keeps selling at a steady rate."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from httpstub import Recorder
from procs import CLIFFWATCH, Processes, stub_rules
from test_e2e import APP, METRIC, RATE, prefill
from test_leader import _environment

from cliffwatch.alerting.alert import Alert
from cliffwatch.alerting.notifiers import PagerDutyNotifier
from cliffwatch.alerting.outbox import Outbox
from cliffwatch.errors import CliffwatchError
from cliffwatch.metrics.store import Store

if TYPE_CHECKING:
    from conftest import RedisServer

OUTAGE_S = 5.0
RECOVERY_LIMIT_S = 10.0  # status is published every 5 s, the first tick within 1.1 s


def _quietly(read: Callable[[], object]) -> object:
    """``read()``, or None while Redis does not answer (the client reconnects)."""
    try:
        return read()
    except CliffwatchError:
        return None


@pytest.mark.timeout(180)
def test_the_worker_rides_out_a_redis_restart_and_pages_nothing(
    tmp_path: Path,
    redis_server: RedisServer,
    prefix: str,
    processes: Processes,
    wait_for: Callable[..., None],
) -> None:
    """Redis stopped ~5 s and started empty under a running worker and a steadily
    selling app: the worker logs one-line errors, never exits, ticks and publishes
    status again within 10 s on its own, the app's buffered seconds arrive, and
    nothing is paged."""
    assert CLIFFWATCH.exists(), f"the console script {CLIFFWATCH} is not installed"
    redis_server.start()
    url = redis_server.url
    store = Store.from_url(url, prefix=prefix)
    try:
        with Recorder() as stub:
            rules = tmp_path / "rules.toml"
            rules.write_text(stub_rules(METRIC, stub.slack_api_url, stub.pagerduty_url))
            app_script = tmp_path / "app.py"
            app_script.write_text(APP)
            prefill(store)
            worker = processes.start(
                "worker",
                [
                    str(CLIFFWATCH),
                    "-v",
                    "worker",
                    "--rules",
                    str(rules),
                    "--redis-url",
                    url,
                    "--prefix",
                    prefix,
                    "--warmup",
                    "30",
                ],
                _environment(),
            )
            app = processes.start(
                "app",
                [sys.executable, str(app_script), url, prefix],
                _environment(),
                stdin=subprocess.PIPE,
            )
            wait_for(
                lambda: store.get_state(METRIC).get("status") == "ok",
                timeout=30,
                what="the worker to judge the traffic normal",
            )
            wait_for(
                lambda: str(app.pid) in str(store.emitters()), timeout=10, what="the app to flush"
            )
            worker_log = tmp_path / "worker.log"
            before = len(worker_log.read_text())

            stop_called = time.time()
            redis_server.stop()
            stopped_at = time.time()
            wait_for(
                lambda: "tick failed" in worker_log.read_text()[before:],
                timeout=5,
                what="the worker to log the outage",
            )
            time.sleep(max(0.0, OUTAGE_S - (time.time() - stopped_at)))  # the outage itself
            start_called = time.time()
            redis_server.start()  # empty: nothing was saved
            back_at = time.monotonic()
            back_epoch = time.time()

            wait_for(
                lambda: _quietly(lambda: store.heartbeat()[0]) is not None,
                timeout=RECOVERY_LIMIT_S + 5,
                what="the worker to tick again",
            )
            ticking_s = time.monotonic() - back_at
            wait_for(
                lambda: _quietly(lambda: store.get_state(METRIC).get("status_at")),
                timeout=RECOVERY_LIMIT_S + 5,
                what="the worker to publish status again",
            )
            status_s = time.monotonic() - back_at
            # judged well past the outage, the app's late seconds included
            judged_past = math.ceil(back_epoch) + 15
            wait_for(
                lambda: int(store.get_state(METRIC).get("status_at", 0)) >= judged_past,
                timeout=40,
                what="the worker to judge 15 s past the restart",
            )

            assert worker.poll() is None, processes.log("worker")
            assert app.poll() is None, processes.log("app")
            # Seconds that closed while Redis was down were buffered by the app, then
            # delivered: each holds about RATE events.
            first, last = math.ceil(stopped_at), math.floor(start_called)
            outage = store.read_counts([METRIC], first, last)[0]
            assert len(outage) >= 3 and all(0 < c < 3 * RATE for c in outage), outage
            st = store.get_state(METRIC)
            assert st.get("status") == "ok", st
            assert st.get("state", "ok") != "firing", st
            assert stub.requests == [], [r.path for r in stub.requests]

            assert app.stdin is not None
            app.stdin.write("quit\n")
            app.stdin.flush()
            assert app.wait(timeout=10) == 0, processes.log("app")
            worker.terminate()
            assert worker.wait(timeout=10) == 0, processes.log("worker")
    finally:
        store.close()

    during = worker_log.read_text()[before:]
    errors = [line for line in during.splitlines() if " ERROR " in line]
    assert errors and "Traceback" not in during, during
    for line in during.splitlines():  # every log line is one line of its own
        assert line[:4].isdigit() or not line.strip(), f"a continuation line: {line!r}"
    print(
        f"\nRedis down {start_called - stop_called:.1f} s; worker ticking "
        f"{ticking_s:.2f} s and status published {status_s:.2f} s after Redis was back; "
        f"outage seconds delivered by the app: {outage.astype(int).tolist()}; "
        f"{len(errors)} error lines, e.g.\n"
        + "\n".join(dict.fromkeys(line.split(": ", 1)[-1] for line in errors))
    )
    assert ticking_s <= RECOVERY_LIMIT_S and status_s <= RECOVERY_LIMIT_S


@pytest.mark.timeout(90)
def test_a_page_decided_after_redis_restarted_empty_is_delivered(
    redis_server: RedisServer,
    prefix: str,
    wait_for: Callable[..., None],
) -> None:
    """Redis restarted empty loses the outbox's consumer groups: the delivery channel
    makes its group again (from the stream's start) and delivers a page appended after
    the restart, before the channel noticed; nothing is lost."""
    redis_server.start()
    store = Store.from_url(redis_server.url, prefix=prefix)
    with Recorder() as stub:
        outbox = Outbox(
            store, {"pagerduty": PagerDutyNotifier(routing_key="R" * 32, url=stub.pagerduty_url)}
        )
        try:
            outbox.start()
            outbox.append(_page("before"), ["pagerduty"])
            stub.wait_for(lambda rs: len(rs) == 1, timeout=10)
            redis_server.stop()
            wait_for(
                lambda: outbox.channels["pagerduty"].retry_at > time.time(),
                timeout=10,
                what="the channel to fail and back off",
            )
            redis_server.start()  # empty: no stream, no groups
            wait_for(
                lambda: _quietly(lambda: outbox.append(_page("after"), ["pagerduty"])),
                timeout=10,
                what="the page to be appended",
            )
            stub.wait_for(lambda rs: len(rs) == 2, timeout=40)
            assert [r.json["dedup_key"] for r in stub.requests] == [
                "cliffwatch/orders.created/1800000000",
                "cliffwatch/orders.created/1800000060",
            ]
        finally:
            outbox.stop()
            store.close()


def _page(which: str) -> Alert:
    started = 1_800_000_000 if which == "before" else 1_800_000_060
    return Alert(
        metric=METRIC,
        state="firing",
        at=started,
        severity="page",
        score=-6.0,
        rate=0.0,
        baseline=50.0,
        incident_id=f"{METRIC}/{started}",
        started_at=started,
        threshold=-3.0,
    )
