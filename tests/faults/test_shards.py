"""Sharded workers: the shard leases in one process, then real ``cliffwatch worker``
processes that split 40 metrics, take over the shards of one killed with SIGKILL, and
share them again when another joins."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FakeClock
from httpstub import Recorder
from procs import CLIFFWATCH, Processes, Traffic, environment, prefill
from test_e2e import HISTORY_MINUTES, RATE, labels

from cliffwatch.alerting import snapshots
from cliffwatch.alerting import worker as worker_module
from cliffwatch.alerting.alert import no_data_incident
from cliffwatch.alerting.incidents import Incidents, Route
from cliffwatch.alerting.shards import SHARDS, LostShard, ShardMap, assignment, shard_of
from cliffwatch.alerting.worker import HOST_SPREAD_S, TICK_PHASE_S, Worker
from cliffwatch.metrics.store import Store
from cliffwatch.rules.config import PAGERDUTY_ROUTING_KEY_ENV, SLACK_TOKEN_ENV, parse_rules
from cliffwatch.rules.detector import Detector

TOKEN = "xoxb-0000-4444-shardstesttoken"
ROUTING_KEY = "SHARDtestROUTINGkey0123456789abc"
METRICS = [f"shop{k:02d}.orders" for k in range(40)]
TAKEOVER_LIMIT_S = 10.0


# -- the shard map, in one process ------------------------------------------------------


def test_shard_of_is_a_stable_hash_of_the_name() -> None:
    """A metric's shard is CRC-32 of its name modulo the shard count: the same in every
    process (Python's hash() is salted per process)."""
    here = [shard_of(m) for m in METRICS]
    code = ("from cliffwatch.alerting.shards import shard_of\n"
            f"print([shard_of(m) for m in {METRICS!r}])")
    for seed in ("1", "2"):
        there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        assert json.loads(there.stdout) == here
    assert set(here) <= set(range(SHARDS)) and len(set(here)) > 20  # spread over shards


def test_the_assignment_is_balanced_and_moves_few_shards_on_a_join_or_leave() -> None:
    """With no lease held (workers starting together), every shard has exactly one
    owner, each of N workers gets at most ceil(S/N) shards, and a joining worker takes
    its share mostly from the others without reshuffling them (rendezvous with bounded
    loads): far fewer moves than rehashing."""
    members = [f"host:{pid}:x" for pid in (101, 202, 303, 404)]
    for n in range(1, 5):
        got = assignment(members[:n])
        assert sorted(s for shards in got.values() for s in shards) == list(range(SHARDS))
        assert max(len(v) for v in got.values()) <= -(-SHARDS // n)
    three, four = assignment(members[:3]), assignment(members)
    moved = sum(1 for m in members[:3] for s in three[m] if s not in four[m])
    assert len(four[members[3]]) == SHARDS // 4
    assert moved <= SHARDS // 4 + SHARDS // 8, moved  # about a quarter, not half or more
    assert assignment(members[:3]) == three  # the same list: the same answer everywhere


def test_the_holders_keep_their_shards_and_a_dead_workers_are_spread_evenly() -> None:
    """With the leases held as assigned, the assignment is what they hold; a dead
    worker's 16 shards go to the 3 survivors at most 6 each (up to ceil(64/3)), the
    survivors keeping all of their own; a fifth worker takes 3 from each of four and
    nothing else moves."""
    members = [f"host:{pid}:x" for pid in (101, 202, 303, 404)]
    four = assignment(members)
    holders = [next(m for m, shards in four.items() if n in shards) for n in range(SHARDS)]
    assert assignment(members, SHARDS, holders) == four
    for dead in members:
        three = assignment([m for m in members if m != dead], SHARDS, holders)
        assert sorted(n for shards in three.values() for n in shards) == list(range(SHARDS))
        for m, shards in three.items():
            assert set(four[m]) <= set(shards) and len(shards) - len(four[m]) <= 6
    five = assignment([*members, "host:505:x"], SHARDS, holders)
    assert len(five["host:505:x"]) == 12
    assert all(set(five[m]) <= set(four[m]) and len(five[m]) == 13 for m in members)


def test_two_shard_maps_split_the_shards_and_hand_over_without_overlap(store: Store) -> None:
    """The first worker takes every shard; when a second joins, the first hands over the
    shards now assigned to the second, which takes them: every shard held by exactly one,
    as the assignment says (the half over the bound); a stale writer is fenced off by
    the shard epoch."""
    a, b = ShardMap(store), ShardMap(store)
    assert len(a.step()) == SHARDS
    assert b.step() == {}  # assigned some, but all are held
    a.step()  # a sees b
    leaving = a.leaving()
    want = assignment(sorted([a.token, b.token]), SHARDS, [a.token] * SHARDS)
    assert leaving == set(want[b.token]) and len(leaving) == SHARDS // 2
    a.release(sorted(leaving))
    held_b = b.step()
    assert set(held_b) == set(want[b.token]) and set(a.held()) == set(want[a.token])
    holders = store.shard_holders(SHARDS)
    assert all(holders[n] == (a.token if n in a.held() else b.token) for n in range(SHARDS))
    assert all(e >= 2 for e in held_b.values())  # a new epoch for each moved shard

    metric = next(m for m in METRICS if shard_of(m) in held_b)
    Incidents(store, Route({}), judge=b).fire(metric, 1_800_000_000, "page", -3, -6, 0, 50)
    assert store.get_state(metric)["shard_epoch"] == str(held_b[shard_of(metric)])
    with pytest.raises(LostShard):  # a no longer holds that shard
        Incidents(store, Route({}), judge=a).resolve(metric, 1_800_000_060, 0, 50)
    assert store.get_state(metric)["state"] == "firing"
    a.stop()
    b.stop()
    assert store.shard_holders(SHARDS) == [None] * SHARDS
    assert store.live_workers() == {}


def test_a_step_tells_which_shards_it_took_and_a_failing_listener_costs_no_lease(
    store: Store, cliffwatch_errors: list[logging.LogRecord]
) -> None:
    """``on_taken`` hears of the shards each step takes (the worker reads their snapshots
    ahead from it), once; a listener that raises is logged and the step still takes and
    renews its leases."""
    a, b = ShardMap(store), ShardMap(store)
    heard: list[list[int]] = []

    def broken(shards: list[int]) -> None:
        raise ValueError("listener failed")

    a.on_taken = heard.append
    assert len(a.step()) == SHARDS and heard == [list(range(SHARDS))]
    a.step()
    assert len(heard) == 1  # renewing is not taking
    a.stop()  # gives every shard up
    b.on_taken = broken
    assert len(b.step()) == SHARDS and len(b.step()) == SHARDS
    assert [r.getMessage() for r in cliffwatch_errors] == [
        f"reading ahead for shards {list(range(SHARDS))} failed"
    ]
    b.stop()


def test_workers_on_one_host_spread_their_ticks_over_the_second(store: Store) -> None:
    """Sharded workers sharing a host tick at different points of each second (by rank
    of their tokens among that host's members), so that they do not all wait for the
    same cores; one alone on its host ticks right after the flushes."""
    rules = parse_rules('[[rule]]\nmetric = "shop*"\n', "<test rules>")
    workers = [Worker(store, rules) for _ in range(4)]
    maps = [ShardMap(store) for _ in workers]
    for worker, shards in zip(workers, maps, strict=True):
        worker._use_shards(shards)
    for shards in maps:
        shards.members = sorted(m.token for m in maps)
    phases = sorted(w._tick_phase() for w in workers)
    assert phases == [TICK_PHASE_S + HOST_SPREAD_S * k / 4 for k in range(4)]
    elsewhere = [f"other-host:{k}:abc" for k in range(3)]
    maps[0].members = sorted([maps[0].token, *elsewhere])
    assert workers[0]._tick_phase() == TICK_PHASE_S


def test_a_metrics_no_data_incident_is_decided_by_the_worker_holding_the_metric(
    store: Store,
) -> None:
    """A metric's "no data" incident lives in the metric's shard, not in the shard its
    own name hashes to: the worker judging the metric writes it, another is fenced off."""
    a, b = ShardMap(store), ShardMap(store)
    a.step()
    b.step()
    a.step()
    a.release(sorted(a.leaving()))
    held_b = b.step()
    metric = next(
        m for m in METRICS
        if shard_of(m) in held_b and shard_of(no_data_incident(m)) not in held_b
    )
    assert b.shard_of(no_data_incident(metric)) == shard_of(metric)
    name = no_data_incident(metric)
    Incidents(store, Route({}), judge=b).fire(name, 1_800_000_000, "notify", -10, -12, 0, 50)
    assert store.get_state(name)["shard_epoch"] == str(held_b[shard_of(metric)])
    with pytest.raises(LostShard):
        Incidents(store, Route({}), judge=a).resolve(name, 1_800_000_060, 0, 50)
    assert store.get_state(name)["state"] == "firing"
    a.stop()
    b.stop()


def test_a_worker_taking_over_after_a_crash_only_feeds_the_seconds_already_judged(
    store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After each tick the lease holder records how far it has judged its shards. A
    worker taking those shards over after the holder died restores the last snapshot
    and feeds the seconds from it up to that record (judged, and paged on if need be,
    by the dead worker) without judging them again; only the seconds after it are
    judged. Statuses say the same, but are written less often (here: never again)."""
    monkeypatch.setattr(worker_module, "STATUS_EVERY_S", 10_000)
    rules = parse_rules('[[rule]]\nmetric = "shop*.orders"\n', "<test rules>", env={})
    start = int(clock.now)
    rng = np.random.default_rng(5)
    history = rng.poisson(RATE, (len(METRICS), 40 * 60 + 150))

    def write(second: int) -> None:
        column = history[:, second - start + 40 * 60]
        store.write_counts({second: dict(zip(METRICS, column.tolist(), strict=True))})

    for second in range(start - 40 * 60, start):
        write(second)
    a, b = ShardMap(store), ShardMap(store)
    a.step()
    b.step()
    a.step()
    a.release(sorted(a.leaving()))
    b.step()
    dead, survivor = (
        Worker(store, rules, notifiers={}, clock=clock, warmup_minutes=30, shards=shards)
        for shards in (a, b)
    )
    for worker in (dead, survivor):
        worker.start()
    for _ in range(135):  # past two whole minutes: snapshots at start + 60 and + 120
        write(int(clock.now))
        clock.advance(1.0)
        for worker, shards in ((dead, a), (survivor, b)):
            shards.step()
            worker.tick()
    dead._saved()
    judged_to = dead.detector.next_second
    assert judged_to is not None and judged_to > start + 120
    taken = sorted(a.held())
    assert store.judged_to(taken) == dict.fromkeys(taken, judged_to)
    names = list(dead.metrics)
    statuses = [int(st["status_at"]) for st in store.get_states(names)]
    assert max(statuses) < start + 60  # written once, at the start

    for _ in range(3):  # the survivor goes on until the dead worker's leases expire...
        write(int(clock.now))
        clock.advance(1.0)
        b.step()
        survivor.tick()
    # ... which is what this does
    store.client.delete(*(store.keys.shard(n) for n in taken))
    store.client.zrem(store.keys.workers, a.token)
    updates: list[tuple[int, int, int, bool]] = []
    update = Detector.update

    def recording(det: Detector, counts: np.ndarray, at: int, judge: bool = True) -> Any:
        updates.append((len(counts), at, at + counts.shape[1], judge))
        return update(det, counts, at, judge=judge)

    monkeypatch.setattr(Detector, "update", recording)
    write(int(clock.now))
    clock.advance(1.0)
    assert set(taken) <= set(b.step())
    survivor.tick()
    assert sorted(survivor.metrics) == sorted(METRICS)
    assert updates == [
        (len(names), start + 120, judged_to, False),  # fed: the dead worker judged them
        (len(names), judged_to, judged_to + 3, True),  # judged: nobody had
        (len(METRICS), judged_to + 3, judged_to + 4, True),  # the tick's own second
    ]


def test_a_worker_snapshots_every_minute_of_data_once_within_a_minute_of_the_clock(
    store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sharded worker far behind the clock replays minute by minute, and saves
    snapshots at most once a minute by the clock, not at every minute it replays. Once
    within a minute of the clock it saves them at every whole minute of data, even when
    the last ones, made while catching up, are only seconds old: a takeover then never
    starts from more than a minute back."""
    rules = parse_rules('[[rule]]\nmetric = "shop*.orders"\n', "<test rules>", env={})
    start = int(clock.now)
    assert start % 60 == 0
    rng = np.random.default_rng(6)

    def write(second: int) -> None:
        counts = rng.poisson(RATE, len(METRICS)).tolist()
        store.write_counts({second: dict(zip(METRICS, counts, strict=True))})

    for second in range(start - 40 * 60, start):
        write(second)
    shards = ShardMap(store)
    shards.step()
    worker = Worker(store, rules, notifiers={}, clock=clock, warmup_minutes=30, shards=shards)
    worker.start()
    saved: list[tuple[int, float]] = []  # (valid at, clock)
    save = Worker.save_snapshots

    def recording(self: Worker, at: int) -> None:
        saved.append((at, clock.now))
        save(self, at)

    monkeypatch.setattr(Worker, "save_snapshots", recording)
    for _ in range(250):  # the worker stalls: 250 s of counts, no tick
        write(int(clock.now))
        clock.advance(1.0)
    for _ in range(130):
        write(int(clock.now))
        clock.advance(1.0)
        shards.step()
        worker.tick()
    assert worker.detector.next_second == int(clock.now) - 1
    # catching up: at start (the first), not at + 60 to + 180 (the clock moved 1-3 s);
    # at + 240 (within a minute of the clock), then every minute live
    assert [at - start for at, _ in saved] == [0, 240, 300, 360]
    assert saved[1][1] - saved[0][1] < 10
    snapshot = snapshots.decode(METRICS[0], store.get_blob(METRICS[0]))
    assert snapshot is not None and snapshot.at == start + 360
    worker.close()


# -- worker processes ---------------------------------------------------------------------


def _environment() -> dict[str, str]:
    return environment(**{SLACK_TOKEN_ENV: TOKEN, PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})


class Fleet:
    """Starts ``cliffwatch worker`` processes on one rules file and reads who judges what."""

    def __init__(self, tmp_path: Path, stub: Recorder, redis_url: str, prefix: str,
                 store: Store, processes: Processes) -> None:
        rules = tmp_path / "rules.toml"
        rules.write_text(textwrap.dedent(f"""
            [[rule]]
            metric = "shop*.orders"

            [slack]
            channel = "#oncall"
            base_url = "{stub.slack_api_url}"

            [pagerduty]
            url = "{stub.pagerduty_url}"
        """))
        self.args = [str(CLIFFWATCH), "-v", "worker", "--rules", str(rules), "--redis-url",
                     redis_url, "--prefix", prefix, "--warmup", "30"]
        self.store = store
        self.processes = processes
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str) -> subprocess.Popen[str]:
        self.procs[name] = self.processes.start(name, self.args, _environment())
        return self.procs[name]

    def workers(self) -> dict[int, dict[str, object]]:
        """pid -> what the live worker publishes (shards, metrics judged, leader)."""
        return {int(t.rsplit(":", 2)[1]): json.loads(info)
                for t, info in self.store.live_workers().items()}

    def judges(self) -> dict[str, int]:
        """metric -> pid of the worker holding its shard's lease (0: none)."""
        holders = self.store.shard_holders(SHARDS)
        pid = {n: int(h.rsplit(":", 2)[1]) if h else 0 for n, h in enumerate(holders)}
        return {m: pid[shard_of(m)] for m in METRICS}

    def settled(self, names: list[str]) -> bool:
        """Every live worker is one of ``names``, each judges some metrics, together all
        40 exactly once, and the leases are as the assignment keeps them."""
        pids = {self.procs[n].pid for n in names}
        live = self.workers()
        if set(live) != pids or any(not info.get("metrics") for info in live.values()):
            return False
        if sum(int(str(info["metrics"])) for info in live.values()) != len(METRICS):
            return False
        tokens = list(self.store.live_workers())
        holders = self.store.shard_holders(SHARDS)
        want = assignment(sorted(tokens), SHARDS, holders)
        return all(holders[n] == t for t, shards in want.items() for n in shards)

    def log(self) -> str:
        return "\n".join(f"--- {n}\n{self.processes.log(n)}" for n in self.procs)

    def wait(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """Poll ``condition``; on timeout fail with what every worker logged by then."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}\n{self.log()}")
            time.sleep(0.05)


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str, prefix: str, store: Store,
          processes: Processes) -> Iterator[tuple[Fleet, Recorder, Traffic]]:
    assert CLIFFWATCH.exists(), f"the console script {CLIFFWATCH} is not installed"
    with Recorder() as stub, Traffic(store, METRICS, RATE) as traffic:
        prefill(store, METRICS, RATE, HISTORY_MINUTES)
        yield Fleet(tmp_path, stub, redis_url, prefix, store, processes), stub, traffic


@pytest.mark.timeout(300)
def test_workers_split_the_metrics_and_a_joining_worker_gets_its_share(
    fleet: tuple[Fleet, Recorder, Traffic], store: Store, wait_for: Callable[..., None],
) -> None:
    """Two workers split 40 metrics: each metric is judged by exactly one of them (its
    shard's lease holder, which is also who writes its status), each says how many it
    judges; a third joins and the shards rebalance (each worker about a third of them)
    within about a minute; nothing is paged."""
    f, stub, _ = fleet
    f.start("a")
    wait_for(lambda: f.settled(["a"]), timeout=30, what="a lone worker to judge all 40")
    f.start("b")
    f.wait(lambda: f.settled(["a", "b"]), 90, "two workers to split the metrics")
    judges = f.judges()
    pids = {f.procs["a"].pid, f.procs["b"].pid}
    assert set(judges.values()) == pids  # both judge, nobody else, no metric unjudged
    tokens = {int(t.rsplit(":", 2)[1]): t for t in store.live_workers()}

    def statuses_agree() -> bool:
        states = store.get_states(METRICS)
        return all(st.get("judged_by") == tokens[judges[m]] and st.get("status") == "ok"
                   for m, st in zip(METRICS, states, strict=True))

    wait_for(statuses_agree, timeout=15, what="each metric's status written by its judge")
    for name in ("a", "b"):
        share = sum(1 for p in judges.values() if p == f.procs[name].pid)
        assert f"judging {share} of 40 metrics" in f.processes.log(name), f.log()
    shown = subprocess.run(
        [*f.args[:2], "status", "--json", *f.args[5:9]], capture_output=True, text=True,
        check=True, env=_environment(),
    )  # fmt: skip
    workers = json.loads(shown.stdout)["workers"]
    assert sorted(w["metrics"] for w in workers) == sorted(
        sum(1 for p in judges.values() if p == pid) for pid in pids
    )

    f.start("c")

    def published() -> list[int]:  # each worker's shards as it last said (once a step)
        return [int(str(info["shards"])) for info in f.workers().values()]

    f.wait(
        lambda: f.settled(["a", "b", "c"]) and sum(published()) == SHARDS,
        90,
        "three workers to share the shards and say so",
    )
    assert min(published()) >= SHARDS // 6, published()
    assert stub.requests == [], labels(stub.requests)


@pytest.mark.timeout(300)
def test_a_killed_workers_shards_move_within_10_s_without_a_page_twice_or_a_page_lost(
    fleet: tuple[Fleet, Recorder, Traffic], store: Store, wait_for: Callable[..., None],
) -> None:
    """Two workers; one of the metrics of worker A is down and paged. A is killed with
    SIGKILL as another of its metrics drops: within 10 s the survivor judges all 40
    metrics; the open incident is not paged again, the new drop is paged exactly once,
    and when both recover each is resolved once."""
    f, stub, traffic = fleet
    f.start("a")
    wait_for(lambda: f.settled(["a"]), timeout=30, what="a to judge all 40")
    f.start("b")
    f.wait(lambda: f.settled(["a", "b"]), 90, "two workers to split the metrics")
    a_pid = f.procs["a"].pid
    mine = [m for m, pid in f.judges().items() if pid == a_pid]
    assert len(mine) >= 2, f.judges()
    open_one, new_one = mine[0], mine[1]

    traffic.down.add(open_one)
    wait_for(lambda: stub.requests_to("/v2/enqueue"), timeout=30, what="the first page")
    wait_for(lambda: store.get_state(open_one).get("pending") == "", timeout=10,
             what="the page to be recorded as delivered")

    killed_at = time.monotonic()
    f.procs["a"].send_signal(signal.SIGKILL)
    f.procs["a"].wait(timeout=10)
    traffic.down.add(new_one)
    b_pid = f.procs["b"].pid

    def b_judges_all() -> bool:
        info = f.workers().get(b_pid, {})
        return info.get("metrics") == len(METRICS) and set(f.judges().values()) == {b_pid}

    f.wait(b_judges_all, TAKEOVER_LIMIT_S + 20, "b to take over")
    takeover_s = time.monotonic() - killed_at

    def triggers() -> int:
        return sum(1 for r in stub.requests_to("/v2/enqueue")
                   if r.json["event_action"] == "trigger")

    f.wait(lambda: triggers() == 2, 40, "the second page")
    paged_s = time.monotonic() - killed_at
    traffic.down.clear()
    f.wait(lambda: sum(1 for r in stub.requests_to("/v2/enqueue")
                       if r.json["event_action"] == "resolve") == 2, 120, "both resolves")
    wait_for(lambda: all(store.get_state(m).get("pending") == "" for m in (open_one, new_one)),
             timeout=20, what="the resolves to be recorded")
    print(f"\nshard takeover {takeover_s:.2f} s after SIGKILL; new drop paged "
          f"{paged_s:.2f} s after SIGKILL")
    f.procs["b"].send_signal(signal.SIGTERM)
    assert f.procs["b"].wait(timeout=15) == 0, f.log()

    sent = labels(stub.requests)
    assert sorted(sent) == sorted(["pagerduty trigger", "slack post", "pagerduty resolve",
                                   "slack update", "slack reply"] * 2), (sent, f.log())
    enqueue = [r.json for r in stub.requests_to("/v2/enqueue")]
    keys = [e["dedup_key"] for e in enqueue if e["event_action"] == "trigger"]
    assert len(set(keys)) == 2
    assert sorted(e["dedup_key"] for e in enqueue if e["event_action"] == "resolve") == sorted(keys)
    for m in (open_one, new_one):
        st = store.get_state(m)
        assert (st["state"], st["pending"]) == ("ok", ""), st
    assert takeover_s <= TAKEOVER_LIMIT_S, f"shard takeover took {takeover_s:.1f} s"
    assert store.shard_holders(SHARDS) == [None] * SHARDS  # b released them on SIGTERM


def test_snapshots_saved_at_different_minutes_are_all_restored(
    store: Store, tmp_path: Path
) -> None:
    """A worker restoring metrics whose snapshots were saved at different minutes (their
    shards had different owners) restores every one of them, each caught up to the
    clock and judged at once; none starts learning again."""
    from cliffwatch.alerting.worker import Worker
    from cliffwatch.rules.config import load_rules

    rules_file = tmp_path / "rules.toml"
    rules_file.write_text('[[rule]]\nmetric = "shop*.orders"\n')
    rules = load_rules(str(rules_file))
    names = METRICS[:4]
    start = 1_800_000_000 - HISTORY_MINUTES * 60
    counts = np.random.default_rng(2).poisson(RATE, (len(names), HISTORY_MINUTES * 60 + 200))

    def write(upto: int) -> None:
        for k in range(counts.shape[1]):
            if start + k < upto:
                store.write_counts({start + k: {m: int(counts[i, k]) for i, m in enumerate(names)}})

    write(1_800_000_200)
    clock = [1_800_000_000 + 1.3]
    first = Worker(store, rules, clock=lambda: clock[0], warmup_minutes=30, notifiers={})
    first.start()
    for second in (1_800_000_000, 1_800_000_060, 1_800_000_120):
        clock[0] = second + 1.3
        first.tick()
        assert first.detector.next_second == second
        half = names[:2] if second == 1_800_000_060 else names[2:]
        if second != 1_800_000_000:  # two metrics at one minute, two at the next
            rows = [first.metrics.index(m) for m in half]
            first._save_snapshots(half, rows, second)
    clock[0] = 1_800_000_150.3
    second_worker = Worker(store, rules, clock=lambda: clock[0], warmup_minutes=30, notifiers={})
    second_worker.start()
    assert sorted(second_worker.metrics) == names
    det = second_worker.detector
    assert det.next_second == 1_800_000_149
    assert det.judged().all(), det.minutes_seen
    assert (det.minutes_seen >= HISTORY_MINUTES).all(), det.minutes_seen
