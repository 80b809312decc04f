"""A partitioned leader: two real ``cliffwatch worker`` processes, the leader frozen with
SIGSTOP (a paused or cut-off process), an outage while it is frozen, then SIGCONT."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from httpstub import Recorder
from procs import CLIFFWATCH, Processes, Traffic, prefill, stub_rules
from test_e2e import HISTORY_MINUTES, METRIC, RATE, has, labels
from test_leader import (
    ONE_INCIDENT,
    SLACK_ORDER,
    TAKEOVER_LIMIT_S,
    _environment,
    newest_shard_epoch,
)

from cliffwatch.metrics.store import Store


@pytest.mark.timeout(240)
def test_a_frozen_leader_is_replaced_and_after_sigcont_delivers_nothing(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    store: Store,
    processes: Processes,
    wait_for: Callable[..., None],
) -> None:
    """SIGSTOP the leader: the follower holds the lease within 10 s and pages an outage
    that starts while the old leader is frozen, once; after SIGCONT the old leader sees
    it lost the lease and sends nothing — one page, one resolve, no duplicates."""
    assert CLIFFWATCH.exists(), f"the console script {CLIFFWATCH} is not installed"
    with Recorder() as stub, Traffic(store, [METRIC], RATE) as traffic:
        rules = tmp_path / "rules.toml"
        rules.write_text(stub_rules(METRIC, stub.slack_api_url, stub.pagerduty_url))
        prefill(store, [METRIC], RATE, HISTORY_MINUTES)
        args = [
            str(CLIFFWATCH),
            "-v",
            "worker",
            "--rules",
            str(rules),
            "--redis-url",
            redis_url,
            "--prefix",
            prefix,
            "--warmup",
            "30",
        ]
        first = processes.start("first", args, _environment())

        def holder() -> str:
            """The pid of the worker holding the lease (tokens are host:pid:random)."""
            token = store.lease_holder()
            return "" if token is None else token.rsplit(":", 2)[1]

        wait_for(lambda: holder() == str(first.pid), timeout=20, what="the first to lead")
        second = processes.start("second", args, _environment())
        wait_for(
            lambda: "watching" in processes.log("second"),
            timeout=30,
            what="the second worker to watch the metric",
        )
        wait_for(
            lambda: store.get_state(METRIC).get("status") == "ok",
            timeout=20,
            what="the leader to judge the traffic normal",
        )
        assert holder() == str(first.pid) and stub.requests == []

        first_log = tmp_path / "first.log"
        frozen_at = time.monotonic()
        first.send_signal(signal.SIGSTOP)
        wait_for(
            lambda: holder() == str(second.pid),
            timeout=TAKEOVER_LIMIT_S + 5,
            what="the second worker to take the lease",
        )
        takeover_s = time.monotonic() - frozen_at
        outage_at = time.monotonic()
        traffic.down.add(METRIC)  # the outage starts while the old leader is frozen
        stub.wait_for(has("pagerduty trigger", "slack post"), timeout=30)
        paged_s = time.monotonic() - outage_at

        before_cont = len(first_log.read_text())
        frozen_out = int(newest_shard_epoch(store, METRIC))  # the shard's epoch without it
        first.send_signal(signal.SIGCONT)
        wait_for(
            lambda: "following" in first_log.read_text()[before_cont:],
            timeout=10,
            what="the old leader to notice it no longer leads",
        )
        traffic.down.clear()
        stub.wait_for(has("pagerduty resolve", "slack reply"), timeout=90)
        # The old leader has been awake since: its detector caught up on the outage and
        # its recovery, and it ticked through both; still nothing of its own was sent.
        assert first.poll() is None and second.poll() is None
        assert holder() == str(second.pid)
        after = first_log.read_text()[before_cont:]
        print(
            f"\ntakeover {takeover_s:.2f} s after SIGSTOP; page {paged_s:.2f} s after "
            f"the outage began; the old leader after SIGCONT logged:\n{after}"
        )
        assert takeover_s <= TAKEOVER_LIMIT_S, f"takeover took {takeover_s:.1f} s"
        for proc in (first, second):  # the follower first: it must not take over
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0, processes.log("first") + processes.log("second")

        sent = labels(stub.requests)
        assert sorted(sent) == sorted(ONE_INCIDENT), (
            sent,
            processes.log("first"),
            processes.log("second"),
        )
        assert [x for x in sent if x.startswith("slack")] == SLACK_ORDER
        trigger, resolve = (r.json for r in stub.requests_to("/v2/enqueue"))
        assert trigger["dedup_key"] == resolve["dedup_key"]
        assert "now the leader (epoch 2)" in processes.log("second")
        assert "now the leader" not in after and "Traceback" not in after
        st = store.get_state(METRIC)
        # The resolve was written fenced by an epoch the shard had after the old leader
        # froze: never by the old leader on its stale lease. (It may have been handed
        # the shard back since, before the resolve or after it: a newer epoch.)
        newest = int(newest_shard_epoch(store, METRIC))
        assert (st["state"], st["pending"]) == ("ok", "")
        assert frozen_out <= int(st["shard_epoch"]) <= newest, (st, frozen_out, newest)
