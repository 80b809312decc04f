"""The app side under faults, with real processes: skewed host clocks, a Redis that is
stopped, paused, out of memory or read-only, a buffer that overflows, and app processes
that exit or get SIGTERM. Figures are printed (``pytest -s``) for RELIABILITY.md."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pytest
import redis

import cliffwatch
from cliffwatch.alerting.status import collect, render
from cliffwatch.metrics import Counter, Store
from cliffwatch.metrics.flusher import MAX_OFFSET_S, ServerClock

if TYPE_CHECKING:
    from conftest import RedisServer

PREFIX = "cwfault:"
METRIC = "orders.created"
FAULT_EMITS = 20_000


def _total(store: Store, since: int) -> float:
    """Every count of METRIC in Redis from epoch second ``since`` until now (+2 s)."""
    try:
        return float(np.nansum(store.read_counts([METRIC], since, int(time.time()) + 3)))
    except cliffwatch.errors.StoreError:
        return -1.0


def _emit_measured(n: int, pause_every: int = 8) -> np.ndarray:
    """Emit METRIC ``n`` times from a new thread, timing each emit(); return the times (s).
    A short sleep every few emits spreads them over a few seconds."""
    times = np.empty(n)
    errors: list[BaseException] = []

    def work() -> None:
        clock = time.perf_counter
        emit = cliffwatch.emit
        try:
            for i in range(n):
                t0 = clock()
                emit(METRIC)
                times[i] = clock() - t0
                if i % pause_every == 0:
                    time.sleep(0.001)
        except BaseException as error:  # emit() must never raise: fail the test
            errors.append(error)

    thread = threading.Thread(target=work, name="app-emitter")
    thread.start()
    thread.join(120)
    assert not errors, f"emit() raised {errors[0]!r}"
    return times


def _report(what: str, times: np.ndarray) -> tuple[float, float]:
    p999 = float(np.percentile(times, 99.9))
    worst = float(times.max())
    print(f"\n[{what}] emits={len(times)} p50={np.median(times) * 1e6:.1f}us "
          f"p99.9={p999 * 1e6:.1f}us max={worst * 1e3:.2f}ms")
    return p999, worst


@pytest.fixture
def live(redis_server: RedisServer) -> Iterator[tuple[RedisServer, Store]]:
    """A started throwaway Redis and a Store on it, the bus configured to flush to it."""
    redis_server.start()
    store = Store.from_url(redis_server.url, prefix=PREFIX)
    cliffwatch.configure(store=store, flush_interval=0.25)
    yield redis_server, store
    cliffwatch.shutdown(timeout=1)
    store.close()


def _admin(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, socket_timeout=10)


def _pid(server: RedisServer) -> int:
    process = server._process
    assert process is not None
    return int(process.pid)


# -- clock skew ---------------------------------------------------------------------------


def test_skewed_emitters_count_in_the_servers_seconds(
    redis_client: redis.Redis, prefix: str, wait_for: Callable[..., None]
) -> None:
    """Two emitters whose clocks are 5 s behind and 5 s ahead put each event in the
    second it happened on the Redis clock, and stamp their flushes on that clock; an
    uncorrected one would put them 5 s away."""
    store = Store(redis_client, prefix=prefix)
    behind = Counter(store, clock=lambda: time.time() - 5, sync_clock=True, flush_interval=0.2)
    ahead = Counter(store, clock=lambda: time.time() + 5, sync_clock=True, flush_interval=0.2)
    raw = Counter(Store(redis_client, prefix=prefix + "raw:"), clock=lambda: time.time() - 5)
    for counter in (behind, ahead):
        counter.start()
    wait_for(lambda: behind._server_clock.synced and ahead._server_clock.synced,
             what="both emitters to measure the Redis clock")
    print(f"\n[skew] offsets: behind {behind.clock_offset:+.4f} s, "
          f"ahead {ahead.clock_offset:+.4f} s")
    assert abs(behind.clock_offset - 5) < 0.05 and abs(ahead.clock_offset + 5) < 0.05

    seconds = []
    for k in range(4):
        server_now = store.server_time()
        time.sleep(1.5 - server_now % 1)  # the middle of the next second on the server clock
        second = int(store.server_time())
        seconds.append(second)
        behind.add(METRIC, 1 + k)
        ahead.add(METRIC, 10 * (1 + k))
        raw.add(METRIC, 100)
    first, last = seconds[0] - 8, seconds[-1] + 8
    # close once the last second is over (a stopping process's partial second moves back)
    wait_for(lambda: store.server_time() > seconds[-1] + 1.1, what="the last second to end")
    assert behind.close(5) and ahead.close(5) and raw.flush()
    got = store.read_counts([METRIC], first, last)[0]
    want = np.full(last - first, np.nan)
    for k, second in enumerate(seconds):
        want[second - first] = 11 * (1 + k)
    np.testing.assert_array_equal(np.nan_to_num(got, nan=0), np.nan_to_num(want, nan=0))
    uncorrected = raw.store.read_counts([METRIC], first, last)[0]
    assert [s - first for s in seconds] == [i + 5 for i in np.flatnonzero(uncorrected == 100)]
    stamps = store.emitters()
    assert all(abs(stamp - store.server_time()) < 3 for stamp in stamps.values())
    raw.close()


def test_server_clock_keeps_the_last_good_offset_when_redis_is_down(
    redis_server: RedisServer,
) -> None:
    """The offset is measured against a real Redis; when it stops, the last good offset
    is kept; a sample from a broken clock (beyond a day away) is never applied."""
    redis_server.start()
    store = Store.from_url(redis_server.url, prefix=PREFIX, socket_connect_timeout=0.2)
    clock = ServerClock(lambda: time.time() + 3.0, store.server_time)
    assert clock.sync() and abs(clock.offset + 3.0) < 0.05 and clock.last_rtt is not None
    redis_server.stop()
    assert not clock.sync() and abs(clock.offset + 3.0) < 0.05
    broken = ServerClock(lambda: time.time() + 2 * MAX_OFFSET_S, lambda: time.time())
    assert not broken.sync() and broken.offset == 0.0 and not broken.synced
    store.close()


# -- Redis faults while a thread emits ----------------------------------------------------


def _stop(server: RedisServer) -> Callable[[], None]:
    server.stop()

    def end() -> None:
        server.start()

    return end


def _pause(server: RedisServer) -> Callable[[], None]:
    pid = _pid(server)
    os.kill(pid, signal.SIGSTOP)
    return lambda: os.kill(pid, signal.SIGCONT)


def _oom(server: RedisServer) -> Callable[[], None]:
    admin = _admin(server)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")

    def end() -> None:
        admin.config_set("maxmemory", "0")
        admin.close()

    return end


def _readonly(server: RedisServer) -> Callable[[], None]:
    admin = _admin(server)
    dead = redis_port_nobody_uses()
    admin.replicaof("127.0.0.1", dead)  # a failed-over, read-only node

    def end() -> None:
        admin.replicaof("NO", "ONE")
        admin.close()

    return end


def redis_port_nobody_uses() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


FAULTS = {"stopped": _stop, "paused": _pause, "oom": _oom, "readonly": _readonly}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_emit_stays_fast_and_counts_arrive_exactly_after_a_fault(
    live: tuple[RedisServer, Store], fault: str, wait_for: Callable[..., None]
) -> None:
    """While Redis is stopped / paused (SIGSTOP) / out of memory / read-only, emit()
    never raises, its p99.9 stays under 1 ms, and every event counted during the fault
    reaches Redis exactly once when it is back; nothing is dropped."""
    server, store = live
    since = int(time.time()) - 2
    for _ in range(1000):
        cliffwatch.emit(METRIC)
    wait_for(lambda: _total(store, since) == 1000, timeout=10, what="the first 1000 events")
    end_fault = FAULTS[fault](server)
    started = time.monotonic()
    try:
        times = _emit_measured(FAULT_EMITS)
    finally:
        lasted = time.monotonic() - started
        end_fault()
    back = time.monotonic()
    # a restarted Redis (no persistence) comes back empty: it gets the fault's events only
    want = FAULT_EMITS + (0 if fault == "stopped" else 1000)
    wait_for(lambda: _total(store, since) == want, timeout=40,
             what=f"{want} events in Redis after the fault")
    delivered_after = time.monotonic() - back
    counter = cliffwatch.metrics.bus.active_counter()
    assert counter is not None
    counter.flush()
    p999, worst = _report(f"{fault}: fault lasted {lasted:.1f} s", times)
    print(f"[{fault}] totals: emitted {want}, in Redis {_total(store, since):.0f}, "
          f"delivered {delivered_after:.1f} s after the fault ended, dropped {counter.dropped}")
    assert _total(store, since) == want
    assert counter.dropped == {}
    assert p999 <= 1e-3


def test_beyond_the_buffer_bound_counts_are_dropped_counted_and_shown(
    redis_server: RedisServer, wait_for: Callable[..., None]
) -> None:
    """With Redis stopped longer than max_buffered_seconds, the oldest seconds are
    dropped as ``buffer_full``; delivered + dropped == emitted, and once Redis is back
    the drop count reaches it and `status` shows it (text and JSON)."""
    redis_server.start()
    store = Store.from_url(redis_server.url, prefix=PREFIX)
    cliffwatch.configure(store=store, flush_interval=0.25, max_buffered_seconds=2)
    since = int(time.time()) - 2
    redis_server.stop()
    emitted = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        cliffwatch.emit(METRIC, 10)
        emitted += 10
        time.sleep(0.005)
    counter = cliffwatch.metrics.bus.active_counter()
    assert counter is not None
    redis_server.start()
    wait_for(lambda: counter.buffered_seconds == 0 and store.drops(), timeout=40,
             what="buffered counts and drop counts to reach Redis")
    assert cliffwatch.shutdown(timeout=5)
    delivered = _total(store, since)
    dropped = counter.dropped
    print(f"\n[buffer bound 2 s, Redis stopped 5 s] emitted {emitted}, delivered "
          f"{delivered:.0f}, dropped {dropped}, in Redis drops {store.drops()}")
    assert set(dropped) == {"buffer_full"} and dropped["buffer_full"] > 0
    assert delivered + dropped["buffer_full"] == emitted
    assert store.drops() == dropped
    overview = collect(store)
    assert overview.to_json()["drops"] == dropped
    assert f"dropped by apps: {dropped['buffer_full']} events (buffer_full " in render(overview)
    store.close()


# -- app processes: exit, SIGTERM ---------------------------------------------------------

APP = """
import sys, time
import cliffwatch
cliffwatch.configure(sys.argv[1], prefix=sys.argv[2])
for _ in range(int(sys.argv[3])):
    cliffwatch.emit("orders.created")
