"""The bus: emit, the @event decorator, signal(), configure() and shutdown()."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import redis

import cliffwatch
from cliffwatch.errors import ConfigError, EventNameError
from cliffwatch.metrics import Store, bus

if TYPE_CHECKING:
    from conftest import FakeClock

T0 = 1_800_000_000


@pytest.fixture
def store(redis_client: redis.Redis, prefix: str) -> Store:
    return Store(redis_client, prefix=prefix)


def totals(store: Store, *names: str) -> list[float]:
    """Sum of each metric's counts over the last minutes (after a shutdown's final flush)."""
    now = int(time.time())
    counts = store.read_counts(list(names), now - 120, now + 2)
    return [float(total) for total in np.nansum(counts, axis=1)]


def test_public_names() -> None:
    """The package exports the documented API."""
    assert set(cliffwatch.__all__) == {"configure", "emit", "event", "signal", "shutdown"}
    assert set(cliffwatch.metrics.__all__) >= {"Counter", "Store", *cliffwatch.__all__}


def test_decorator_emits_once_on_return_not_on_raise(store: Store) -> None:
    """A decorated function emits once per normal return and never when it raises."""
    cliffwatch.configure(store=store)
    seen: list[int] = []
    cliffwatch.signal("orders.created").connect(
        lambda sender, count: seen.append(count), weak=False
    )

    @cliffwatch.event("orders.created")
    def create(fail: bool = False) -> str:
        if fail:
            raise RuntimeError("no stock")
        return "order"

    assert create() == "order"
    assert create() == "order"
    with pytest.raises(RuntimeError, match="no stock"):
        create(fail=True)
    assert create.__name__ == "create"
    assert cliffwatch.shutdown()
    assert seen == [1, 1]
    assert totals(store, "orders.created") == [2.0]


def test_async_decorator_emits_once_on_return_not_on_raise(store: Store) -> None:
    """A decorated coroutine function emits when awaited to completion, not when it raises."""
    cliffwatch.configure(store=store)

    @cliffwatch.event("payments.captured")
    async def capture(fail: bool) -> int:
        await asyncio.sleep(0)
        if fail:
            raise ValueError("declined")
        return 42

    async def main() -> None:
        assert await capture(False) == 42
        with pytest.raises(ValueError, match="declined"):
            await capture(True)

    asyncio.run(main())
    assert asyncio.iscoroutinefunction(capture)
    assert cliffwatch.shutdown()
    assert totals(store, "payments.captured") == [1.0]


def test_decorated_method_emits(store: Store) -> None:
    """Methods can be decorated; self is passed through."""
    cliffwatch.configure(store=store)

    class Shop:
        def __init__(self) -> None:
            self.sold = 0

        @cliffwatch.event("items.sold")
        def sell(self, n: int) -> int:
            self.sold += n
            return self.sold

    shop = Shop()
    assert shop.sell(2) == 2
    assert shop.sell(3) == 5
    assert cliffwatch.shutdown()
    assert totals(store, "items.sold") == [2.0]


@pytest.mark.parametrize("bad", ["Orders", "orders created", "", "x" * 201, "é", 5, None])
def test_bad_names_raise_naming_the_value(bad: Any) -> None:
    """The decorator and signal() reject a bad name with an EventNameError naming it."""
    with pytest.raises(EventNameError) as caught:
        cliffwatch.event(bad)
    assert repr(bad) in str(caught.value)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(EventNameError, match="invalid event name"):
        cliffwatch.signal(bad)


def test_longest_valid_name_is_accepted() -> None:
    """200 characters of [a-z0-9_.-] is a valid name."""
    assert cliffwatch.signal("a" * 197 + "._-").name == "a" * 197 + "._-"


def test_emit_with_bad_name_drops_warns_once_and_counts(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """emit() of an invalid name does not raise: one warning per name, drops counted."""
    counter = cliffwatch.configure(store=store)
    with caplog.at_level(logging.WARNING, logger="cliffwatch"):
        cliffwatch.emit("Bad Name")
        cliffwatch.emit("Bad Name", 3)
        cliffwatch.emit(["not", "hashable"])  # type: ignore[arg-type]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "'Bad Name'" in w]) == 1
    assert counter.dropped == {"invalid_name": 1 + 3 + 1}


def test_emit_never_raises_on_bad_counts(store: Store) -> None:
    """emit() with a count that is not a non-negative int drops that event (bad_count)
    without spoiling the other counts of its second, and without raising."""
    counter = cliffwatch.configure(store=store)
    cliffwatch.emit("orders.created", "3")  # type: ignore[arg-type]
    cliffwatch.emit("orders.created", 2.5)  # type: ignore[arg-type]
    cliffwatch.emit("orders.created", -1)
    cliffwatch.emit("orders.created", True)
    cliffwatch.emit("orders.created", 4)
    assert cliffwatch.shutdown()
    assert counter.dropped == {"bad_count": 4}
    assert totals(store, "orders.created") == [4.0]


def test_emit_before_configure_is_a_noop(store: Store) -> None:
    """Before configure(), emit() neither raises nor counts; observers still hear it."""
    seen: list[str] = []
    cliffwatch.signal("early.event").connect(lambda sender, count: seen.append(sender), weak=False)
    cliffwatch.emit("early.event")
    cliffwatch.emit("never.configured", 4)
    cliffwatch.configure(store=store)
    assert cliffwatch.shutdown()
    assert seen == ["early.event"]
    assert np.isnan(
        store.read_counts(
            ["early.event", "never.configured"], int(time.time()) - 5, int(time.time()) + 1
        )
    ).all()


def test_raising_observer_does_not_stop_counting_or_raise(
    store: Store, cliffwatch_errors: list[logging.LogRecord]
) -> None:
    """An app observer that raises is logged; emit() returns normally and the event counts."""

    def broken(sender: str, count: int) -> None:
        raise KeyError("observer bug")

    cliffwatch.signal("orders.created").connect(broken)
    cliffwatch.configure(store=store)
    for _ in range(3):
        cliffwatch.emit("orders.created")

    @cliffwatch.event("orders.created")
    def create() -> str:
        return "ok"

    assert create() == "ok"
    assert cliffwatch.shutdown()
    assert totals(store, "orders.created") == [4.0]
    assert len(cliffwatch_errors) == 1  # logged once, not once per event
    assert "orders.created" in cliffwatch_errors[0].getMessage()
    assert cliffwatch_errors[0].exc_info is not None


def test_observers_run_after_counting_in_connection_order() -> None:
    """Receivers of a signal run in the order they connected, cliffwatch's first."""
    calls: list[str] = []
    sig = cliffwatch.signal("ordered.event")
    first = sig.receivers[next(iter(sig.receivers))]
    for tag in ("b", "a", "c", "e", "d"):
        sig.connect(lambda sender, count, tag=tag: calls.append(tag), weak=False)
    assert next(iter(sig.receivers.values())) is first
    cliffwatch.emit("ordered.event")
    assert calls == ["b", "a", "c", "e", "d"]


