"""The in-process counter and its flusher: exact counts, zero-fill, round trips, outages,
fork, expiry."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pytest
import redis

import cliffwatch
from cliffwatch.metrics import Counter, Store
from cliffwatch.metrics.keys import Keys

if TYPE_CHECKING:
    from conftest import FakeClock, RecordingRedis, RedisServer

T0 = 1_800_000_000


def test_events_are_counted_in_the_second_they_happen(
    redis_client: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    """Each event lands in the epoch second of the clock when it was added."""
    counter = Counter(Store(redis_client, prefix=prefix), clock=clock)
    counter.add("a", 3)  # T0 + 0.5
    clock.advance(0.49)
    counter.add("a")  # T0 + 0.99
    clock.advance(0.01)
    counter.add("a", 2)  # T0 + 1.0
    clock.advance(2)
    assert counter.flush()
    counts = counter.store.read_counts(["a"], T0, T0 + 3)
    np.testing.assert_array_equal(counts, [[4, 2, np.nan]])
    assert counter.close()


def test_concurrent_emits_reach_redis_exactly(redis_client: redis.Redis, prefix: str) -> None:
    """8 threads emitting at once: the totals in Redis are exact."""
    store = Store(redis_client, prefix=prefix)
    start = int(time.time())
    cliffwatch.configure(store=store, flush_interval=0.2)
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for _ in range(5000):
            cliffwatch.emit("orders.created")
            cliffwatch.emit("signups.completed", 2)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cliffwatch.shutdown(timeout=10)
    counts = store.read_counts(
        ["orders.created", "signups.completed"], start - 1, int(time.time()) + 2
    )
    assert np.nansum(counts, axis=1).tolist() == [40_000.0, 80_000.0]


def test_counts_of_threads_that_ended_are_delivered_and_their_slots_forgotten(
    redis_client: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    """Each thread counts on its own; a flush collects what ended threads counted,
    then forgets them."""
    counter = Counter(Store(redis_client, prefix=prefix), clock=clock)

    def work(n: int) -> None:
        for _ in range(n):
            counter.add("a")

    threads = [threading.Thread(target=work, args=(100 * (i + 1),)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    del thread, threads
    clock.advance(1)
    assert counter.flush()
    assert counter.store.read_counts(["a"], T0, T0 + 1).tolist() == [[3600.0]]
    assert counter._slots == []  # the ended threads' slots are gone
    counter.close()


def test_an_event_added_after_its_second_was_flushed_still_counts_in_that_second(
    redis_client: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    """An add that read the clock in second s but reached the counter after the flush of
    s is written to s by the next flush."""
    read, go = threading.Event(), threading.Event()

    def slow_clock() -> float:
        now = clock()
        if threading.current_thread().name == "slow" and not go.is_set():
            read.set()
            go.wait(10)  # the flush runs here, between the clock read and the add
        return now

    counter = Counter(Store(redis_client, prefix=prefix), clock=slow_clock)
    slow = threading.Thread(target=counter.add, args=("a",), name="slow")
    go.set()
    counter.add("a", 5)  # T0 + 0.5, this thread
    go.clear()
    slow.start()
    assert read.wait(10)
    clock.advance(1)
    assert counter.flush()  # T0 closed: 5 (the slow thread's events are not in yet)
    assert counter.store.read_counts(["a"], T0, T0 + 1).tolist() == [[5.0]]
    go.set()
    slow.join()
    assert counter.flush()
    assert counter.store.read_counts(["a"], T0, T0 + 1).tolist() == [[6.0]]
    counter.close()


def test_events_after_close_from_any_thread_are_dropped_as_closed(
    redis_client: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    """After the final flush nothing more is written; events of every thread count as
    ``closed``."""
    counter = Counter(Store(redis_client, prefix=prefix), clock=clock)
    counter.add("a", 2)
    assert counter.close()
    counter.add("a", 3)
    thread = threading.Thread(target=counter.add, args=("a", 4))
    thread.start()
    thread.join()
    clock.advance(2)
    counter.add("a", 5)
    assert counter.flush()
    assert counter.dropped == {"closed": 12}
    assert np.nansum(counter.store.read_counts(["a"], T0 - 1, T0 + 3)) == 2


def test_zero_fill_while_the_flusher_runs(
    redis_client: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    """A known metric without events gets 0 for each closed second watched in full."""
    counter = Counter(Store(redis_client, prefix=prefix), clock=clock, flush_interval=0.05)
    counter.register("idle")
    counter.start()  # at T0 + 0.5: T0 is only partly watched
    clock.advance(3)  # now T0 + 3.5
    assert counter.flush()
    assert counter.close()  # the final flush: T0 + 3 is partly watched, no zeros
    counts = counter.store.read_counts(["idle"], T0 - 1, T0 + 5)
    np.testing.assert_array_equal(counts, [[np.nan, np.nan, 0, 0, np.nan, np.nan]])


def test_no_zero_fill_when_the_flusher_never_ran(
    redis_client: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    """Without a running flusher, a quiet known metric gets no field: no data, not zero."""
    counter = Counter(Store(redis_client, prefix=prefix), clock=clock)
    counter.register("idle")
    counter.add("busy")
    clock.advance(5)
    assert counter.flush()
    counts = counter.store.read_counts(["idle", "busy"], T0, T0 + 5)
    assert np.isnan(counts[0]).all()
    np.testing.assert_array_equal(counts[1], [1, np.nan, np.nan, np.nan, np.nan])


def test_zero_fill_starts_after_registration(
    redis_client: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    """A metric registered later is zero-filled only from the next full second on."""
    counter = Counter(Store(redis_client, prefix=prefix), clock=clock, flush_interval=0.05)
    counter.start()
    clock.advance(2)  # T0 + 2.5
    counter.register("late")
    clock.advance(2)  # T0 + 4.5
    assert counter.flush()
    counts = counter.store.read_counts(["late"], T0, T0 + 5)
    np.testing.assert_array_equal(counts, [[np.nan, np.nan, np.nan, 0, np.nan]])
    counter.close()


def test_commands_per_flush_do_not_grow_with_events(
    recording_client: RecordingRedis, prefix: str, clock: FakeClock
) -> None:
    """A flush is one round trip without MULTI/EXEC whose commands depend on the
    metrics, not on how many events were counted."""
    counter = Counter(Store(recording_client, prefix=prefix), clock=clock)
    for name in ("a", "b", "c"):
        counter.register(name)
    counter.start()
    clock.advance(1)  # T0 + 1.5; the first flush also sets EXPIREs and SADDs
    counter.add("a")
    clock.advance(1)
    assert counter.flush()
    recording_client.round_trips.clear()

    counter.add("a")
    clock.advance(1)
    assert counter.flush()
    for _ in range(20_000):
        counter.add("a")
        counter.add("b", 3)
    clock.advance(1)
    assert counter.flush()

    quiet, busy = recording_client.round_trips
    assert not quiet.transaction and not busy.transaction
    assert quiet.names() == busy.names() == ["HINCRBY"] * 3 + ["HSET"]
    assert "MULTI" not in quiet.names() and "EVAL" not in busy.names()
    counts = counter.store.read_counts(["a", "b", "c"], T0 + 3, T0 + 4)
    assert counts.tolist() == [[20_000.0], [60_000.0], [0.0]]
    counter.close()


def test_counts_buffered_while_redis_is_down_are_delivered(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    """Counts made while Redis is down stay in memory and reach Redis once it is back."""
    redis_server.start()
    store = Store.from_url(redis_server.url, socket_connect_timeout=0.5, socket_timeout=0.5)
    counter = Counter(store, clock=clock)
    counter.add("a", 2)
    redis_server.stop()
    clock.advance(1)
    counter.add("a", 3)
    clock.advance(1)
    assert not counter.flush()
    assert counter.buffered_seconds == 2
    redis_server.start()
    assert counter.flush()
    assert counter.buffered_seconds == 0
    assert store.read_counts(["a"], T0, T0 + 2).tolist() == [[2.0, 3.0]]
    assert counter.dropped == {}
    counter.close()


def test_background_retry_after_redis_was_down_at_configure(
    redis_server: RedisServer, redis_client: redis.Redis, wait_for: Callable[..., None]
) -> None:
    """configure() with Redis down neither raises nor blocks; the flusher delivers later."""
    began = time.monotonic()
    counter = cliffwatch.configure(redis_server.url, prefix="cwtest:late:", flush_interval=0.1)
    cliffwatch.emit("orders.created", 5)
    assert time.monotonic() - began < 0.5
    wait_for(lambda: counter.buffered_seconds > 0, what="a flush to fail and buffer")
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    store = Store(client, prefix="cwtest:late:")
    now = int(time.time())

    def delivered() -> bool:
        return bool(np.nansum(store.read_counts(["orders.created"], now - 5, now + 1)) == 5)

    wait_for(delivered, timeout=15, what="buffered counts to be delivered")
    client.close()


def test_oldest_seconds_dropped_beyond_the_buffer_bound(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    """While Redis is away, only max_buffered_seconds seconds are kept; drops are counted."""
    store = Store.from_url(redis_server.url, socket_connect_timeout=0.2)  # never started
    counter = Counter(store, clock=clock, max_buffered_seconds=3)
    for events in range(1, 7):  # seconds T0..T0+5 with 1..6 events
        counter.add("a", events)
        clock.advance(1)
    assert not counter.flush()
    assert counter.buffered_seconds == 3
    assert counter.dropped == {"buffer_full": 1 + 2 + 3}
    counter.close(timeout=5)
    assert counter.dropped == {"buffer_full": 6, "shutdown": 4 + 5 + 6}


def test_memory_stays_bounded_without_a_flusher(
    redis_client: redis.Redis, clock: FakeClock
) -> None:
    """A counter that is never flushed keeps at most max_buffered_seconds seconds."""
    counter = Counter(
        Store(redis_client, prefix="cwtest:unused:"), clock=clock, max_buffered_seconds=3
    )
    for events in range(1, 7):
        counter.add("a", events)
        clock.advance(1)
    assert counter.dropped == {"buffer_full": 1 + 2 + 3}


def test_forked_child_counts_reach_redis(redis_client: redis.Redis, prefix: str) -> None:
    """A forked child counts on its own (its flusher restarts lazily) and its counts land."""
    store = Store(redis_client, prefix=prefix)
    start = int(time.time())
    cliffwatch.configure(store=store, flush_interval=0.1)
    cliffwatch.emit("jobs.done", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            cliffwatch.emit("jobs.done", 10)
            counter = cliffwatch.metrics.bus.active_counter()
            restarted = counter is not None and counter.flusher_alive
            code = 0 if cliffwatch.shutdown(timeout=5) and restarted else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    cliffwatch.emit("jobs.done", 100)
    assert cliffwatch.shutdown(timeout=5)
    total = np.nansum(store.read_counts(["jobs.done"], start - 1, int(time.time()) + 2))
    assert total == 111
    assert len(store.emitters()) == 2  # parent and child flushed under their own pid


def test_minute_keys_expire(redis_client: redis.Redis, prefix: str, clock: FakeClock) -> None:
    """Flushed minute keys carry a TTL of retention_s."""
    counter = Counter(Store(redis_client, prefix=prefix, retention_s=600), clock=clock)
    counter.add("a")
    clock.advance(1)
    assert counter.flush()
    ttl = redis_client.ttl(Keys(prefix).seconds("a", T0))
    assert 590 < ttl <= 600
    counter.close()


def test_bad_counts_are_dropped_not_written(
    redis_client: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    """A count that is not a non-negative integer is dropped and counted, not sent."""
    counter = Counter(Store(redis_client, prefix=prefix), clock=clock)
    counter.add("a", 1.5)  # type: ignore[arg-type]
    counter.add("b", -1)
    counter.add("c", 2)
    clock.advance(1)
    assert counter.flush()
    assert counter.dropped == {"bad_count": 2}
    counts = counter.store.read_counts(["a", "b", "c"], T0, T0 + 1)
    np.testing.assert_array_equal(counts, [[np.nan], [np.nan], [2]])
    counter.close()


def test_refused_write_is_dropped_and_logged(
    redis_client: redis.Redis,
    prefix: str,
    clock: FakeClock,
    cliffwatch_errors: list[logging.LogRecord],
) -> None:
    """If Redis refuses the write, the events are dropped (not retried twice) and logged."""
    redis_client.set(Keys(prefix).seconds("a", T0), "wrong type")
    counter = Counter(Store(redis_client, prefix=prefix), clock=clock)
    counter.add("a", 4)
    clock.advance(1)
    assert counter.flush()
    assert counter.dropped == {"redis_refused": 4}
    assert [r.levelname for r in cliffwatch_errors] == ["ERROR"]
    counter.close()


def test_bad_counter_arguments() -> None:
    """Counter arguments out of range are ConfigErrors naming the value."""
    store = Store(redis.Redis())
    with pytest.raises(cliffwatch.errors.ConfigError, match="flush_interval.*0"):
        Counter(store, flush_interval=0)
    with pytest.raises(cliffwatch.errors.ConfigError, match="max_buffered_seconds"):
        Counter(store, max_buffered_seconds=0)
