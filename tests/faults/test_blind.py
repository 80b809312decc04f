"""Monitoring blind: when every app process stops flushing, the worker raises one
``notify`` alert (Slack only) and resolves it when data returns — and never pages the
business metric for the silence. A worker on a fake clock, real Redis, a local HTTP
stand-in for Slack and PagerDuty."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeClock
from httpstub import PAGERDUTY_PATH, Recorder
from procs import CLIFFWATCH, Processes

from cliffwatch.alerting.alert import Alert, no_data_incident
from cliffwatch.alerting.blind import BLIND_AFTER_S, BLIND_METRIC, NO_DATA_MEMORY_S
from cliffwatch.alerting.silences import Silences
from cliffwatch.alerting.status import collect
from cliffwatch.alerting.worker import Worker
from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import (
    PAGERDUTY_ROUTING_KEY_ENV,
    SLACK_TOKEN_ENV,
    RuleSet,
    parse_rules,
)

METRIC = "orders.created"
RATE = 50.0
HISTORY_MINUTES = 40
WARMUP_MINUTES = 30
EMITTERS = ("web-1:101", "web-2:202")
POST, UPDATE = "/api/chat.postMessage", "/api/chat.update"


def rules_for(stub: Recorder) -> RuleSet:
    text = f"""
[[rule]]
metric = "{METRIC}"

[slack]
channel = "#oncall"
base_url = "{stub.slack_api_url}"

