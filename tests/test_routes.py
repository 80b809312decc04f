"""Where each incident goes: a rule's own Slack channel and PagerDuty service, with the
runbook/dashboard links and the per-minute picture, against the Slack and PagerDuty
stand-ins and a real Redis, the worker on a fake clock."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from conftest import FakeClock
from httpstub import PAGERDUTY_PATH, Recorder, slack_channel_id
from test_worker import RATE, ROUTING_KEY, TOKEN, WARMUP_MINUTES

from cliffwatch.alerting.alert import Alert
from cliffwatch.alerting.worker import Worker, build_notifiers
from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import PAGERDUTY_ROUTING_KEY_ENV, SLACK_TOKEN_ENV, RuleSet, parse_rules

POST, UPDATE = "/api/chat.postMessage", "/api/chat.update"
ORDERS, PAYMENTS = "orders.created", "payments.captured"
ORDERS_KEY, PAYMENTS_KEY = "0RDERSkey0123456789abcdef0123456", "PAYMENTSkey0123456789abcdef01234"


class Traffic:
    """Several metrics' traffic, written a second at a time as apps' flushers would,
    the worker ticking after each second on the same fake clock."""

    def __init__(self, store: Store, clock: FakeClock, metrics: list[str], seed: int = 0) -> None:
        self.store, self.clock, self.metrics = store, clock, metrics
        self.rng = np.random.default_rng(seed)
        self.rates = dict.fromkeys(metrics, RATE)
        self.alerts: list[Alert] = []

    @property
    def second(self) -> int:
        return int(self.clock.now)

    def prefill(self, minutes: int = 40) -> None:
        start = self.second - minutes * 60
        self.store.write_counts({
            start + k: {m: int(self.rng.poisson(RATE)) for m in self.metrics}
            for k in range(minutes * 60)
        })

    def worker(self, rules: RuleSet, **options: Any) -> Worker:
        w = Worker(self.store, rules, clock=self.clock, warmup_minutes=WARMUP_MINUTES,
                   on_alert=self.alerts.append, **options)
        w.start()
        return w

    def run(self, worker: Worker, seconds: int, **rates: float) -> None:
        """``seconds`` of traffic (``rates`` by metric with dots as underscores; the
        others keep theirs), the worker ticking after each."""
        for name, rate in rates.items():
            self.rates[name.replace("_", ".")] = rate
        for _ in range(seconds):
            self.store.write_counts({self.second: {
                m: int(self.rng.poisson(r)) for m, r in self.rates.items()}})
            self.clock.advance(1.0)
            worker.tick()

    def states(self, metric: str) -> list[str]:
        return [a.state for a in self.alerts if a.metric == metric]


ROUTED = """
[[rule]]
metric = "orders.created"
slack_channel = "#orders"
pagerduty = "orders"
runbook = "https://wiki.example.com/orders"

[[rule]]
metric = "payments.*"
slack_channel = "#payments"
pagerduty = "payments"
dashboard = "https://grafana.example.com/d/payments"

[slack]
channel = "#oncall"
base_url = "{slack}"

[pagerduty]
url = "{pagerduty}"
runbook = "https://wiki.example.com/everything"

