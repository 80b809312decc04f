"""Leader election: one lease, fencing epochs, and two real ``cliffwatch worker``
processes of which the leader is killed with SIGKILL in the middle of an outage."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from httpstub import Recorder
from procs import CLIFFWATCH, Processes, Traffic, environment, prefill, stub_rules
from test_e2e import HISTORY_MINUTES, METRIC, RATE, has, labels

from cliffwatch.alerting.incidents import Incidents, Route
from cliffwatch.alerting.leader import Leader, LostLeadership
from cliffwatch.alerting.shards import shard_of
from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import PAGERDUTY_ROUTING_KEY_ENV, SLACK_TOKEN_ENV

TOKEN = "xoxb-0000-3333-leadertesttoken"
ROUTING_KEY = "LEADERtestROUTINGkey0123456789ab"
TAKEOVER_LIMIT_S = 10.0
ONE_INCIDENT = ["pagerduty trigger", "slack post", "pagerduty resolve", "slack update",
                "slack reply"]
SLACK_ORDER = ["slack post", "slack update", "slack reply"]


# -- the lease and the epoch, in one process ------------------------------------------


def test_one_lease_one_leader_and_each_new_leader_a_newer_epoch(store: Store) -> None:
    """Of two contenders only one holds the lease; when it lets go the other takes it
    with a higher epoch, and the old one, seeing that epoch, refuses to act."""
    a, b = Leader(store), Leader(store)
    assert a.step() and not b.step()
    assert a.holds() and not b.holds() and a.epoch == 1
    assert store.lease_holder() == a.token
    a.stop()  # releases the lease
    assert b.step() and b.epoch == 2
    assert store.lease_holder() == b.token
    with pytest.raises(LostLeadership):
        a.check()
    b.check(seen=2)
    with pytest.raises(LostLeadership):
        b.check(seen=3)  # someone newer exists: b steps down at once
    assert not b.holds()


def test_a_leader_whose_lease_was_taken_over_stops_at_its_next_renewal(store: Store) -> None:
    """When a leader's lease expired (it was paused or cut off) and another worker took
    it, the old leader's renewal fails and it no longer counts itself leader."""
    a, b = Leader(store), Leader(store)
    assert a.step()
    store.client.delete(store.keys.leader)  # as if its PX had run out
    assert b.step() and b.epoch == a.epoch + 1
    assert not a.step()
    assert not a.holds() and b.holds()
    assert store.lease_holder() == b.token


def test_a_stale_leader_cannot_write_over_a_newer_one(store: Store) -> None:
    """Fencing: once a newer leader has written an incident, the old leader (still
    believing itself leader) is refused when it tries to write that metric's state."""
    old, new = Leader(store), Leader(store)
    assert old.step()
    store.client.delete(store.keys.leader)
    assert new.step()
    stale = Incidents(store, Route({}), fence=old)
    current = Incidents(store, Route({}), fence=new)
    current.fire(METRIC, 1_800_000_000, "page", -3.0, -6.0, 0.0, 50.0)
    assert old.holds()  # it has not noticed yet
    with pytest.raises(LostLeadership):
        stale.resolve(METRIC, 1_800_000_060, 0.0, 50.0)
    st = store.get_state(METRIC)
    assert (st["state"], st["epoch"]) == ("firing", str(new.epoch))
    assert not old.holds()


# -- two worker processes -------------------------------------------------------------


def newest_shard_epoch(store: Store, metric: str) -> str:
    """The fencing epoch of ``metric``'s shard's latest holder, as Redis has it."""
    return str(store.client.get(store.keys.shard_epoch(shard_of(metric))).decode())