def test_signal_is_a_blinker_named_signal() -> None:
    """signal() returns the same blinker NamedSignal each time, from cliffwatch's namespace."""
    import blinker

    sig = cliffwatch.signal("orders.created")
    assert isinstance(sig, blinker.NamedSignal)
    assert sig is cliffwatch.signal("orders.created")
    assert bus.events["orders.created"] is sig
    assert sig.send("orders.created", count=1)[0][1] is None


def test_known_metrics_are_zero_filled(
    redis_client: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    """Names from @event, signal() and a first emit are known to the counter; the emit in
    the partial second configure() ran in counts in the first full second."""

    @cliffwatch.event("from.decorator")
    def f() -> None:
        return None

    cliffwatch.signal("from.signal")
    counter = cliffwatch.configure(store=Store(redis_client, prefix=prefix), clock=clock)
    cliffwatch.emit("from.emit")
    assert counter.known == ("from.decorator", "from.emit", "from.signal")
    clock.advance(3)
    assert counter.flush()
    counts = counter.store.read_counts(
        ["from.decorator", "from.signal", "from.emit"], T0 + 1, T0 + 3
    )
    assert counts.tolist() == [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]


def test_cardinality_cap(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """Beyond max_metrics names, new names are dropped and counted, with one warning."""
    counter = cliffwatch.configure(store=store, max_metrics=2)
    seen: list[int] = []
    with caplog.at_level(logging.WARNING, logger="cliffwatch"):
        cliffwatch.emit("m.one")
        cliffwatch.emit("m.two")
        cliffwatch.emit("m.three")
        cliffwatch.emit("m.four", 5)
        cliffwatch.emit("m.three")
        over = cliffwatch.signal("m.five")  # still usable by observers, not counted
        over.connect(lambda sender, count: seen.append(count), weak=False)
        cliffwatch.emit("m.five", 7)
    assert seen == [7]
    assert counter.known == ("m.one", "m.two")
    assert counter.dropped == {"too_many_metrics": 1 + 5 + 1 + 7}
    assert len([r for r in caplog.records if "max_metrics" in r.getMessage()]) == 1
    assert cliffwatch.shutdown()
    assert totals(store, "m.one", "m.two") == [1.0, 1.0]


def test_configure_rejects_unknown_and_bad_options(store: Store) -> None:
    """Unknown options and bad values are ConfigErrors naming them."""
    with pytest.raises(ConfigError, match="'flush_every'"):
        cliffwatch.configure(store=store, flush_every=1)
    with pytest.raises(ConfigError, match="max_metrics"):
        cliffwatch.configure(store=store, max_metrics=0)
    with pytest.raises(ConfigError, match="prefix"):
        cliffwatch.configure(store=store, prefix="other:")
    with pytest.raises(ConfigError, match=r"\*\*\*") as caught:
        cliffwatch.configure("mysql://root:pw@db/0")
    assert "pw@" not in str(caught.value)
    assert bus.active_counter() is None


def test_configure_reads_the_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_client: redis.Redis, prefix: str
) -> None:
    """Without an argument, configure() uses CLIFFWATCH_REDIS_URL and CLIFFWATCH_PREFIX."""
    monkeypatch.setenv("CLIFFWATCH_REDIS_URL", redis_url)
    monkeypatch.setenv("CLIFFWATCH_PREFIX", prefix)
    counter = cliffwatch.configure()
    assert counter.store.prefix == prefix
    cliffwatch.emit("env.event", 2)
    assert cliffwatch.shutdown()
    assert totals(Store(redis_client, prefix=prefix), "env.event") == [2.0]


def test_configure_again_replaces_the_previous_setup(
    redis_client: redis.Redis, prefix: str, wait_for: Any
) -> None:
    """A second configure() flushes the first counter in the background and takes over."""
    first = Store(redis_client, prefix=prefix + "one:")
    second = Store(redis_client, prefix=prefix + "two:")
    old = cliffwatch.configure(store=first)
    cliffwatch.emit("swap.event", 2)
    new = cliffwatch.configure(store=second)
    cliffwatch.emit("swap.event", 3)
    wait_for(lambda: not old.flusher_alive, what="the old flusher to stop")
    assert totals(first, "swap.event") == [2.0]
    assert new.flusher_alive
    assert cliffwatch.shutdown()
    assert totals(second, "swap.event") == [3.0]
    assert not new.flusher_alive


def test_flusher_thread_is_a_named_daemon(store: Store) -> None:
    """The flusher is a daemon thread named cliffwatch-flusher, gone after shutdown()."""
    import threading

    counter = cliffwatch.configure(store=store)
    assert counter.flusher_alive
    flushers = [t for t in threading.enumerate() if t.name == "cliffwatch-flusher"]
    assert flushers and all(t.daemon for t in flushers)
    assert cliffwatch.shutdown()
    assert not counter.flusher_alive


def test_shutdown_without_configure_and_twice() -> None:
    """shutdown() is safe before configure() and when called twice."""
    assert cliffwatch.shutdown()
    assert cliffwatch.shutdown()


def test_partial_first_and_last_seconds_go_to_full_seconds(
    redis_client: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    """Events of the second the process started in, and of the second it stopped in, are
    written to the nearest full second, so neither reads as a drop."""
    counter = cliffwatch.configure(store=Store(redis_client, prefix=prefix), clock=clock)
    cliffwatch.emit("shop.partial", 3)  # T0 + 0.5: configure() ran within second T0
    clock.advance(1.0)
    cliffwatch.emit("shop.partial", 5)  # T0 + 1.5, the first full second
    clock.advance(1.0)
    cliffwatch.emit("shop.partial", 7)  # T0 + 2.5, the second the process stops in
    assert cliffwatch.shutdown(timeout=5.0)
    counts = counter.store.read_counts(["shop.partial"], T0, T0 + 3)
    assert np.isnan(counts[0, 0]) and np.isnan(counts[0, 2])
    assert counts[0, 1] == 3 + 5 + 7