print("emitted", flush=True)
if sys.argv[4] == "wait":
    time.sleep(60)
"""


def _app(url: str, n: int, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(APP), url, PREFIX, str(n), mode],
        stdout=subprocess.PIPE,
        text=True,
    )


def _ran(process: subprocess.Popen[str], sigterm: bool) -> tuple[int, float]:
    """Wait for the app to have emitted (then SIGTERM it if asked); return its exit code
    and how long it took to exit after that."""
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "emitted"
    started = time.monotonic()
    if sigterm:
        process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=15)
    took = time.monotonic() - started
    process.stdout.close()
    return code, took


@pytest.mark.parametrize("sigterm", [False, True], ids=["exit", "sigterm"])
def test_an_app_process_flushes_its_last_counts_when_it_ends(
    redis_server: RedisServer, sigterm: bool
) -> None:
    """An app process that exits normally, or gets SIGTERM, writes its last counts
    before it ends (SIGTERM still ends it as a SIGTERM would)."""
    redis_server.start()
    store = Store.from_url(redis_server.url, prefix=PREFIX)
    since = int(time.time()) - 2
    code, took = _ran(_app(redis_server.url, 12_345, "wait" if sigterm else "exit"), sigterm)
    print(f"\n[{'SIGTERM' if sigterm else 'exit'}, Redis up] exit {code} after {took:.2f} s, "
          f"in Redis {_total(store, since):.0f} of 12345")
    assert code == (-signal.SIGTERM if sigterm else 0)
    assert _total(store, since) == 12_345
    store.close()


@pytest.mark.parametrize("fault", ["stopped", "paused"])
@pytest.mark.parametrize("sigterm", [False, True], ids=["exit", "sigterm"])
def test_an_app_process_never_hangs_on_a_dead_redis(
    redis_server: RedisServer, fault: str, sigterm: bool
) -> None:
    """With Redis stopped or paused, an app process that exits, or gets SIGTERM, ends
    within 3 s (the final flush waits at most 2 s)."""
    redis_server.start()
    end_fault = FAULTS[fault](redis_server)
    try:
        code, took = _ran(_app(redis_server.url, 1000, "wait" if sigterm else "exit"), sigterm)
    finally:
        end_fault()
    print(f"\n[{'SIGTERM' if sigterm else 'exit'}, Redis {fault}] exit {code} "
          f"after {took:.2f} s")
    assert code == (-signal.SIGTERM if sigterm else 0)
    assert took < 3.0
