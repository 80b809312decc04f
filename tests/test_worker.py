"""The worker on simulated time: real Redis, Slack and PagerDuty stood in for by a local
HTTP server, and ``tick(now)`` driven one second at a time by a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from conftest import FakeClock
from httpstub import PAGERDUTY_PATH, Recorder

from cliffwatch.alerting import snapshots
from cliffwatch.alerting.alert import Alert
from cliffwatch.alerting.notifiers import PagerDutyNotifier, SlackNotifier
from cliffwatch.alerting.worker import (
    FULL_RESCAN_EVERY,
    RESCAN_EVERY_S,
    SNAPSHOT_SPREAD_S,
    Worker,
)
from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import (
    PAGERDUTY_ROUTING_KEY_ENV,
    SLACK_TOKEN_ENV,
    RuleSet,
    parse_rules,
)
from cliffwatch.rules.detector import LEND_S

METRIC = "orders.created"
RATE = 50.0  # events/s of normal traffic
HISTORY_MINUTES = 40  # written before the worker starts...
WARMUP_MINUTES = 30  # ...so it judges at once
TOKEN = "xoxb-0000-1111-workertesttoken"
ROUTING_KEY = "W0RKERtestROUTINGkey0123456789ab"
POST, UPDATE = "/api/chat.postMessage", "/api/chat.update"


def rules_for(stub: Recorder) -> RuleSet:
    """One paging rule; Slack (bot token) and PagerDuty both pointed at ``stub``."""
    text = f"""
[[rule]]
metric = "{METRIC}"

[slack]
channel = "#oncall"
base_url = "{stub.slack_api_url}"

[pagerduty]
url = "{stub.pagerduty_url}"
"""
    return parse_rules(text, "<test rules>",
                       env={SLACK_TOKEN_ENV: TOKEN, PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})


class Shop:
    """The metric's traffic, written to Redis a second at a time as an app's flusher
    would, with the worker ticking after each second on the same fake clock."""

    def __init__(self, store: Store, clock: FakeClock, seed: int = 0) -> None:
        self.store = store
        self.clock = clock
        self.rng = np.random.default_rng(seed)
        self.alerts: list[Alert] = []

    @property
    def second(self) -> int:
        return int(self.clock.now)

    def prefill(self, minutes: int = HISTORY_MINUTES) -> None:
        """Write ``minutes`` of normal traffic ending just before the current second."""
        start = self.second - minutes * 60
        counts = self.rng.poisson(RATE, minutes * 60).tolist()
        self.store.write_counts({start + k: {METRIC: c} for k, c in enumerate(counts)})

    def worker(self, stub: Recorder, **options: Any) -> Worker:
        """A started worker on this shop's store and clock, alerts collected."""
        w = Worker(self.store, rules_for(stub), clock=self.clock,
                   warmup_minutes=WARMUP_MINUTES, on_alert=self.alerts.append, **options)
        w.start()
        return w

    def run(self, worker: Worker, seconds: int, rate: float | None) -> None:
        """``seconds`` of traffic at ``rate`` events/s (``0``: zero events are written;
        ``None``: nothing is written, no data), the worker ticking after each."""
        for _ in range(seconds):
            if rate is not None:
                self.store.write_counts({self.second: {METRIC: int(self.rng.poisson(rate))}})
            self.clock.advance(1.0)
            worker.tick()

    def states(self) -> list[tuple[str, int]]:
        return [(a.state, a.at) for a in self.alerts]


def deliveries(stub: Recorder) -> list[str]:
    """What reached Slack and PagerDuty, in order, as short labels."""
    out = []
    for r in stub.requests:
        if r.path == PAGERDUTY_PATH:
            out.append(f"pagerduty {r.json['event_action']}")
        elif r.path == POST:
            out.append("slack reply" if r.data.get("thread_ts") else "slack post")
        elif r.path == UPDATE:
            out.append("slack update")
        else:
            out.append(f"unexpected {r.method} {r.path}")
    return out


