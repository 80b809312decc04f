"""cliffwatch on a real Redis Cluster (3 masters, 3 replicas): the app side, the store,
the worker, a master killed mid-run, and the connections 50 app processes hold."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import cliffwatch
from cliffwatch.alerting.alert import Alert
from cliffwatch.metrics.store import Store
from cluster.apps import (
    RATE,
    Apps,
    Steady,
    Ticking,
    connected_clients,
    prefill,
    total_in_redis,
    worker,
)
from cluster.conftest import Cluster, wait

T0 = 1_800_000_000  # a minute boundary
METRICS = [f"shop.m{i:02d}" for i in range(12)]


@pytest.fixture
def cprefix(cluster: Cluster) -> Iterator[str]:
    """A key prefix of this test alone."""
    yield f"cw{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def store(cluster: Cluster, cprefix: str) -> Iterator[Store]:
    """A store over the cluster (``redis+cluster://``)."""
    s = Store.from_url(cluster.url, prefix=cprefix)
    yield s
    s.close()


def test_every_store_command_works_on_the_cluster(cluster: Cluster, store: Store) -> None:
    """Each Store method works through RedisCluster, with the metrics' keys spread over
    all three masters and every key of one metric in one slot."""
    store.ping()
    homes = {cluster.master_of_key(store.keys.seconds(m, T0)) for m in METRICS}
    assert len(homes) == 3
    for m in METRICS:
        keys = [store.keys.seconds(m, T0), store.keys.seconds(m, T0 + 60),
                store.keys.state(m), store.keys.detector(m)]
        assert len({store.client.keyslot(k) for k in keys}) == 1

    store.write_counts({T0 + 59: dict.fromkeys(METRICS, 3), T0 + 60: dict.fromkeys(METRICS, 0)},
                       emitter="host:1", now=T0 + 61)
    counts = store.read_counts(METRICS + ["never"], T0 + 58, T0 + 61)
    np.testing.assert_array_equal(counts[:-1], [[np.nan, 3, 0]] * len(METRICS))
    assert np.isnan(counts[-1]).all()
    assert store.metric_names() == sorted(METRICS)
    assert store.emitters() == {"host:1": T0 + 61}
    assert store.prune_emitters(T0 + 62) == 1 and store.emitters() == {}

    store.set_state(METRICS[0], {"state": "firing", "at": 5})
    assert store.get_state(METRICS[0]) == {"state": "firing", "at": "5"}
    assert store.get_states(METRICS[:2]) == [{"state": "firing", "at": "5"}, {}]
    store.set_blob(METRICS[1], b"\x00snapshot")
    assert store.get_blob(METRICS[1]) == b"\x00snapshot"
    assert store.add_silence("s1", "{}") and not store.add_silence("s1", "{}")
    assert store.silences() == {"s1": "{}"} and store.delete_silences(["s1"]) == 1

    epoch = store.acquire_lease("tok", 5000)
    assert epoch == 1 and store.acquire_lease("other", 5000) is None
    assert store.renew_lease("tok", 5000) == (True, 1)
    assert store.lease_holder() == "tok" and store.release_lease("tok")

    store.outbox_group("pagerduty")
    entry = store.outbox_add({"metric": METRICS[0]}, maxlen=100)
    assert store.outbox_read("pagerduty", "w", 10, unacked=False) == [
        (entry, {"metric": METRICS[0]})]
    store.outbox_ack("pagerduty", entry)
    assert store.outbox_read("pagerduty", "w", 10, unacked=True) == []


def test_app_side_flushes_to_the_cluster(cluster: Cluster, store: Store, cprefix: str) -> None:
    """configure(redis+cluster://...) and emit from the app: every event reaches the
    cluster, pipelined per node, none dropped."""
    start = math.floor(time.time())
    counter = cliffwatch.configure(cluster.url, prefix=cprefix)
    for i in range(3000):
        cliffwatch.emit(METRICS[i % len(METRICS)])
    assert cliffwatch.shutdown(timeout=10)
    assert counter.dropped == {}
    assert total_in_redis(store, METRICS, start, math.floor(time.time()) + 2) == 3000


def test_worker_reads_through_the_cluster_and_pages_once(store: Store) -> None:
    """A worker on the cluster judges all metrics: steady traffic pages nothing, an
    outage of one metric pages that metric once."""
    now = [float(T0 + 3600)]
    prefill(store, METRICS, T0 + 3600)
    alerts: list[Alert] = []
    w = worker(store, METRICS, alerts, clock=lambda: now[0])
    rng = np.random.default_rng(1)
    for k in range(240):
        second = int(now[0])
        counts = {m: int(rng.poisson(RATE)) for m in METRICS}
        if k >= 60:
            counts[METRICS[5]] = 0  # outage
        store.write_counts({second: counts})
        now[0] += 1.0
        w.tick()
    assert [(a.metric, a.state) for a in alerts] == [(METRICS[5], "firing")]
    assert store.get_state(METRICS[5])["state"] == "firing"


def test_a_master_killed_mid_run_fails_over_without_a_false_page(
    cluster: Cluster, store: Store, cprefix: str, cliffwatch_errors: list[logging.LogRecord]
) -> None:
    """SIGKILL of a master while apps emit and a worker judges: its replica takes over,
    the app's buffered counts are delivered (totals exact), reading resumes, and
    nothing pages."""
    metrics = METRICS[:6]
    now = math.floor(time.time())
    prefill(store, metrics, now)
    alerts: list[Alert] = []
    w = worker(store, metrics, alerts)
    counter = cliffwatch.configure(cluster.url, prefix=cprefix)
    victim = cluster.master_of_key(store.keys.seconds(metrics[0], 0))
    with Steady(metrics) as app, Ticking(w) as ticking:
        wait(lambda: ticking.ticks >= 8, 10, "the worker to tick on a healthy cluster")
        cluster.kill(victim)
        killed = time.monotonic()
        failover_s = wait(lambda: cluster.serves_all_slots_without(victim), 30,
                          "a replica to take over the killed master's slots")
        cluster.wait_ok(30)
        ticks = ticking.ticks
        wait(lambda: ticking.ticks >= ticks + 8, 20, "the worker to tick again")
        wait(lambda: (w.detector.next_second or 0) >= max(now + 6, math.floor(time.time()) - 3),
             20, "the worker to judge the seconds up to now again")
        resumed_s = time.monotonic() - killed
    assert cliffwatch.shutdown(timeout=10)
    emitted = app.emitted
    assert counter.dropped == {}
    in_redis = total_in_redis(store, metrics, now, math.floor(time.time()) + 2)
    assert in_redis == emitted
    assert [a for a in alerts if a.metric in metrics] == []
    assert w.detector.next_second is not None and w.detector.next_second > now + 5
    print(f"failover {failover_s:.1f} s, ticks resumed {resumed_s:.1f} s after the kill, "
          f"{ticking.failed} ticks failed meanwhile, {emitted} events, all in Redis")


def test_fifty_app_processes_hold_one_connection_per_master_each(
    cluster: Cluster, cprefix: str, tmp_path: Path
) -> None:
    """50 app processes, 4 threads x 100 metrics each, on the cluster: each holds at
    most one connection per master (one pool per process, shared by its threads)."""
    masters = cluster.masters()
    before = {p: connected_clients(p) for p in masters}
    apps = Apps(cluster.url, cprefix, count=50, threads=4, metrics=100, workdir=tmp_path)
    try:
        apps.wait_ready(120)
        held = {p: connected_clients(p) - before[p] for p in masters}
    finally:
        apps.kill()
    print(f"connections held by 50 app processes, per master: {held}")
    assert all(0 < n <= 50 for n in held.values()), held


def test_fifty_app_processes_hold_one_connection_each_on_one_redis(
    redis_server: object, cprefix: str, tmp_path: Path
) -> None:
    """50 app processes, 4 threads x 100 metrics each, on one Redis: 50 connections in
    all, one per process."""
    redis_server.start()  # type: ignore[attr-defined]
    port = redis_server.port  # type: ignore[attr-defined]
    before = connected_clients(port)
    apps = Apps(f"redis://127.0.0.1:{port}/0", cprefix, count=50, threads=4, metrics=100,
                workdir=tmp_path)
    try:
        apps.wait_ready(120)
        held = connected_clients(port) - before
    finally:
        apps.kill()
    print(f"connections held by 50 app processes on one Redis: {held}")
    assert held == 50
