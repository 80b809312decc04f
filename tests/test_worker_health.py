"""The worker's own health: its Prometheus /metrics endpoint (scraped over HTTP from a
worker ticking in-process), the one-line error without prometheus_client, and the
dead-man's switch as a follower sees it."""

from __future__ import annotations

import logging
import re
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FakeClock
from httpstub import Recorder
from test_worker import RATE, ROUTING_KEY, TOKEN, Shop, rules_for

from cliffwatch.alerting.cli import main
from cliffwatch.alerting.leader import Leader
from cliffwatch.alerting.notifiers import PagerDutyNotifier, SlackNotifier
from cliffwatch.alerting.selfmetrics import WorkerMetrics
from cliffwatch.alerting.worker import Worker
from cliffwatch.metrics.store import Store


def scrape(port: int) -> dict[str, float]:
    """GET /metrics; every sample as ``name{labels}`` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_endpoint_serves_the_workers_health(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """A worker with /metrics on a free port, after ticking through an outage, serves
    its tick durations, lag, metrics watched, alerts decided, deliveries by channel and
    outcome (a Slack failure included), and that it leads."""
    monitor = WorkerMetrics()
    port = monitor.serve(0, "127.0.0.1")
    try:
        shop = Shop(store, clock)
        shop.prefill()
        notifiers = {
            "pagerduty": PagerDutyNotifier(routing_key=ROUTING_KEY, url=stub.pagerduty_url),
            "slack": SlackNotifier(token=TOKEN, channel="#oncall", base_url=stub.slack_api_url,
                                   attempts=1),
        }
        worker = Worker(store, rules_for(stub), clock=clock, warmup_minutes=30,
                        on_alert=shop.alerts.append, monitor=monitor, notifiers=notifiers)
        worker.start()
        shop.run(worker, 30, RATE)
        stub.fail_next(1, 500, path="/api/chat.postMessage")
        shop.run(worker, 60, 0)
        samples = scrape(port)
    finally:
        monitor.close()
    assert [a.state for a in shop.alerts] == ["firing"]
    assert samples["cliffwatch_worker_tick_seconds_count"] == 90
    assert samples["cliffwatch_worker_tick_seconds_sum"] > 0
    assert 0 <= samples["cliffwatch_worker_lag_seconds"] <= 3
    assert samples["cliffwatch_worker_metrics_watched"] == 1
    assert samples["cliffwatch_worker_leader"] == 1
    assert samples['cliffwatch_worker_alerts_total{state="firing"}'] == 1
    deliveries = {k: v for k, v in samples.items()
                  if k.startswith("cliffwatch_worker_deliveries_total")}
    assert deliveries['cliffwatch_worker_deliveries_total{channel="pagerduty",outcome="sent"}'] == 1
    assert deliveries['cliffwatch_worker_deliveries_total{channel="slack",outcome="sent"}'] == 1
    assert deliveries['cliffwatch_worker_deliveries_total{channel="slack",outcome="failed"}'] == 1


def test_metrics_port_without_prometheus_client_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`worker --metrics-port` without prometheus_client installed exits 1 with one line
    naming the extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now fails
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nmetric = "orders.created"\n')
    result = CliRunner().invoke(
        main, ["worker", "--rules", str(rules), "--metrics-port", "0",
               "--redis-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert re.fullmatch(r"Error: .*needs prometheus_client: pip install 'cliffwatch\[metrics\]'",
                        line)


def test_a_follower_notices_when_no_leader_is_ticking(
    store: Store, clock: FakeClock, stub: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """A follower logs once that the heartbeat is gone (and never heard before), and
    once when a leader's heartbeat is back; the acting worker writes the heartbeat."""
    shop = Shop(store, clock)
    shop.prefill()
    follower = Worker(store, rules_for(stub), clock=clock, warmup_minutes=30,
                      leader=Leader(store))  # never started: it does not lead
    follower.start()
    with caplog.at_level(logging.WARNING, logger="cliffwatch.worker"):
        shop.run(follower, 3, RATE)
        assert [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()] == [
            "no heartbeat from a leader worker (never): nobody is ticking"]
        leader = shop.worker(stub)
        shop.run(leader, 1, RATE)
        assert store.heartbeat() == (clock.now, clock.now)
        follower.tick()
    said = [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()]
    assert said[1:] == ["the leader worker's heartbeat is back"]
