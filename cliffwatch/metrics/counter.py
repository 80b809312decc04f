"""The in-process counter: events per metric per epoch second, sent to Redis by a flusher.

:meth:`Counter.add` is the hot path: it reads the clock and adds to a dict of the
calling thread's own, with no I/O and no lock shared between threads (each thread's
dict has its own lock, which only the flusher ever waits for). When a thread's second
is over, its next event parks the finished second with the counter's *open* seconds.
A background :class:`~cliffwatch.metrics.flusher.Flusher` wakes just after each second
boundary, collects every thread's seconds before the current one, *closes* them and
writes the closed seconds to Redis in one pipelined round trip.

Zero-fill: while the flusher runs, every closed second gets a field for every metric
the counter knows (:meth:`Counter.register`), ``0`` when nothing happened. A missing
field therefore means *no data* (this process was not watching), never *zero events*.
The second the flusher starts in and the second it stops in are only partly watched,
so they carry the counted events but no zeros.

Every event that is not delivered is counted in :attr:`Counter.dropped` under one of
these reasons:

``invalid_name``      emitted under a name that is not a valid event name
``too_many_metrics``  emitted under a new name beyond the ``max_metrics`` cap
``bad_count``         a count that is not a non-negative integer
``buffer_full``       Redis was unreachable for longer than ``max_buffered_seconds``
``redis_refused``     Redis answered but refused the write (see ``CountsRefused``)
``shutdown``          Redis failed during the final flush
``closed``            added after the final flush (racing a ``shutdown()``)

Drops are also added to Redis (the ``drops`` hash, see :mod:`cliffwatch.metrics.keys`)
by the next flush that reaches Redis, so ``cliffwatch status`` shows them; ``shutdown``
and ``closed`` drops happen when no flush follows, so they stay local.

Clock: events are bucketed by the *server clock*: the local clock plus the offset to the
Redis server's clock that the flusher measures (``TIME``, every 30 s, see
:class:`~cliffwatch.metrics.flusher.ServerClock`). Every app process therefore puts an
event in the same second, and stamps its flushes in ``emitters`` on the same clock as
the worker reads them, however far (up to a day) its host's clock is off. Until the
first measurement the offset is 0; while Redis is away the last one is kept.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable

from cliffwatch.errors import ConfigError, StoreError
from cliffwatch.metrics.flusher import Flusher, ServerClock
from cliffwatch.metrics.store import CountsRefused, Store

log = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL_S = 1.0
DEFAULT_MAX_BUFFERED_SECONDS = 600

_FIELDS_PER_ROUND_TRIP = 20_000
"""A backlog (after Redis was away) is written in round trips of about this many fields."""

_SPOILED = -1
"""What a metric's count becomes when counts cannot be added up (a ``bad_count``)."""


def _emitter_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Second:
    """A closed second waiting to be written: its counts and the metrics to zero-fill."""

    __slots__ = ("counts", "fill")

    def __init__(self, fill: tuple[str, ...] = ()) -> None:
        self.counts: dict[str, int] = {}
        self.fill = fill

    def events(self) -> int:
        return sum(self.counts.values())

    def fields(self) -> dict[str, int]:
        fields = dict.fromkeys(self.fill, 0)
        fields.update(self.counts)
        return fields

    def merge(self, other: _Second) -> None:
        for name, count in other.counts.items():
            self.counts[name] = self.counts.get(name, 0) + count
        if other.fill and other.fill is not self.fill:
            self.fill = tuple(sorted(set(self.fill) | set(other.fill)))


def _counted(counts: dict[str, int]) -> _Second:
    """A closed second holding ``counts`` (zeros included), nothing to zero-fill."""
    second = _Second()
    second.counts = dict(counts)
    return second


def _merge(into: defaultdict[str, int], counts: dict[str, int]) -> None:
    """Add ``counts`` to ``into``; a count that cannot be added spoils its metric's sum."""
    for name, count in counts.items():
        try:
            into[name] += count
        except TypeError:
            into[name] = _SPOILED


class _Owner:
    """Lives in one thread's local storage: once it is gone, so is the thread."""

    __slots__ = ("__weakref__",)


class _Slot:
    """One thread's counts of the second it is counting in.

    Only its own thread adds to it, holding ``lock``; the flusher takes the lock once per
    flush to collect a finished second, so the lock is in effect never contended.
    """

    __slots__ = ("counts", "lock", "next", "owner", "second")

    def __init__(self, owner: _Owner) -> None:
        self.lock = threading.Lock()
        self.counts: defaultdict[str, int] = defaultdict(int)
        self.second = 0  # the second ``counts`` belongs to
        self.next = -math.inf  # ``counts`` is used while clock() < next
        self.owner = weakref.ref(owner)  # dead once the thread has ended


