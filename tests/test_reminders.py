"""Reminders of an incident still firing: the rules' ``reminder`` setting, and the worker
on a fake clock re-notifying Slack (never PagerDuty) in the incident's thread, across a
restart."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from conftest import FakeClock
from httpstub import PAGERDUTY_PATH, Recorder
from test_worker import METRIC, POST, RATE, ROUTING_KEY, TOKEN, Shop, deliveries

from cliffwatch.alerting.worker import Worker
from cliffwatch.errors import RulesError
from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import (
    DEFAULT_REMINDER_S,
    PAGERDUTY_ROUTING_KEY_ENV,
    SLACK_TOKEN_ENV,
    RuleSet,
    parse_rules,
)

RULE = '[[rule]]\nmetric = "orders.created"\n'


@pytest.fixture
def stub() -> Iterator[Recorder]:
    with Recorder() as recorder:
        yield recorder


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[Store]:
    """A store over the test Redis, under this test's prefix."""
    s = Store.from_url(redis_url, prefix=prefix)
    yield s
    s.close()


def with_reminder(value: str) -> RuleSet:
    return parse_rules(f"[defaults]\nreminder = {value}\n\n{RULE}", "r.toml", env={})


def test_the_reminder_setting_is_a_duration_or_zero() -> None:
    """`[defaults] reminder` takes a duration ("2m", "1h30m"), "0" or 0 turns reminders
    off, absent means every 30 minutes, and anything else fails naming file and line."""
    assert parse_rules(RULE, "r.toml", env={}).reminder_s == DEFAULT_REMINDER_S == 1800
    assert with_reminder('"2m"').reminder_s == 120
    assert with_reminder('"1h30m"').reminder_s == 5400
    assert with_reminder('"0"').reminder_s == 0
    assert with_reminder("0").reminder_s == 0
    for bad in ('"soon"', '"30s"', "30", "true", '"-5m"'):
        with pytest.raises(RulesError, match=r"^r\.toml:2: 'reminder' must be"):
            with_reminder(bad)
    with pytest.raises(RulesError, match=r"^r\.toml:3: key 'reminder' belongs in \[defaults\]"):
        parse_rules(f'{RULE}reminder = "5m"\n', "r.toml", env={})


def reminder_rules(stub: Recorder, every: str) -> RuleSet:
    """One paging rule reminding every ``every``; Slack and PagerDuty at ``stub``."""
    text = f"""
[defaults]
reminder = "{every}"

[[rule]]
metric = "{METRIC}"

[slack]
channel = "#oncall"
base_url = "{stub.slack_api_url}"

[pagerduty]
url = "{stub.pagerduty_url}"
"""
    return parse_rules(text, "<reminder rules>",
                       env={SLACK_TOKEN_ENV: TOKEN, PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})


def started_worker(shop: Shop, stub: Recorder, every: str) -> Worker:
    w = Worker(shop.store, reminder_rules(stub, every), clock=shop.clock,
               warmup_minutes=30, on_alert=shop.alerts.append)
    w.start()
    return w


def test_a_long_incident_reminds_slack_in_its_thread_and_never_pages_again(
    store: Store, clock: FakeClock, stub: Recorder, redis_url: str
) -> None:
    """An outage still firing reminds Slack every `reminder` as a reply in the alert's
    thread ("still down: ... for N min"), never PagerDuty; a restarted worker keeps the
    rhythm (the last reminder is in the state hash); the resolve ends the reminders."""
    shop = Shop(store, clock)
    shop.prefill()
    worker = started_worker(shop, stub, "2m")
    shop.run(worker, 60, RATE)
    shop.run(worker, 250, 0)  # fires at once, then reminds at +2 and +4 min
    [(state, fired_at)] = shop.states()
    assert state == "firing"
    assert deliveries(stub) == ["pagerduty trigger", "slack post", "slack reply", "slack reply"]
    post, *replies = stub.requests_to(POST)
    assert post.data.get("thread_ts") is None
    firing_ts = store.get_state(METRIC)["slack_ts"]
    for n, reply in enumerate(replies, start=1):
        assert reply.data["thread_ts"] == firing_ts
        assert not reply.data.get("reply_broadcast")
        said = re.search(r"still down: ([\d.]+)/s vs ([\d.]+)/s normal, for (\d+) min",
                         reply.data["text"])
        assert said, reply.data["text"]
        assert float(said[1]) < float(said[2]) / 4 and int(said[3]) == 2 * n
    assert int(store.get_state(METRIC)["reminded_at"]) == fired_at + 240

    worker.close()
    restarted_store = Store.from_url(redis_url, prefix=store.prefix)
    try:
        shop.store = restarted_store
        second = started_worker(shop, stub, "2m")
        shop.run(second, 60, 0)  # +5 min: the next reminder is due at +6, not now
        assert len(stub.requests_to(POST)) == 3
        shop.run(second, 60, 0)
        assert len(stub.requests_to(POST)) == 4
        assert "for 6 min" in stub.requests_to(POST)[-1].data["text"]
        shop.run(second, 300, RATE)
    finally:
        restarted_store.close()
    assert [s for s, _ in shop.states()] == ["firing", "resolved"]
    assert deliveries(stub) == ["pagerduty trigger", "slack post"] + ["slack reply"] * 3 + [
        "pagerduty resolve", "slack update", "slack reply"]
    assert [r.json["event_action"] for r in stub.requests_to(PAGERDUTY_PATH)] == [
        "trigger", "resolve"]


def test_reminder_zero_sends_none(store: Store, clock: FakeClock, stub: Recorder) -> None:
    """With `reminder = "0"` a long incident is paged once and nothing more is sent."""
    shop = Shop(store, clock)
    shop.prefill()
    worker = started_worker(shop, stub, "0")
    shop.run(worker, 60, RATE)
    shop.run(worker, 400, 0)
    assert deliveries(stub) == ["pagerduty trigger", "slack post"]