def _environment() -> dict[str, str]:
    return environment(**{SLACK_TOKEN_ENV: TOKEN, PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "when", ["paged-before-the-kill", "outage-starts-at-the-kill", "killed-while-paging"]
)
def test_a_sigkilled_leader_is_replaced_within_10_s_and_the_outage_is_paged_once(
    tmp_path: Path, redis_url: str, prefix: str, store: Store, processes: Processes,
    wait_for: Callable[..., None], when: str,
) -> None:
    """Two worker processes on one Redis: one leads, the other follows; SIGKILL the
    leader and the follower holds the lease within 10 s; an outage that spans the
    failover is paged once and resolved once — nothing twice, nothing lost. Killed the
    instant the page reaches PagerDuty and Slack (before it could record that), the new
    leader sends it again: at most one duplicate per channel, the same PagerDuty
    incident."""
    assert CLIFFWATCH.exists(), f"the console script {CLIFFWATCH} is not installed"
    with Recorder() as stub, Traffic(store, [METRIC], RATE) as traffic:
        rules = tmp_path / "rules.toml"
        rules.write_text(stub_rules(METRIC, stub.slack_api_url, stub.pagerduty_url))
        prefill(store, [METRIC], RATE, HISTORY_MINUTES)
        args = [str(CLIFFWATCH), "-v", "worker", "--rules", str(rules), "--redis-url",
                redis_url, "--prefix", prefix, "--warmup", "30"]
        first = processes.start("first", args, _environment())

        def holder() -> str:
            """The pid of the worker holding the lease (tokens are host:pid:random)."""
            token = store.lease_holder()
            return "" if token is None else token.rsplit(":", 2)[1]

        wait_for(lambda: holder() == str(first.pid), timeout=20, what="the first to lead")
        second = processes.start("second", args, _environment())
        wait_for(lambda: "watching" in processes.log("second"), timeout=30,
                 what="the second worker to watch the metric")
        wait_for(lambda: store.get_state(METRIC).get("status") == "ok", timeout=20,
                 what="the leader to judge the traffic normal")
        assert holder() == str(first.pid) and second.poll() is None
        assert stub.requests == []

        if when != "outage-starts-at-the-kill":
            traffic.down.add(METRIC)
            stub.wait_for(has("pagerduty trigger", "slack post"), timeout=20)
        if when == "paged-before-the-kill":  # ... and recorded as delivered
            wait_for(lambda: store.get_state(METRIC).get("pending") == "", timeout=5,
                     what="the leader to record the page")
        killed_at = time.monotonic()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        if when == "outage-starts-at-the-kill":
            traffic.down.add(METRIC)
        wait_for(lambda: holder() == str(second.pid), timeout=TAKEOVER_LIMIT_S + 5,
                 what="the second worker to take the lease")
        takeover_s = time.monotonic() - killed_at
        stub.wait_for(has("pagerduty trigger", "slack post"), timeout=30)
        paged_s = time.monotonic() - killed_at

        traffic.down.clear()
        stub.wait_for(has("pagerduty resolve", "slack reply"), timeout=90)
        print(f"\n{when}: takeover {takeover_s:.2f} s after SIGKILL; "
              f"page in {paged_s:.2f} s after SIGKILL")
        assert takeover_s <= TAKEOVER_LIMIT_S, f"takeover took {takeover_s:.1f} s"
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=10) == 0, processes.log("second")
        sent = labels(stub.requests)  # the channels deliver in parallel: order per channel
        if when == "killed-while-paging":
            for again in ("pagerduty trigger", "slack post"):
                assert sent.count(again) <= 2, sent
                if sent.count(again) == 2:
                    sent.remove(again)
            keys = {r.json["dedup_key"] for r in stub.requests_to("/v2/enqueue")}
            assert len(keys) == 1, keys
        assert sorted(sent) == sorted(ONE_INCIDENT), (sent, processes.log("first"),
                                                      processes.log("second"))
        assert [x for x in sent if x.startswith("slack")] == SLACK_ORDER
        trigger, resolve = (r.json for r in stub.requests_to("/v2/enqueue"))
        assert trigger["dedup_key"] == resolve["dedup_key"]
        assert "now the leader" in processes.log("second")
        st = store.get_state(METRIC)
        assert (st["state"], st["pending"]) == ("ok", "")
        # The resolve was written by the shard's latest holder (the survivor).
        assert st["shard_epoch"] == newest_shard_epoch(store, METRIC)
        assert store.lease_holder() is None  # released on SIGTERM