def assert_one_incident(stub: Recorder) -> None:
    """Everything sent is one incident: one trigger and one resolve with the same
    dedup key, one Slack message that is then updated and replied to in its thread."""
    assert deliveries(stub) == ["pagerduty trigger", "slack post",
                                "pagerduty resolve", "slack update", "slack reply"]
    trigger, resolve = (r.json for r in stub.requests_to(PAGERDUTY_PATH))
    assert trigger["routing_key"] == resolve["routing_key"] == ROUTING_KEY
    assert trigger["dedup_key"] == resolve["dedup_key"]
    [update] = stub.requests_to(UPDATE)
    reply = stub.requests_to(POST)[1]
    assert reply.data["thread_ts"] == update.data["ts"]


def test_a_drop_pages_once_and_resolves_once(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """Normal traffic sends nothing; a two-minute outage pages once within seconds; the
    recovery resolves that same incident once, and nothing else is sent."""
    shop = Shop(store, clock)
    shop.prefill()
    worker = shop.worker(stub)
    shop.run(worker, 120, RATE)
    assert shop.alerts == [] and stub.requests == []
    assert store.get_state(METRIC)["status"] == "ok"

    outage = shop.second
    shop.run(worker, 120, 0)
    [(state, at)] = shop.states()
    assert state == "firing" and outage <= at <= outage + 5
    assert deliveries(stub) == ["pagerduty trigger", "slack post"]
    st = store.get_state(METRIC)
    assert (st["state"], st["pending"], st["incident_id"]) == ("firing", "", f"{METRIC}@{at}")

    recovery = shop.second
    shop.run(worker, 300, RATE)
    assert [s for s, _ in shop.states()] == ["firing", "resolved"], shop.states()
    assert recovery < shop.states()[1][1] <= recovery + 60
    assert_one_incident(stub)
    assert store.get_state(METRIC)["state"] == "ok"
    assert store.get_state(METRIC)["pending"] == ""


def test_a_second_outage_is_a_new_incident(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """After one incident resolved, a later outage of the same metric pages again as a
    new incident: its own PagerDuty dedup key and its own Slack message."""
    shop = Shop(store, clock)
    shop.prefill()
    worker = shop.worker(stub)
    shop.run(worker, 120, RATE)
    for _ in range(2):
        shop.run(worker, 60, 0)
        shop.run(worker, 300, RATE)
    assert [s for s, _ in shop.states()] == ["firing", "resolved"] * 2, shop.states()
    one = ["pagerduty trigger", "slack post", "pagerduty resolve", "slack update",
           "slack reply"]
    assert deliveries(stub) == one * 2
    events = [r.json for r in stub.requests_to(PAGERDUTY_PATH)]
    assert [e["event_action"] for e in events] == ["trigger", "resolve"] * 2
    assert events[0]["dedup_key"] == events[1]["dedup_key"]
    assert events[2]["dedup_key"] == events[3]["dedup_key"] != events[0]["dedup_key"]
    first, second = (r.data["ts"] for r in stub.requests_to(UPDATE))
    assert first != second
    assert [r.data.get("thread_ts") for r in stub.requests_to(POST)] == [
        None, first, None, second]


RESTARTS = {
    # seconds of outage before the restart, and the second (from the start) of the
    # snapshot of what the first worker learnt, which the new one finds; the outage
    # begins at 120 s
    "snapshot-before-incident": (60, 0),
    "snapshot-during-incident": (210, 300),
    "no-snapshot": (60, None),  # the worker died before saving one
}


@pytest.mark.parametrize("case", sorted(RESTARTS))
def test_a_restart_during_an_incident_does_not_page_again(
    store: Store, clock: FakeClock, stub: Recorder, redis_url: str, case: str
) -> None:
    """A new worker started while an incident is open sends nothing, keeps the incident
    open while the outage lasts, and resolves it (same dedup key, same Slack message)
    after recovery."""
    outage_before_restart, snapshot_s = RESTARTS[case]
    started = int(clock.now)
    shop = Shop(store, clock)
    shop.prefill()
    first = shop.worker(stub)
    shop.run(first, 120, RATE)
    shop.run(first, outage_before_restart, 0)
    assert deliveries(stub) == ["pagerduty trigger", "slack post"]
    first.close()
    blob = store.get_blob(METRIC)
    assert blob is not None
    snapshot = snapshots.decode(METRIC, blob)
    assert snapshot is not None and snapshot.at == started + (snapshot_s or 0)
    if snapshot_s is None:
        store.client.delete(store.keys.detector(METRIC))

    restarted_store = Store.from_url(redis_url, prefix=store.prefix)
    try:
        shop.store = restarted_store
        second = shop.worker(stub)
        assert bool(second.detector.firing[0])
        shop.run(second, 60, 0)
        assert deliveries(stub) == ["pagerduty trigger", "slack post"]
        assert restarted_store.get_state(METRIC)["state"] == "firing"

        recovery = shop.second
        shop.run(second, 300, RATE)
    finally:
        restarted_store.close()
    assert [s for s, _ in shop.states()] == ["firing", "resolved"], shop.states()
    assert recovery < shop.states()[1][1] <= recovery + 60
    assert_one_incident(stub)


@pytest.mark.parametrize("gap_s", [30, 300, 1800])
def test_a_gap_in_the_data_never_pages(
    store: Store, clock: FakeClock, stub: Recorder, gap_s: int
) -> None:
    """Seconds with no data at all (no fields written: the app was not running) are not
    a drop: nothing fires during the gap or after the traffic comes back."""
    shop = Shop(store, clock)
    shop.prefill()
    worker = shop.worker(stub)
    shop.run(worker, 120, RATE)
    shop.run(worker, gap_s, None)
    shop.run(worker, 180, RATE)
    assert shop.alerts == []
    assert stub.requests == []
    assert store.get_state(METRIC)["status"] == "ok"


def test_a_failed_delivery_is_retried_on_a_later_tick_and_sent_once(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """When PagerDuty and Slack each answer the page with HTTP 500, the incident stays
    pending; a later tick delivers it to both, once, and nothing is sent twice."""
    notifiers = {
        "pagerduty": PagerDutyNotifier(routing_key=ROUTING_KEY, url=stub.pagerduty_url,
                                       attempts=1),
        "slack": SlackNotifier(token=TOKEN, channel="#oncall", base_url=stub.slack_api_url,
                               attempts=1),
    }
    shop = Shop(store, clock)
    shop.prefill()
    worker = shop.worker(stub, notifiers=notifiers)
    shop.run(worker, 120, RATE)
    stub.fail_next(1, 500, path=PAGERDUTY_PATH)
    stub.fail_next(1, 500, path=POST)

    for _ in range(10):  # until the tick that fires
        shop.run(worker, 1, 0)
        if shop.alerts:
            break
    assert [s for s, _ in shop.states()] == ["firing"]
    assert deliveries(stub) == ["pagerduty trigger", "slack post"]  # both answered 500
    assert store.get_state(METRIC)["pending"] == "firing"

    shop.run(worker, 60, 0)
    assert deliveries(stub) == ["pagerduty trigger", "slack post",
                                "pagerduty trigger", "slack post"]
    failed, delivered = (r.json for r in stub.requests_to(PAGERDUTY_PATH))
    assert failed == delivered
    st = store.get_state(METRIC)
    assert st["pending"] == ""
    assert st["sent:pagerduty:firing"] == st["sent:slack:firing"] == "1"
    assert st["slack_ts"] and st["pagerduty_dedup_key"] == delivered["dedup_key"]
    assert [s for s, _ in shop.states()] == ["firing"]


class _RunWhenAsked(Future[Any]):
    """A job of :class:`LateSaver`: it runs when its result is first asked for."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        super().__init__()
        self._job = (fn, args)

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            fn, args = self._job
            self.set_result(fn(*args))
        return super().result(timeout)


class LateSaver:
    """Stands in for the worker's snapshot thread at its slowest: a job runs only when
    the worker waits for it."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return _RunWhenAsked(fn, args)

    def shutdown(self) -> None:
        pass


def test_a_snapshot_finished_in_the_background_is_the_one_of_its_minute(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """The tick copies out only what the next seconds would overwrite, and the snapshot
    thread the rest. Even when that thread has not run at all by then, the tick that
    would feed the detector past ``LEND_S`` seconds waits for it first: the stored
    snapshot is exactly what the detector held at the minute it is valid at."""
    shop = Shop(store, clock)
    shop.prefill()
    worker = shop.worker(stub)
    worker._saver = LateSaver()  # type: ignore[assignment]
    for _ in range(400):
        shop.run(worker, 1, RATE)
        if worker._saving is not None:
            break
    det = worker.detector
    assert worker._saving is not None and det.next_second is not None
    at = det.next_second
    packed, recent = det.pack([0]), det.recent_counts([0])
    shop.run(worker, LEND_S, RATE)
    assert worker._saving is not None  # not needed yet: nothing it copies was overwritten
    shop.run(worker, 30, RATE)  # past the minute: the ticks waited for it
    assert worker._saving is None and det.next_second > at + 60
    snapshot = snapshots.decode(METRIC, store.get_blob(METRIC))
    assert snapshot is not None and snapshot.at == at
    np.testing.assert_array_equal(snapshot.packed, packed[0])
    np.testing.assert_array_equal(snapshot.recent, recent[0])
    worker.close()


def test_a_new_metric_matched_in_the_background_is_watched_by_a_later_tick(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """In the live loop the names known to Redis are read and matched against the glob
    rules by a background thread (a large read with many metrics), and the next tick
    starts watching what it found; while their count stays the same, only the count is
    read, except on every ``FULL_RESCAN_EVERY``-th rescan."""
    rules = parse_rules('[[rule]]\nmetric = "orders.*"\n', "<test rules>")
    shop = Shop(store, clock)
    shop.prefill()
    worker = Worker(store, rules, clock=clock, warmup_minutes=WARMUP_MINUTES)
    worker.start()
    assert worker.metrics == [METRIC]
    worker._prefetcher = ThreadPoolExecutor(1)
    try:
        store.write_counts({shop.second: {"orders.refunded": 3}})
        clock.advance(RESCAN_EVERY_S)
        worker.tick()
        assert worker._scanning is not None and worker.metrics == [METRIC]
        assert sorted(worker._scanning.result()) == [METRIC, "orders.refunded"]
        clock.advance(1.0)
        worker.tick()
        assert sorted(worker.metrics) == [METRIC, "orders.refunded"]
        assert worker._scanning is None
        # apps only add names: as many as last time means nothing new, and only the
        # count is read, but every FULL_RESCAN_EVERY-th rescan reads them all (here a
        # name removed by hand as another came)
        store.client.srem(store.keys.metrics, "orders.refunded")
        store.write_counts({shop.second: {"orders.shipped": 2}})
        for k in range(1, FULL_RESCAN_EVERY + 1):
            clock.advance(RESCAN_EVERY_S)
            worker.tick()
            assert worker._scanning is not None
            found = worker._scanning.result()
            assert found is None if k < FULL_RESCAN_EVERY else found == [METRIC, "orders.shipped"]
        clock.advance(1.0)
        worker.tick()
        assert sorted(worker.metrics) == [METRIC, "orders.shipped"]
    finally:
        worker.close()


class _Hurry(threading.Event):
    """Records how long the snapshot writer asks to wait, and does not wait."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.asked.append(timeout)
        return super().wait(0)


def test_a_minutes_snapshots_are_written_spread_out_unless_waited_for(
    store: Store, clock: FakeClock, stub: Recorder
) -> None:
    """The snapshot thread writes chunk k of n no sooner than k/n of
    ``SNAPSHOT_SPREAD_S`` after it began, so several workers on one machine do not all
    compress at once; a worker that needs them written (the tick that would overwrite
    them, a hand-over, shutdown) sets the hurry flag, and the rest go at once."""
    shop = Shop(store, clock)
    shop.prefill()
    worker = shop.worker(stub)
    at = worker.detector.next_second
    assert at is not None
    chunks = snapshots.copy(worker.detector, [METRIC], [0], at) * 4
    hurry = _Hurry()
    store.client.delete(store.keys.detector(METRIC))
    worker._write_spread(chunks, hurry)
    assert len(hurry.asked) == 3
    for k, asked in enumerate(hurry.asked, 1):
        assert asked is not None
        assert SNAPSHOT_SPREAD_S * k / 4 - 1.0 < asked <= SNAPSHOT_SPREAD_S * k / 4
    snapshot = snapshots.decode(METRIC, store.get_blob(METRIC))
    assert snapshot is not None and snapshot.at == at

    worker._saver = LateSaver()  # type: ignore[assignment]
    worker.save_snapshots(at)
    assert not worker._hurry.is_set()
    worker.close()  # waits for it
    assert worker._hurry.is_set() and worker._saving is None