class Counter:
    """Counts events per metric per second in memory; a background thread writes them.

    :param store: where closed seconds are written.
    :param clock: epoch seconds (``time.time`` by default); decides which second an
        event belongs to and when a second is closed.
    :param flush_interval: seconds between flushes, aligned on the clock's boundaries.
    :param max_buffered_seconds: closed seconds kept in memory while Redis is unreachable;
        the oldest beyond that are dropped (counted as ``buffer_full``).
    :param sync_clock: correct ``clock`` by the offset to the Redis server's clock. The
        default, ``None``, does so for the wall clock (``time.time``) and trusts any other
        clock as it is (a simulated clock in tests).

    Raises :class:`~cliffwatch.errors.ConfigError` for a bad argument. No method raises
    because Redis fails: failures are logged on the ``cliffwatch`` logger and retried.
    The counter survives ``fork()``: the child starts empty and restarts its flusher on
    its first event.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL_S,
        max_buffered_seconds: int = DEFAULT_MAX_BUFFERED_SECONDS,
        sync_clock: bool | None = None,
    ) -> None:
        if not isinstance(store, Store):
            raise ConfigError(f"store must be a cliffwatch Store, not {store!r}")
        if not callable(clock):
            raise ConfigError(f"clock must be a callable returning epoch seconds, not {clock!r}")
        if (
            isinstance(flush_interval, bool)
            or not isinstance(flush_interval, int | float)
            or not 0 < flush_interval <= 3600
        ):
            raise ConfigError(
                f"flush_interval must be a number of seconds in (0, 3600], not {flush_interval!r}"
            )
        if (
            isinstance(max_buffered_seconds, bool)
            or not isinstance(max_buffered_seconds, int)
            or max_buffered_seconds < 1
        ):
            raise ConfigError(
                f"max_buffered_seconds must be an integer >= 1, not {max_buffered_seconds!r}"
            )
        self.store = store
        self._clock = clock
        self._offset = 0.0  # added to clock(): the offset to the Redis server's clock
        self._server_clock = ServerClock(clock, store.server_time)
        if sync_clock is None:
            sync_clock = clock is time.time
        self._max_buffered = max_buffered_seconds
        self._flusher = Flusher(
            self.flush,
            self._final_flush,
            clock=self.now,
            interval=float(flush_interval),
            sync=self._sync_clock if sync_clock else None,
        )
        self._known: dict[str, int] = {}  # metric -> first second it is zero-filled in
        self._fill_cache: tuple[tuple[str, ...], int] | None = None
        self._dropped: dict[str, int] = {}
        self._unreported: dict[str, int] = {}  # drops not yet added to Redis
        self._started = False
        self._closed = False
        self._reset_state()
        _live_counters.add(self)

    def _reset_state(self) -> None:
        """Empty every buffer and make new locks (at creation and in a forked child)."""
        self._lock = threading.Lock()  # guards everything but the threads' slots
        self._flush_lock = threading.Lock()
        self._local = threading.local()  # .slot: this thread's _Slot; .owner: its _Owner
        self._slots: list[_Slot] = []  # every thread's slot, until the thread has ended
        self._open: dict[int, defaultdict[str, int]] = {}  # second -> counts, not closed
        self._pending: dict[int, _Second] = {}  # closed seconds not yet written
        self._fill_next: int | None = None  # next second to zero-fill; None: not filling
        self._restart_due = False
        self._failing = False
        self._emitter = _emitter_id()

    # -- hot path -------------------------------------------------------------------

    def add(self, name: str, count: int = 1) -> None:
        """Count ``count`` events of metric ``name`` in the current second of the clock.

        O(1), no I/O: one clock read (plus the server-clock offset) and a dict increment
        under the calling thread's own lock. Neither ``name`` nor ``count`` is checked
        here (the bus does that). A count that is not a non-negative integer spoils that
        metric's second, which is dropped when closed (``bad_count``).
        """
        now = self._clock() + self._offset
        try:
            slot = self._local.slot
        except AttributeError:  # this thread's first event
            slot = self._new_slot()
        lock = slot.lock
        lock.acquire()  # cheaper than `with` on this hot path
        try:
            if now < slot.next:
                slot.counts[name] += count
                return
            self._roll(slot, now)
            slot.counts[name] += count
        finally:
            lock.release()
        if self._restart_due:
            self._restart_after_fork()

    def _new_slot(self) -> _Slot:
        """Give the calling thread a slot of its own."""
        owner = _Owner()
        slot = _Slot(owner)
        self._local.owner = owner
        self._local.slot = slot
        with self._lock:
            self._slots.append(slot)
        return slot

    def _roll(self, slot: _Slot, now: float) -> None:
        """Park the slot's finished second with the open seconds and point it at the
        second ``now`` is in. After the final flush, leave its counts (undelivered,
        ``closed``) where they are. Holds ``slot.lock``."""
        second = math.floor(now)
        with self._lock:
            if self._closed:
                slot.next = math.inf
                return
            if slot.counts:
                self._park(slot.second, slot.counts)
                slot.counts = defaultdict(int)
            self._bound(second)
        slot.second = second
        slot.next = second + 1

    def _park(self, second: int, counts: defaultdict[str, int]) -> None:
        """Add one thread's counts of ``second`` to the open seconds. Holds ``_lock``."""
        bucket = self._open.get(second)
        if bucket is None:
            self._open[second] = counts
        else:
            _merge(bucket, counts)

    def _bound(self, current: int) -> None:
        """Keep at most ``max_buffered_seconds`` open seconds, ``current`` included (only
        reached when nothing is flushing). Holds ``_lock``."""
        while len(self._open) + (current not in self._open) > self._max_buffered:
            oldest = self._open.pop(min(s for s in self._open if s != current))
            lost = sum(v for v in oldest.values() if isinstance(v, int))
            self._count_drop("buffer_full", lost)

    # -- registry and introspection -------------------------------------------------

    def register(self, name: str) -> None:
        """Make metric ``name`` known: from the next second on, while the flusher runs,
        each closed second gets a field for it, ``0`` if nothing was counted."""
        first = math.floor(self.now()) + 1
        with self._lock:
            if name not in self._known:
                self._known[name] = first
                self._fill_cache = None
        if self._restart_due:
            self._restart_after_fork()

    def record_drop(self, reason: str, count: int = 1) -> None:
        """Count ``count`` events dropped for ``reason`` (see the module docstring)."""
        with self._lock:
            self._count_drop(reason, count)

    def _count_drop(self, reason: str, count: int) -> None:
        """Count a drop here and for the next flush to add to Redis. Holds ``_lock``."""
        self._dropped[reason] = self._dropped.get(reason, 0) + count
        self._unreported[reason] = self._unreported.get(reason, 0) + count

    def now(self) -> float:
        """The counter's clock: ``clock()`` plus the offset to the Redis server's clock."""
        return self._clock() + self._offset

    @property
    def clock_offset(self) -> float:
        """Seconds added to ``clock()`` to get the Redis server's clock (0 until measured)."""
        return self._offset

    def _sync_clock(self) -> bool:
        """Measure the offset to the Redis server's clock (in the flusher thread)."""
        ok = self._server_clock.sync()
        self._offset = self._server_clock.offset
        return ok

    @property
    def dropped(self) -> dict[str, int]:
        """Events not delivered, by reason (a copy)."""
        with self._lock:
            dropped = dict(self._dropped)
            # after the final flush, whatever a thread holds is never written
            slots = list(self._slots) if self._closed else []
        late = 0
        for slot in slots:
            with slot.lock:
                late += sum(v for v in slot.counts.values() if isinstance(v, int))
        if late:
            dropped["closed"] = dropped.get("closed", 0) + late
        return dropped

    @property
    def known(self) -> tuple[str, ...]:
        """The metrics this counter zero-fills, sorted."""
        with self._lock:
            return tuple(sorted(self._known))

    @property
    def buffered_seconds(self) -> int:
        """Closed seconds waiting to be written (more than one while Redis is away)."""
        with self._lock:
            return len(self._pending)

    @property
    def emitter(self) -> str:
        """``<host>:<pid>``, recorded in Redis with each flush."""
        return self._emitter

    @property
    def flusher_alive(self) -> bool:
        """Whether the background flusher thread is running."""
        return self._flusher.alive

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start zero-filling (from the next full second) and the background flusher.
        Does nothing if already started, or after :meth:`close`.

        Called in the main thread of a process that leaves SIGTERM to its default action
        (dying at once), it also installs a SIGTERM handler that first writes what every
        counter holds (waiting at most :data:`SIGTERM_FLUSH_S` in all), then dies of the
        signal as before. A handler the app installed is never replaced."""
        with self._lock:
            if self._closed:
                return
            self._started = True
            if self._fill_next is None:
                self._fill_next = math.floor(self.now()) + 1
        self._flusher.start()
        _flush_on_sigterm()

    def close(self, timeout: float = 2.0) -> bool:
        """Write everything counted (the current second too) and stop the flusher,
        waiting at most ``timeout`` seconds. Return ``True`` if that finished in time.

        Never raises and never keeps the process alive: the flusher is a daemon thread.
        Events still buffered when Redis fails during this final flush are dropped
        (``shutdown``); events added afterwards are dropped (``closed``).
        """
        return self._flusher.stop(timeout)

    def _restart_after_fork(self) -> None:
        with self._lock:
            due, self._restart_due = self._restart_due, False
        if due:
            self.start()

    def _after_fork_in_child(self) -> None:
        self._reset_state()
        self._dropped = {}
        self._unreported = {}
        self._flusher.reset_after_fork()
        self._restart_due = self._started and not self._closed

    # -- closing seconds and writing them -------------------------------------------

    def flush(self) -> bool:
        """Close every second before the current one and write all closed seconds to
        Redis. Return ``True`` if nothing is left to write, ``False`` if Redis failed (the
        seconds stay buffered for the next flush). Never raises because of Redis.
        Called by the flusher thread; callable directly (calls are serialized).
        """
        with self._flush_lock:
            now = math.floor(self.now())
            self._collect(now, final=False)
            with self._lock:
                self._close_seconds(now, final=False)
            return self._deliver(now) is None

    def _final_flush(self) -> None:
        with self._flush_lock:
            now = math.floor(self.now())
            self._collect(now, final=True)
            with self._lock:
                self._close_seconds(now, final=True)
                self._closed = True  # what threads count from now on is never written
                self._fill_next = None
            error = self._deliver(now, final=True)
            if error is None:
                return
            with self._lock:
                lost = sum(second.events() for second in self._pending.values())
                self._pending.clear()
                if lost:
                    self._count_drop("shutdown", lost)
            if lost:
                log.warning("cliffwatch: %d events not written at shutdown: %s", lost, error)

    def _collect(self, now: int, *, final: bool) -> None:
        """Park every thread's counts of the seconds before ``now`` (all of them if
        ``final``) with the open seconds; forget the slots of threads that have ended.
        Holds ``_flush_lock``."""
        with self._lock:
            if self._closed:
                return
            slots = list(self._slots)
        ended: set[_Slot] = set()
        for slot in slots:
            with slot.lock:
                if final or slot.next <= now:
                    if slot.counts:
                        with self._lock:
                            self._park(slot.second, slot.counts)
                        slot.counts = defaultdict(int)
                    slot.next = -math.inf  # its thread's next event starts a new second
                if slot.owner() is None and not slot.counts:
                    ended.add(slot)
        if ended:
            with self._lock:
                self._slots = [slot for slot in self._slots if slot not in ended]

    def _fill_for(self, second: int) -> tuple[str, ...]:
        """Metrics to zero-fill in ``second``. Holds ``_lock``."""
        if self._fill_cache is None:
            latest = max(self._known.values(), default=0)
            self._fill_cache = (tuple(sorted(self._known)), latest)
        names, latest = self._fill_cache
        if second >= latest:
            return names
        return tuple(name for name in names if self._known[name] <= second)

    def _close_seconds(self, now: int, *, final: bool) -> None:
        """Move counts of seconds before ``now`` (all of them if ``final``) to the pending
        seconds, zero-filling the seconds watched in full. Holds ``_lock``."""
        pending = self._pending
        if self._fill_next is not None:
            first = max(self._fill_next, now - self._max_buffered)
            for second in range(first, now):
                entry = pending.get(second)
                if entry is None:
                    pending[second] = _Second(self._fill_for(second))
                else:
                    entry.merge(_Second(self._fill_for(second)))
            self._fill_next = max(self._fill_next, now)
        for second in [s for s in self._open if final or s < now]:
            bucket = self._open.pop(second)
            for name, count in bucket.items():
                if not (isinstance(count, int) and count >= 0):
                    self._count_drop("bad_count", 1)
                    continue
                # A partial second (the one the process started or stopped in) would read
                # as a drop: its events go to the nearest full second instead.
                target = second
                registered = self._known.get(name)
                if registered is not None and second < registered:
                    target = registered
                elif final and second >= now:
                    target = second - 1
                if target >= now and not final:
                    self._open.setdefault(target, defaultdict(int))[name] += int(count)
                    continue
                entry = pending.get(target)
                if entry is None:
                    entry = pending[target] = _Second()
                entry.counts[name] = entry.counts.get(name, 0) + int(count)
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest pending seconds beyond ``max_buffered_seconds``. Holds ``_lock``."""
        excess = len(self._pending) - self._max_buffered
        if excess <= 0:
            return
        lost = 0
        for second in sorted(self._pending)[:excess]:
            lost += self._pending.pop(second).events()
        if lost:
            self._count_drop("buffer_full", lost)

    def _take_batch(self) -> list[tuple[int, _Second]]:
        """Remove and return the oldest pending seconds, about one round trip's worth."""
        batch: list[tuple[int, _Second]] = []
        fields = 0
        with self._lock:
            for second in sorted(self._pending):
                if batch and fields >= _FIELDS_PER_ROUND_TRIP:
                    break
                entry = self._pending.pop(second)
                batch.append((second, entry))
                fields += len(entry.fill) + len(entry.counts)
        return batch

    def _unreport(self, drops: dict[str, int]) -> None:
        """Put back drops a failed flush did not add to Redis."""
        with self._lock:
            for reason, count in drops.items():
                self._unreported[reason] = self._unreported.get(reason, 0) + count

    def _requeue(self, batch: list[tuple[int, _Second]]) -> None:
        with self._lock:
            for second, entry in batch:
                current = self._pending.get(second)
                if current is None:
                    self._pending[second] = entry
                else:
                    entry.merge(current)
                    self._pending[second] = entry
            self._trim()

    def _deliver(self, now: int, *, final: bool = False) -> StoreError | None:
        """Write the pending seconds, one round trip per batch, the drops not yet reported
        with the first; return the error that stopped it (the seconds not written stay
        pending, the drops unreported), if any. Holds ``_flush_lock``."""
        with self._lock:
            drops, self._unreported = self._unreported, {}
        while (batch := self._take_batch()) or drops:
            seconds = {second: entry.fields() for second, entry in batch}
            try:
                self.store.write_counts(seconds, emitter=self._emitter, now=now, drops=drops)
                drops = {}
            except CountsRefused as error:
                drops = {}
                self._unreport(error.refused_drops)
                if error.transient:  # out of memory, read-only...: retry what was refused
                    self._requeue(
                        [(second, _counted(counts)) for second, counts in error.refused.items()]
                    )
                    if not self._failing and not final:
                        self._failing = True
                        log.warning(
                            "cliffwatch: Redis refused counts for now (%s); keeping up to %d s "
                            "of counts in memory and retrying",
                            error,
                            self._max_buffered,
                        )
                    return error
                lost = sum(sum(counts.values()) for counts in error.refused.values())
                self.record_drop("redis_refused", lost)
                log.error("cliffwatch: %d events lost: %s", lost, error)
            except StoreError as error:
                self._requeue(batch)
                self._unreport(drops)
                if not self._failing and not final:
                    self._failing = True
                    log.warning(
                        "cliffwatch: cannot write counts (%s); keeping up to %d s of counts "
                        "in memory and retrying",
                        error,
                        self._max_buffered,
                    )
                return error
            except Exception:
                self._requeue(batch)
                self._unreport(drops)
                raise
        if self._failing:
            self._failing = False
            log.info("cliffwatch: Redis is back; buffered counts delivered")
        return None

    def __repr__(self) -> str:
        return f"<Counter {self._emitter} store={self.store!r}>"


_live_counters: weakref.WeakSet[Counter] = weakref.WeakSet()

SIGTERM_FLUSH_S = 2.0
"""At SIGTERM, the longest wait for the final flush before the process dies."""


def _on_sigterm(signum: int, frame: object) -> None:
    """Write what every counter holds (bounded), then die of SIGTERM as by default."""
    deadline = time.monotonic() + SIGTERM_FLUSH_S
    for counter in list(_live_counters):
        counter.close(timeout=max(0.0, deadline - time.monotonic()))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _flush_on_sigterm() -> None:
    """Install :func:`_on_sigterm` if SIGTERM has its default action and this is the main
    thread (the only one that may set handlers); otherwise do nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        pass


def _after_fork_in_child() -> None:
    for counter in list(_live_counters):
        counter._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
