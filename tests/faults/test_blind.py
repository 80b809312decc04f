"""Monitoring blind: when every app process stops flushing, the worker raises one
``notify`` alert (Slack only) and resolves it when data returns — and never pages the
business metric for the silence. A worker on a fake clock, real Redis, a local HTTP
stand-in for Slack and PagerDuty."""

from __future__ import annotations

import numpy as np
from conftest import FakeClock
from httpstub import PAGERDUTY_PATH, Recorder

from cliffwatch.alerting.alert import Alert
from cliffwatch.alerting.blind import BLIND_AFTER_S, BLIND_METRIC
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
