"""cliffwatch through twemproxy (Debian's ``nutcracker``, ``hash_tag: "{}"``) in front of
three Redis shards: the app's write path, the store's reads and the worker."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

import cliffwatch
from cliffwatch.alerting.alert import Alert
from cliffwatch.errors import StoreError
from cliffwatch.metrics.store import Store
from cluster.apps import RATE, prefill, total_in_redis, worker
from cluster.conftest import Twemproxy, client

T0 = 1_800_000_000
METRICS = [f"shop.m{i:02d}" for i in range(12)]


@pytest.fixture
def store(twemproxy: Twemproxy) -> Iterator[Store]:
    """A store through nutcracker (``redis+twemproxy://``), under a prefix of its own."""
    s = Store.from_url(twemproxy.url, prefix=f"cw{uuid.uuid4().hex[:8]}:")
    yield s
    s.close()


def test_app_side_writes_through_twemproxy_one_shard_per_metric(
    twemproxy: Twemproxy, store: Store
) -> None:
    """configure(redis+twemproxy://...) and emit: every event is counted, pipelined
    without MULTI; each metric's keys sit on one shard and the metrics use all three."""
    start = math.floor(time.time())
    counter = cliffwatch.configure(twemproxy.url, prefix=store.prefix)
    for i in range(3000):
        cliffwatch.emit(METRICS[i % len(METRICS)])
    assert cliffwatch.shutdown(timeout=10)
    assert counter.dropped == {}
    assert total_in_redis(store, METRICS, start, math.floor(time.time()) + 2) == 3000
    assert store.metric_names() == sorted(METRICS)
    homes: dict[str, set[int]] = {}
    for port in twemproxy.shard_ports:
        for key in client(port).scan_iter(match=f"{store.prefix}{{*", count=1000):
            metric = key.decode().split("{", 1)[1].split("}", 1)[0]
            homes.setdefault(metric, set()).add(port)
    assert sorted(homes) == sorted(METRICS)
    assert all(len(ports) == 1 for ports in homes.values())
    assert len(set().union(*homes.values())) == 3


def test_store_reads_and_state_work_through_twemproxy(store: Store) -> None:
    """PING, counts, names, emitters, state, snapshots, silences and the lease
    script (one key) all work through nutcracker."""
    store.ping()
    store.write_counts({T0 + 1: dict.fromkeys(METRICS, 2)}, emitter="h:1", now=T0 + 2)
    np.testing.assert_array_equal(store.read_counts(METRICS, T0, T0 + 2),
                                  [[np.nan, 2]] * len(METRICS))
    assert store.emitters() == {"h:1": T0 + 2}
    store.set_state(METRICS[0], {"state": "ok"})
    assert store.get_states(METRICS[:2]) == [{"state": "ok"}, {}]
    store.set_blob(METRICS[0], b"\x01")
    assert store.get_blob(METRICS[0]) == b"\x01"
    assert store.add_silence("s", "{}") and store.silences() == {"s": "{}"}
    assert store.acquire_lease("tok", 5000) == 1
    assert store.renew_lease("tok", 5000) == (True, 1) and store.release_lease("tok")


def test_stream_commands_are_refused_by_twemproxy_as_a_store_error(store: Store) -> None:
    """nutcracker 0.5 knows no stream commands (the worker's outbox): the store says so
    in a one-line StoreError instead of hanging or crashing."""
    with pytest.raises(StoreError) as caught:
        store.outbox_add({"a": "b"}, maxlen=10)
    assert "\n" not in str(caught.value)
    store.ping()  # the next command gets a fresh connection


def test_worker_reads_through_twemproxy_and_pages_once(store: Store) -> None:
    """A worker (delivering to no notifier) judges through nutcracker: steady traffic
    pages nothing, an outage of one metric pages it once."""
    now = [float(T0 + 3600)]
    prefill(store, METRICS, T0 + 3600)
    alerts: list[Alert] = []
    w = worker(store, METRICS, alerts, clock=lambda: now[0])
    rng = np.random.default_rng(2)
    for k in range(240):
        counts = {m: int(rng.poisson(RATE)) for m in METRICS}
        if k >= 60:
            counts[METRICS[3]] = 0
        store.write_counts({int(now[0]): counts})
        now[0] += 1.0
        w.tick()
    assert [(a.metric, a.state) for a in alerts] == [(METRICS[3], "firing")]
