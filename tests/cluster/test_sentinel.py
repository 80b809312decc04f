"""cliffwatch on a master and a replica watched by three real ``redis-sentinel``
processes: ``redis+sentinel://`` on both sides, and both following a failover."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import pytest

import cliffwatch
from cliffwatch.alerting.alert import Alert
from cliffwatch.metrics.store import Store
from cluster.apps import Steady, Ticking, prefill, total_in_redis, worker
from cluster.conftest import SERVICE, Sentinels, client, wait

METRICS = ["shop.orders", "shop.signups", "shop.logins"]


def _fail_over(sentinels: Sentinels, how: str) -> None:
    if how == "SENTINEL FAILOVER":
        client(sentinels.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", SERVICE)
    else:
        sentinels.servers[sentinels.master_port].kill()


@pytest.mark.parametrize("how", ["SENTINEL FAILOVER", "SIGKILL of the master"])
def test_app_and_worker_follow_a_failover(
    sentinels: Sentinels, how: str, cliffwatch_errors: list[logging.LogRecord]
) -> None:
    """While an app emits and a worker judges over redis+sentinel://, the master fails
    over: both sides find the new master on their own, the app's buffered counts are
    all delivered (totals exact) and nothing pages."""
    prefix = "cwsentinel:"
    store = Store.from_url(sentinels.url, prefix=prefix)
    now = math.floor(time.time())
    prefill(store, METRICS, now)
    alerts: list[Alert] = []
    w = worker(store, METRICS, alerts)
    counter = cliffwatch.configure(sentinels.url, prefix=prefix)
    old = ("127.0.0.1", sentinels.master_port)
    new_master_writable: Callable[[], bool] = lambda: (  # noqa: E731
        sentinels.master() not in (None, old)
        and client(sentinels.replica_port).info("replication")["role"] == "master")
    with Steady(METRICS) as app, Ticking(w) as ticking:
        wait(lambda: ticking.ticks >= 6, 10, "the worker to tick")
        started = time.monotonic()
        _fail_over(sentinels, how)
        failover_s = wait(new_master_writable, 30, "the sentinels to promote the replica")
        ticks = ticking.ticks
        wait(lambda: ticking.ticks >= ticks + 8, 30, "the worker to tick on the new master")
        wait(lambda: counter.buffered_seconds == 0 and counter.flush(), 30,
             "the app to deliver what it buffered")
        resumed_s = time.monotonic() - started
    assert cliffwatch.shutdown(timeout=10)
    emitted = app.emitted
    assert counter.dropped == {}
    assert total_in_redis(store, METRICS, now, math.floor(time.time()) + 2) == emitted
    assert [a for a in alerts if a.metric in METRICS] == []
    store.close()
    print(f"{how}: promoted in {failover_s:.1f} s, both sides working again "
          f"{resumed_s:.1f} s after it; {ticking.failed} ticks failed meanwhile, "
          f"{emitted} events, all in Redis")