[pagerduty.services]
orders = {{routing_key_env = "PD_ORDERS_KEY"}}
payments = {{routing_key_env = "PD_PAYMENTS_KEY", source = "payments-prod"}}
"""


def routed_rules(stub: Recorder) -> RuleSet:
    text = ROUTED.format(slack=stub.slack_api_url, pagerduty=stub.pagerduty_url)
    env = {SLACK_TOKEN_ENV: TOKEN, PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY,
           "PD_ORDERS_KEY": ORDERS_KEY, "PD_PAYMENTS_KEY": PAYMENTS_KEY}
    return parse_rules(text, "<routed rules>", env=env)


def slack_channel(request: Any) -> str:
    return slack_channel_id(str(request.data["channel"]))


def test_build_notifiers_makes_one_per_channel_and_service(stub: Recorder) -> None:
    """The defaults keep their names; each rule channel and each service with a key
    gets its own notifier (so its own outbox consumer group)."""
    names = sorted(build_notifiers(routed_rules(stub)))
    assert names == ["pagerduty", "pagerduty:orders", "pagerduty:payments", "slack",
                     "slack:#orders", "slack:#payments"]


def test_two_rules_go_to_their_own_channel_and_service_only(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """Orders and payments fall at once: each PagerDuty service (routing key) gets only
    its own rule's trigger and resolve, with that rule's links; each Slack channel gets
    only its own message, updated in place on the resolve and drawn with the last
    minutes; the default channel and service get nothing."""
    traffic = Traffic(store, clock, [ORDERS, PAYMENTS])
    traffic.prefill()
    worker = traffic.worker(routed_rules(stub))
    traffic.run(worker, 60)
    assert stub.requests == []
    traffic.run(worker, 120, orders_created=0, payments_captured=0)
    traffic.run(worker, 300, orders_created=RATE, payments_captured=RATE)
    assert traffic.states(ORDERS) == traffic.states(PAYMENTS) == ["firing", "resolved"]

    events = [r.json for r in stub.requests_to(PAGERDUTY_PATH)]
    by_key = {k: [(e["event_action"], e.get("payload", {}).get("component"))
                  for e in events if e["routing_key"] == k]
              for k in (ORDERS_KEY, PAYMENTS_KEY, ROUTING_KEY)}
    assert by_key == {
        ORDERS_KEY: [("trigger", ORDERS), ("resolve", None)],
        PAYMENTS_KEY: [("trigger", PAYMENTS), ("resolve", None)],
        ROUTING_KEY: [],
    }
    triggers = {e["payload"]["component"]: e for e in events if e["event_action"] == "trigger"}
    assert triggers[ORDERS]["links"] == [
        {"href": "https://wiki.example.com/orders", "text": "Runbook"}]
    assert triggers[PAYMENTS]["links"] == [
        {"href": "https://wiki.example.com/everything", "text": "Runbook"},
        {"href": "https://grafana.example.com/d/payments", "text": "Dashboard"}]
    assert triggers[PAYMENTS]["payload"]["source"] == "payments-prod"

    posts = [r for r in stub.requests_to(POST) if not r.data.get("thread_ts")]
    assert sorted((slack_channel(r), r.data["text"].split("`")[1]) for r in posts) == sorted(
        [(slack_channel_id("#orders"), ORDERS), (slack_channel_id("#payments"), PAYMENTS)])
    updates = stub.requests_to(UPDATE)
    assert sorted((slack_channel(r), r.data["text"].split("`")[1]) for r in updates) == sorted(
        [(slack_channel_id("#orders"), ORDERS), (slack_channel_id("#payments"), PAYMENTS)])
    slack_requests = [r for r in stub.requests if r.path.startswith("/api/")]
    assert slack_channel_id("#oncall") not in {slack_channel(r) for r in slack_requests}
    for request in posts:
        blocks = request.data["blocks"]
        blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
        drawn = json.dumps(blocks, ensure_ascii=False)
        assert "*Last 30 min*, events/s per minute" in drawn and "▁" in drawn and "█" in drawn
    st = store.get_state(PAYMENTS)
    assert st["channels"] == "pagerduty:payments,slack:#payments"
    assert st["pending"] == ""


def test_a_failing_channel_holds_back_only_itself(
    store: Store, clock: FakeClock, stub: Recorder, cliffwatch_errors: list[Any]
) -> None:
    """While #payments cannot be reached, #orders and both pagers are delivered; the
    payments message is retried and then sent once (the sent flag is its dedup)."""
    rules = routed_rules(stub)
    notifiers = build_notifiers(rules)
    with Recorder() as down:
        down.fail_next(1000, 500)
        from cliffwatch.alerting.notifiers import SlackNotifier

        notifiers["slack:#payments"] = SlackNotifier(
            token=TOKEN, channel="#payments", base_url=down.slack_api_url, attempts=1)
        traffic = Traffic(store, clock, [ORDERS, PAYMENTS])
        traffic.prefill()
        worker = traffic.worker(rules, notifiers=notifiers)
        traffic.run(worker, 60)
        traffic.run(worker, 30, orders_created=0, payments_captured=0)
        assert [slack_channel(r) for r in stub.requests_to(POST)] == [slack_channel_id("#orders")]
        assert len(stub.requests_to(PAGERDUTY_PATH)) == 2
        assert len(down.requests_to(POST)) >= 2  # tried again after its backoff
        assert store.get_state(PAYMENTS)["pending"] == "firing"
    notifiers["slack:#payments"] = SlackNotifier(
        token=TOKEN, channel="#payments", base_url=stub.slack_api_url)
    worker.incidents.outbox.use(notifiers)
    traffic.run(worker, 90)
    payments = [r for r in stub.requests_to(POST) if slack_channel(r) ==
                slack_channel_id("#payments")]
    assert len(payments) == 1
    assert store.get_state(PAYMENTS)["pending"] == ""
    assert len(stub.requests_to(POST)) == 2