[pagerduty]
url = "{stub.pagerduty_url}"
"""
    return parse_rules(text, "<blind rules>", env={
        SLACK_TOKEN_ENV: "xoxb-blind-token", PAGERDUTY_ROUTING_KEY_ENV: "B" * 32})


class Apps:
    """Two app processes flushing ``METRIC`` a second at a time (their heartbeat too), on
    the worker's fake clock."""

    def __init__(self, store: Store, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.rng = np.random.default_rng(3)
        self.alerts: list[Alert] = []

    def prefill(self) -> None:
        start = int(self.clock.now) - HISTORY_MINUTES * 60
        counts = self.rng.poisson(RATE, HISTORY_MINUTES * 60).tolist()
        self.store.write_counts({start + k: {METRIC: c} for k, c in enumerate(counts)})
        for emitter in EMITTERS:
            self.store.write_counts({}, emitter, now=int(self.clock.now) - 1)

    def worker(self, stub: Recorder) -> Worker:
        w = Worker(self.store, rules_for(stub), clock=self.clock,
                   warmup_minutes=WARMUP_MINUTES, on_alert=self.alerts.append)
        w.start()
        return w

    def run(self, worker: Worker, seconds: int, *, flushing: bool) -> None:
        """``seconds`` of normal traffic (``flushing``) or of silence from every app (no
        counts, no heartbeat), the worker ticking after each."""
        for _ in range(seconds):
            if flushing:
                second = int(self.clock.now)
                half = int(self.rng.poisson(RATE / 2))
                for emitter in EMITTERS:
                    self.store.write_counts({second: {METRIC: half}}, emitter, now=second)
            self.clock.advance(1.0)
            worker.tick()


def slack_texts(stub: Recorder) -> list[str]:
    return [str(r.data.get("text")) for r in stub.requests if r.path in (POST, UPDATE)]


def test_silent_apps_raise_one_blind_notice_on_slack_and_never_page(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """Every app stops flushing for 3 minutes: Slack gets one "monitoring blind" message
    about 10 s in, PagerDuty nothing, the business metric no incident; when the apps
    flush again the notice resolves (the same Slack message), still no page."""
    apps = Apps(store, clock)
    apps.prefill()
    worker = apps.worker(stub)
    apps.run(worker, 30, flushing=True)
    assert stub.requests == []

    silent_from = int(clock.now)
    apps.run(worker, BLIND_AFTER_S - 2, flushing=False)
    assert stub.requests == [], "blind too early"
    apps.run(worker, 180, flushing=False)
    [post] = stub.requests_to(POST)
    assert BLIND_METRIC in post.data["text"] and "NOTIFY" in post.data["text"]
    assert stub.requests_to(PAGERDUTY_PATH) == []
    [fired] = apps.alerts
    assert (fired.metric, fired.state, fired.severity) == (BLIND_METRIC, "firing", "notify")
    assert fired.at - silent_from <= BLIND_AFTER_S + 3
    assert store.get_state(METRIC).get("state") != "firing"

    apps.run(worker, 60, flushing=True)
    assert [(a.metric, a.state) for a in apps.alerts] == [
        (BLIND_METRIC, "firing"), (BLIND_METRIC, "resolved")]
    assert [r.path for r in stub.requests] == [POST, UPDATE, POST]  # post, update, reply
    assert "RESOLVED" in slack_texts(stub)[1]
    assert stub.requests_to(PAGERDUTY_PATH) == []
    assert store.get_state(METRIC).get("state") != "firing"
    assert store.get_state(BLIND_METRIC)["state"] == "ok"


def test_a_restarted_worker_does_not_announce_blindness_twice(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """A worker restarted while blind neither posts the notice again nor forgets it:
    the new worker resolves it once the apps are back."""
    apps = Apps(store, clock)
    apps.prefill()
    worker = apps.worker(stub)
    apps.run(worker, 20, flushing=True)
    apps.run(worker, 30, flushing=False)
    assert len(stub.requests_to(POST)) == 1
    worker.close()

    again = apps.worker(stub)
    apps.run(again, 30, flushing=False)
    assert len(stub.requests_to(POST)) == 1
    apps.run(again, 20, flushing=True)
    assert [(a.metric, a.state) for a in apps.alerts] == [
        (BLIND_METRIC, "firing"), (BLIND_METRIC, "resolved")]
    assert stub.requests_to(PAGERDUTY_PATH) == []


def test_data_without_any_known_emitter_is_never_blind(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """A store no app has ever recorded a flush in (counts written by a backfill, say)
    has nothing to lose sight of: gaps raise no blind notice."""
    apps = Apps(store, clock)
    start = int(clock.now) - HISTORY_MINUTES * 60
    store.write_counts({start + k: {METRIC: 50} for k in range(HISTORY_MINUTES * 60)})
    worker = apps.worker(stub)
    apps.run(worker, 60, flushing=False)
    assert store.emitters() == {}
    assert apps.alerts == [] and stub.requests == []


def test_the_business_stopping_while_apps_flush_pages_and_is_not_blind(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """Apps that keep flushing zeros (the business stopped, not the apps) get a page for
    the metric and no blind notice."""
    apps = Apps(store, clock)
    apps.prefill()
    worker = apps.worker(stub)
    apps.run(worker, 20, flushing=True)
    for _ in range(60):
        second = int(clock.now)
        for emitter in EMITTERS:
            store.write_counts({second: {METRIC: 0}}, emitter, now=second)
        clock.advance(1.0)
        worker.tick()
    assert [(a.metric, a.state) for a in apps.alerts] == [(METRIC, "firing")]
    assert len(stub.requests_to(PAGERDUTY_PATH)) == 1
    assert store.get_state(BLIND_METRIC) == {}


# -- one metric's apps go silent while others flush: "no data" ---------------------------

OTHER = "signups.completed"
APP_A, APP_B = "web-1:101", "api-1:303"  # A sends METRIC, B sends OTHER


def fleet_rules(stub: Recorder, *metrics: str, reminder: str = "30m") -> RuleSet:
    rules = f'[defaults]\nreminder = "{reminder}"\n\n'
    rules += "".join(f'[[rule]]\nmetric = "{m}"\n\n' for m in metrics)
    return parse_rules(rules + f"""
[slack]
channel = "#oncall"
base_url = "{stub.slack_api_url}"

[pagerduty]
url = "{stub.pagerduty_url}"
""", "<no data rules>", env={
        SLACK_TOKEN_ENV: "xoxb-blind-token", PAGERDUTY_ROUTING_KEY_ENV: "B" * 32})


class Fleet:
    """App A flushing ``METRIC`` and app B flushing ``OTHER``, each a second at a time
    with its heartbeat, on the worker's fake clock; ``run`` says which of them flush."""

    def __init__(self, store: Store, clock: FakeClock, *extra: str, reminder: str = "30m"
                 ) -> None:
        self.store = store
        self.reminder = reminder
        self.clock = clock
        self.metrics = (METRIC, OTHER, *extra)
        self.rng = np.random.default_rng(4)
        self.alerts: list[Alert] = []

    def prefill(self) -> None:
        start = int(self.clock.now) - HISTORY_MINUTES * 60
        for metric in (METRIC, OTHER):
            counts = self.rng.poisson(RATE, HISTORY_MINUTES * 60).tolist()
            self.store.write_counts({start + k: {metric: c} for k, c in enumerate(counts)})
        for emitter in (APP_A, APP_B):
            self.store.write_counts({}, emitter, now=int(self.clock.now) - 1)

    def worker(self, stub: Recorder) -> Worker:
        rules = fleet_rules(stub, *self.metrics, reminder=self.reminder)
        w = Worker(self.store, rules, clock=self.clock,
                   warmup_minutes=WARMUP_MINUTES, on_alert=self.alerts.append)
        w.start()
        return w

    def run(self, worker: Worker, seconds: int, *, a: bool, b: bool = True) -> None:
        for _ in range(seconds):
            second = int(self.clock.now)
            for flushing, emitter, metric in ((a, APP_A, METRIC), (b, APP_B, OTHER)):
                if flushing:
                    count = int(self.rng.poisson(RATE))
                    self.store.write_counts({second: {metric: count}}, emitter, now=second)
            self.clock.advance(1.0)
            worker.tick()

    def seen(self) -> list[tuple[str, str, str]]:
        return [(a.metric, a.state, a.severity) for a in self.alerts]


NO_DATA = no_data_incident(METRIC)


def test_a_metric_whose_apps_stop_gets_one_no_data_notice_and_no_page(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """App A (the only one sending orders) stops for 2 minutes while app B keeps
    flushing sign-ups: Slack gets one "no data" notice for orders about 10 s in,
    PagerDuty nothing, orders no incident, sign-ups nothing; `status` says "no data"
    for orders; when A flushes again the notice resolves (the same Slack message)."""
    fleet = Fleet(store, clock)
    fleet.prefill()
    worker = fleet.worker(stub)
    fleet.run(worker, 30, a=True)
    assert stub.requests == []

    silent_from = int(clock.now)
    fleet.run(worker, BLIND_AFTER_S - 2, a=False)
    assert stub.requests == [], "no data announced too early"
    fleet.run(worker, 120, a=False)
    assert fleet.seen() == [(NO_DATA, "firing", "notify")]
    [fired] = fleet.alerts
    assert fired.no_data_of == METRIC
    assert BLIND_AFTER_S <= fired.at - silent_from <= BLIND_AFTER_S + 3
    [post] = stub.requests_to(POST)
    text = post.data["text"]
    assert f"`{METRIC}`: no data for " in text and "not paged" in text, text
    assert "stopped reporting (other apps still flush)" in text and "NOTIFY" in text
    assert OTHER not in text and BLIND_METRIC not in text
    assert stub.requests_to(PAGERDUTY_PATH) == []
    assert store.get_state(METRIC).get("state") != "firing"
    assert store.get_state(OTHER).get("state") != "firing"
    assert store.get_state(BLIND_METRIC) == {}

    rows = {m.metric: m for m in collect(store, clock.now).metrics}
    assert rows[METRIC].status == "no data"
    assert rows[METRIC].no_data_since == fired.started_at
    assert rows[OTHER].status == "ok" and rows[OTHER].no_data_since is None
    shown = json.loads(json.dumps(collect(store, clock.now).to_json()))
    [orders] = [m for m in shown["metrics"] if m["metric"] == METRIC]
    assert (orders["status"], orders["no_data_since"]) == ("no data", fired.started_at)

    back_at = int(clock.now)
    fleet.run(worker, 3, a=True)
    assert fleet.seen() == [(NO_DATA, "firing", "notify"), (NO_DATA, "resolved", "notify")]
    assert fleet.alerts[1].at - back_at <= 2
    assert [r.path for r in stub.requests] == [POST, UPDATE, POST]  # post, update, reply
    resolved = slack_texts(stub)[1]
    assert "RESOLVED" in resolved and f"`{METRIC}` has data again after 2 min" in resolved
    assert stub.requests_to(PAGERDUTY_PATH) == []
    fleet.run(worker, 60, a=True)
    assert len(fleet.alerts) == 2 and len(stub.requests) == 3
    assert store.get_state(NO_DATA)["state"] == "ok"
    assert store.get_state(METRIC).get("state") != "firing"
    worker.write_status(worker.detector.next_second or 0)
    rows = {m.metric: m for m in collect(store, clock.now).metrics}
    assert rows[METRIC].status == "ok" and rows[METRIC].no_data_since is None


def test_a_restarted_worker_neither_announces_no_data_twice_nor_forgets_it(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """A worker restarted while a metric has no data posts nothing again, and the new
    worker resolves the notice once the metric's app is back."""
    fleet = Fleet(store, clock)
    fleet.prefill()
    worker = fleet.worker(stub)
    fleet.run(worker, 20, a=True)
    fleet.run(worker, 30, a=False)
    assert len(stub.requests_to(POST)) == 1
    worker.close()

    again = fleet.worker(stub)
    fleet.run(again, 40, a=False)
    assert len(stub.requests_to(POST)) == 1
    fleet.run(again, 5, a=True)
    assert fleet.seen() == [(NO_DATA, "firing", "notify"), (NO_DATA, "resolved", "notify")]
    assert [r.path for r in stub.requests] == [POST, UPDATE, POST]
    assert stub.requests_to(PAGERDUTY_PATH) == []


def test_metrics_without_recent_data_are_not_announced(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """A watched metric that never had data, and one whose data stopped more than an
    hour ago, raise no "no data" notice while the other apps flush."""
    never, long_gone = "refunds.issued", "coupons.redeemed"
    fleet = Fleet(store, clock, never, long_gone)
    fleet.prefill()
    old = int(clock.now) - NO_DATA_MEMORY_S - 15 * 60
    store.write_counts({old + k: {long_gone: 5} for k in range(10 * 60)})
    worker = fleet.worker(stub)
    assert worker.detector.last_data[worker.metrics.index(long_gone)] >= old
    fleet.run(worker, 90, a=True)
    assert fleet.alerts == [] and stub.requests == []


def test_all_apps_silent_is_one_blind_notice_and_no_data_only_for_the_apps_still_away(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """App A stops, app B 3 s later: one "monitoring blind" notice, no per-metric one.
    B comes back alone: blind resolves, and orders (A still away) gets its "no data"
    notice about 10 s later; A comes back: that resolves too. Never a page."""
    fleet = Fleet(store, clock)
    fleet.prefill()
    worker = fleet.worker(stub)
    fleet.run(worker, 30, a=True)
    fleet.run(worker, 3, a=False)
    fleet.run(worker, 90, a=False, b=False)
    assert fleet.seen() == [(BLIND_METRIC, "firing", "notify")]

    b_back = int(clock.now)
    fleet.run(worker, BLIND_AFTER_S - 2, a=False)
    assert fleet.seen() == [(BLIND_METRIC, "firing", "notify"),
                            (BLIND_METRIC, "resolved", "notify")]
    fleet.run(worker, 20, a=False)
    assert fleet.seen()[2:] == [(NO_DATA, "firing", "notify")]
    assert BLIND_AFTER_S <= fleet.alerts[2].at - b_back <= BLIND_AFTER_S + 3
    fleet.run(worker, 5, a=True)
    assert fleet.seen()[3:] == [(NO_DATA, "resolved", "notify")]
    assert stub.requests_to(PAGERDUTY_PATH) == []
    assert all(store.get_state(m).get("state") != "firing" for m in (METRIC, OTHER))


def test_a_silence_on_the_metric_silences_its_no_data_notice(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """With orders silenced, its "no data" incident is recorded but sent nowhere, and
    its resolve is not sent either."""
    fleet = Fleet(store, clock)
    fleet.prefill()
    worker = fleet.worker(stub)
    Silences(store, clock=clock).add("orders.*", 3600, "maintenance", "ops")
    fleet.run(worker, 20, a=True)
    fleet.run(worker, 30, a=False)
    assert fleet.seen() == [(NO_DATA, "firing", "notify")]
    assert store.get_state(NO_DATA)["silenced"] == "1"
    fleet.run(worker, 5, a=True)
    assert fleet.seen()[1:] == [(NO_DATA, "resolved", "notify")]
    assert stub.requests == []


def test_a_lasting_no_data_is_reminded_in_its_thread_and_a_restart_keeps_the_rhythm(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """With `reminder = "1m"`, a metric still without data is reminded in the notice's
    Slack thread about once a minute ("still no data, for 1 min"), never on the pager;
    a restarted worker keeps the rhythm; the resolve ends the reminders."""
    fleet = Fleet(store, clock, reminder="1m")
    fleet.prefill()
    worker = fleet.worker(stub)
    fleet.run(worker, 20, a=True)
    fleet.run(worker, 10 + 150, a=False)  # the notice, then 2.5 minutes
    post, *reminders = stub.requests
    assert [r.path for r in reminders] == [POST, POST]
    assert all(r.data["thread_ts"] == reminders[0].data["thread_ts"] for r in reminders)
    texts = [str(r.data["text"]) for r in reminders]
    assert f"`{METRIC}` still no data, for 1 min (normally" in texts[0], texts
    assert "still no data, for 2 min" in texts[1]
    worker.close()

    again = fleet.worker(stub)
    fleet.run(again, 40, a=False)  # the third reminder is due 3 min after the notice
    assert len(stub.requests_to(POST)) == 4
    fleet.run(again, 5, a=True)
    fleet.run(again, 120, a=True)
    assert [r.path for r in stub.requests[4:]] == [UPDATE, POST]  # the resolve only
    assert stub.requests_to(PAGERDUTY_PATH) == []


# -- real processes: two apps, the worker, SIGKILL one app --------------------------------


# An app: counts one metric through @event at about RATE/s (Poisson arrivals) until it
# is killed; with "wait", only once a line arrives on stdin (so it is loaded beforehand,
# and its start does not hold up the other app on a busy machine).
SELLER = """
import random
import sys
import time

import cliffwatch

url, prefix, metric, rate = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
if sys.argv[5:] == ["wait"]:
    sys.stdin.readline()
cliffwatch.configure(url, prefix=prefix)
happened = cliffwatch.event(metric)(lambda: None)
arrivals = random.Random(metric)
due = time.time()
while True:
    due = max(due, time.time() - 0.5) + arrivals.expovariate(rate)
    time.sleep(max(0.0, due - time.time()))
    happened()
"""


@pytest.mark.timeout(180)
def test_a_killed_app_is_no_data_on_slack_once_never_a_page_and_resolves_when_back(
    tmp_path: Path, redis_url: str, prefix: str, store: Store, stub: Recorder,
    processes: Processes, wait_for: Callable[..., None],
) -> None:
    """Two app processes flush to one Redis, A counting orders and B sign-ups, watched
    by a `cliffwatch worker` process. SIGKILL A while B goes on: Slack gets exactly one
    "no data" notice for orders, PagerDuty nothing, orders no incident, sign-ups no
    alert at all. Start A again: the notice resolves, once."""
    assert CLIFFWATCH.exists(), f"the console script {CLIFFWATCH} is not installed"
    rules = tmp_path / "rules.toml"
    # threshold -10: on a busy machine an app process can stall for a second or two, a
    # real dip to the detector; -10 still pages within about 4 s if missing data were
    # ever read as zero events, which is what this test guards against.
    rules.write_text(textwrap.dedent(f"""
        [[rule]]
        metric = "{METRIC}"
        threshold = -10

        [[rule]]
        metric = "{OTHER}"
        threshold = -10

        [slack]
        channel = "#oncall"
        base_url = "{stub.slack_api_url}"

        [pagerduty]
        url = "{stub.pagerduty_url}"
    """))
    seller = tmp_path / "seller.py"
    seller.write_text(SELLER)
    end = int(time.time())
    rng = np.random.default_rng(8)
    for metric in (METRIC, OTHER):
        counts = rng.poisson(RATE, HISTORY_MINUTES * 60).tolist()
        store.write_counts({end - len(counts) + k: {metric: c} for k, c in enumerate(counts)})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIFFWATCH_")}

    def app(name: str, metric: str, *wait: str) -> subprocess.Popen[str]:
        return processes.start(
            name, [sys.executable, str(seller), redis_url, prefix, metric, str(RATE), *wait],
            env, stdin=subprocess.PIPE if wait else None)

    a, b = app("app-a", METRIC), app("app-b", OTHER)
    a_again = app("app-a-again", METRIC, "wait")
    worker = processes.start(
        "worker",
        [str(CLIFFWATCH), "worker", "--rules", str(rules), "--redis-url", redis_url,
         "--prefix", prefix, "--warmup", str(WARMUP_MINUTES)],
        {**env, SLACK_TOKEN_ENV: "xoxb-0000-4444-blindtesttoken",
         PAGERDUTY_ROUTING_KEY_ENV: "BLINDtestROUTINGkey0123456789abc"})
    wait_for(lambda: len(store.emitters()) == 2, timeout=20, what="both apps to flush")
    flushing_from = time.time()

    def judged_normal(metric: str) -> bool:
        assert worker.poll() is None, processes.log("worker")
        st = store.get_state(metric)
        return st.get("status") == "ok" and int(st.get("status_at", 0)) >= flushing_from + 3

    wait_for(lambda: judged_normal(METRIC) and judged_normal(OTHER), timeout=30,
             what="the worker to judge both apps' traffic")
    assert stub.requests == []

    a.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    a.wait(timeout=10)
    [post] = stub.wait_for(lambda rs: len(rs) >= 1, timeout=30)
    notice_s = post.received_at - killed_at
    assert post.path == POST, (post.path, post.data, processes.log("worker"))
    text = post.data["text"]
    assert f"`{METRIC}`: no data for " in text, text
    assert "not paged" in text and OTHER not in text
    noticed = time.time()

    def judged_since_notice(seconds: float) -> bool:
        st = store.get_state(OTHER)
        return st.get("status") == "ok" and int(st["status_at"]) >= noticed + seconds

    # 15 more seconds judged with A away: still only the one notice, and sign-ups fine
    wait_for(lambda: judged_since_notice(15), timeout=30, what="the worker to judge on")
    assert [r.path for r in stub.requests] == [POST]
    assert store.get_state(no_data_incident(METRIC))["state"] == "firing"

    assert a_again.stdin is not None and a_again.poll() is None, processes.log("app-a-again")
    restarted_at = time.monotonic()
    a_again.stdin.write("go\n")
    a_again.stdin.flush()
    stub.wait_for(lambda rs: len(rs) >= 3, timeout=30)
    resolve_s = stub.requests[1].received_at - restarted_at
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0, processes.log("worker")
    print(f"\nno data: Slack notice {notice_s:.2f} s after SIGKILL of the app; "
          f"resolved {resolve_s:.2f} s after it was started again")

    assert [r.path for r in stub.requests] == [POST, UPDATE, POST], processes.log("worker")
    assert "RESOLVED" in slack_texts(stub)[1] and "has data again" in slack_texts(stub)[1]
    assert stub.requests_to(PAGERDUTY_PATH) == []
    for metric in (METRIC, OTHER):
        assert store.get_state(metric).get("state") != "firing"
    assert store.get_state(no_data_incident(OTHER)) == {}
    assert store.get_state(BLIND_METRIC) == {}
    # the silence starts at the top of the second A was killed in
    assert BLIND_AFTER_S - 1 <= notice_s <= BLIND_AFTER_S + 5, notice_s
    assert b.poll() is None
