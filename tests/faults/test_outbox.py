"""The durable outbox: transitions survive a worker that dies before delivering, each
channel has its own progress and backoff, and refusals that cannot succeed are dropped."""

from __future__ import annotations

import logging
import time

from conftest import FakeClock
from httpstub import PAGERDUTY_PATH, Recorder
from test_worker import METRIC, POST, ROUTING_KEY, TOKEN, Shop, deliveries

from cliffwatch.alerting.incidents import Incidents, Route
from cliffwatch.alerting.notifiers import Notifier, PagerDutyNotifier, SlackNotifier
from cliffwatch.metrics.store import Store

AT = 1_800_000_000


def notifiers(stub: Recorder) -> dict[str, Notifier]:
    """PagerDuty and Slack at the stub, one attempt each (the outbox retries)."""
    return {
        "pagerduty": PagerDutyNotifier(routing_key=ROUTING_KEY, url=stub.pagerduty_url,
                                       attempts=1),
        "slack": SlackNotifier(token=TOKEN, channel="#oncall", base_url=stub.slack_api_url,
                               attempts=1),
    }


def fire(incidents: Incidents) -> None:
    incidents.fire(METRIC, AT, "page", -3.0, -6.0, 0.0, 50.0)


def unacked(store: Store, group: str) -> int:
    return int(store.client.xpending(store.keys.outbox, group)["pending"])


def test_a_worker_that_dies_before_delivering_is_delivered_by_the_next(
    store: Store, clock: FakeClock, stub: Recorder, redis_url: str
) -> None:
    """A worker decides a page while PagerDuty and Slack are down and is then closed;
    a new worker (new connection) delivers it on its first tick, to each exactly once."""
    stub.fail_next(1000, 503)
    shop = Shop(store, clock)
    shop.prefill()
    first = shop.worker(stub, notifiers=notifiers(stub))
    shop.run(first, 60, 50.0)
    for _ in range(10):
        shop.run(first, 1, 0)
        if shop.alerts:
            break
    assert [a.state for a in shop.alerts] == ["firing"]
    assert store.get_state(METRIC)["pending"] == "firing"
    first.close()
    stub.clear()  # the services are back

    again = Store.from_url(redis_url, prefix=store.prefix)
    try:
        shop.store = again
        second = shop.worker(stub, notifiers=notifiers(stub))
        shop.run(second, 30, 0)
    finally:
        again.close()
    assert deliveries(stub) == ["pagerduty trigger", "slack post"]
    st = store.get_state(METRIC)
    assert (st["pending"], st["sent:pagerduty:firing"], st["sent:slack:firing"]) == ("", "1", "1")
    assert unacked(store, "pagerduty") == unacked(store, "slack") == 0


def test_a_decision_that_never_reached_the_outbox_is_queued_by_the_next_worker(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """An incident written to the state hash but never appended to the outbox (the
    worker died in between) is found pending by the next worker and delivered once."""
    Incidents(store, Route({}), clock=clock).fire(METRIC, AT, "page", -3.0, -6.0, 0.0, 50.0)
    assert store.client.exists(store.keys.outbox) == 0
    assert store.get_state(METRIC)["pending"] == "firing"
    shop = Shop(store, clock)
    worker = shop.worker(stub, notifiers=notifiers(stub))
    worker.tick()
    worker.tick()
    assert deliveries(stub) == ["pagerduty trigger", "slack post"]
    assert store.get_state(METRIC)["pending"] == ""


def test_a_transition_queued_twice_reaches_each_notifier_once(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """An entry whose delivery is already recorded in the state hash (sent, then the
    worker died before acknowledging it) is acknowledged without being sent again."""
    incidents = Incidents(store, Route(notifiers(stub)), clock=clock)
    fire(incidents)
    incidents.retry_pending()
    incidents.outbox.requeue(incidents.undelivered([METRIC]))  # nothing is pending
    st = store.get_state(METRIC)
    alert = incidents._alert_from(METRIC, st, "firing")
    incidents.outbox.append(alert, ["pagerduty", "slack"])  # as if never acknowledged
    incidents.retry_pending()
    assert deliveries(stub) == ["pagerduty trigger", "slack post"]
    assert unacked(store, "pagerduty") == unacked(store, "slack") == 0


def test_a_slack_outage_does_not_delay_the_page(store: Store, stub: Recorder) -> None:
    """With Slack rate-limiting (429, Retry-After: 2), PagerDuty is paged at once from
    its own thread, and Slack is posted after waiting out the Retry-After."""
    stub.fail_next(1, 429, headers={"Retry-After": "2"}, path=POST)
    incidents = Incidents(store, Route(notifiers(stub)))
    incidents.outbox.start()
    try:
        fired = time.monotonic()
        fire(incidents)
        stub.wait_for(lambda rs: any(r.path == PAGERDUTY_PATH for r in rs))
        posts = stub.wait_for(lambda rs: sum(r.path == POST for r in rs) == 2, timeout=10)
    finally:
        incidents.outbox.stop()
    pd = stub.requests_to(PAGERDUTY_PATH)[0]
    assert pd.received_at - fired < 0.5
    limited, posted = (r for r in posts if r.path == POST)
    assert posted.received_at - limited.received_at >= 2.0
    assert pd.received_at < posted.received_at
    assert store.get_state(METRIC)["pending"] == ""


def test_a_pagerduty_400_is_dropped_with_an_error_and_not_retried(
    store: Store, clock: FakeClock, stub: Recorder, cliffwatch_errors: list[logging.LogRecord]
) -> None:
    """PagerDuty refusing the event (400) is logged as an error and dropped, never
    retried; Slack still gets the alert, and nothing stays pending."""
    stub.fail_next(1, 400, path=PAGERDUTY_PATH,
                   body={"status": "invalid event", "message": "Event object is invalid"})
    incidents = Incidents(store, Route(notifiers(stub)), clock=clock)
    fire(incidents)
    for _ in range(120):
        incidents.retry_pending()
        clock.advance(1)
    assert deliveries(stub) == ["pagerduty trigger", "slack post"]
    assert [r.name for r in cliffwatch_errors] == ["cliffwatch.outbox"]
    assert "HTTP 400" in cliffwatch_errors[0].getMessage()
    st = store.get_state(METRIC)
    assert (st["sent:pagerduty:firing"], st["pending"]) == ("dropped", "")
    assert unacked(store, "pagerduty") == 0


def test_a_failing_channel_backs_off_exponentially_up_to_a_minute_alone(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """PagerDuty answering 503 is retried after 2, 4, 8, 16, 32, then every 60 s, while
    Slack, unaffected, got its message at once and nothing else."""
    stub.fail_next(1000, 503, path=PAGERDUTY_PATH)
    incidents = Incidents(store, Route(notifiers(stub)), clock=clock)
    fire(incidents)
    tries: list[int] = []
    for second in range(400):
        before = len(stub.requests_to(PAGERDUTY_PATH))
        incidents.retry_pending()
        if len(stub.requests_to(PAGERDUTY_PATH)) > before:
            tries.append(second)
        clock.advance(1)
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps[:8] == [2, 4, 8, 16, 32, 60, 60, 60], tries
    assert len(stub.requests_to(POST)) == 1
    assert store.get_state(METRIC)["pending"] == "firing"
    assert unacked(store, "pagerduty") == 1 and unacked(store, "slack") == 0
