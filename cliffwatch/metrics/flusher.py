"""The background thread that calls a flush function just after each second boundary,
and the offset to the Redis server's clock that it keeps measuring.

The thread is started on demand, is a daemon (it never keeps the process alive), is named
``cliffwatch-flusher``, backs off exponentially (capped) while the flush function
fails, and calls a final function once when stopped. When given a ``sync`` function it
calls it when it starts and then every :data:`SYNC_EVERY_S` seconds (every
:data:`SYNC_RETRY_S` after a failure), before a flush.

:class:`ServerClock` turns samples of the Redis server's ``TIME`` into an offset to add
to the local clock, so every app process buckets events by one clock (the server's),
however far (within :data:`MAX_OFFSET_S`) its own host clock is off.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

THREAD_NAME = "cliffwatch-flusher"

WAKE_LAG_S = 0.01
"""How long after a boundary the thread wakes, so the second before is surely closed."""

BACKOFF_FIRST_S = 0.5
"""Wait before the first retry of a failed flush; doubled on each further failure..."""

BACKOFF_CAP_S = 30.0
"""...up to this."""


SYNC_EVERY_S = 30.0
"""Seconds between two measurements of the offset to the Redis server's clock..."""

SYNC_RETRY_S = 5.0
"""...or after a measurement that failed (Redis away, or a round trip too slow)."""

MAX_RTT_S = 0.25
"""A ``TIME`` round trip slower than this is not used: its midpoint is too uncertain."""

MAX_OFFSET_S = 86_400.0
"""An offset beyond a day is taken as a broken sample (or clock), never applied."""

STEP_S = 1.0
"""A sample this far from the current offset means the host clock was stepped: it is
taken at once. Closer samples are smoothed (weight :data:`SMOOTHING`)."""

SMOOTHING = 0.25


def backoff_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failed flushes (``failures >= 1``)."""
    return min(BACKOFF_FIRST_S * 2.0 ** min(failures - 1, 32), BACKOFF_CAP_S)


class ServerClock:
    """The offset from a local clock to the Redis server's clock, from ``TIME`` samples.

    :param local: the local epoch clock the offset is added to.
    :param server_time: one round trip to Redis returning its epoch time (``TIME``);
        raises when Redis fails.

    :attr:`offset` is ``0.0`` until a first good sample, then the smoothed offset; a
    failed or implausible sample keeps the last good one. :meth:`sync` never raises.
    """

    def __init__(self, local: Callable[[], float], server_time: Callable[[], float]) -> None:
        self._local = local
        self._server_time = server_time
        self.offset = 0.0
        self.synced = False
        self.last_rtt: float | None = None
        self._warned = False

    def sample(self) -> tuple[float, float]:
        """One measurement: (offset, round trip), the server's time taken to be that of
        the midpoint of the round trip. Raises whatever ``server_time`` raises."""
        before = self._local()
        started = time.perf_counter()
        server = self._server_time()
        rtt = time.perf_counter() - started
        return server - (before + rtt / 2), rtt

    def sync(self) -> bool:
        """Measure once and update :attr:`offset`; return ``True`` if the sample was used.
        A failure is logged at debug level only (the flush reports Redis being away)."""
        try:
            offset, rtt = self.sample()
        except Exception as error:
            log.debug("cliffwatch: cannot read the Redis clock: %s", error)
            return False
        if rtt > MAX_RTT_S or not math.isfinite(offset):
            return False
        if abs(offset) > MAX_OFFSET_S:
            if not self._warned:
                self._warned = True
                log.warning(
                    "cliffwatch: this host's clock is %.0f s away from Redis's; not "
                    "correcting it (more than %.0f s means a broken clock)",
                    -offset,
                    MAX_OFFSET_S,
                )
            return False
        if not self.synced or abs(offset - self.offset) >= STEP_S:
            self.offset = offset
        else:
            self.offset += SMOOTHING * (offset - self.offset)
        self.synced = True
        self.last_rtt = rtt
        return True


class Flusher:
    """Calls ``flush()`` every ``interval`` seconds of ``clock``, just after the boundary.

    :param flush: returns ``True`` when it did its work, ``False`` to be retried after a
        backoff. If it raises, the error is logged and treated as ``False``.
    :param final: called once, in the thread, when :meth:`stop` is called; errors are
        logged.
    :param clock: epoch seconds; decides where the boundaries are. The thread sleeps on
        the wall clock, at most ``interval`` (plus a few ms) at a time.
    :param sync: called in the thread when it starts and every :data:`SYNC_EVERY_S`
        seconds (:data:`SYNC_RETRY_S` after it returned ``False``), before a flush; if it
        raises, the error is logged.
    """

    def __init__(
        self,
        flush: Callable[[], bool],
        final: Callable[[], None],
        *,
        clock: Callable[[], float],
        interval: float,
        sync: Callable[[], bool] | None = None,
    ) -> None:
        self._flush = flush
        self._sync = sync
        self._final = final
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the thread if it is not running (and :meth:`stop` was not called)."""
        with self._lock:
            if self._stopped or self.alive:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Have ``final`` run once in the flusher thread (a new one if none is running)
        and the thread end; wait at most ``timeout`` seconds for it.

        Return ``True`` if the thread ended in time. It is a daemon, so one that is still
        busy (a Redis that does not answer) cannot keep the process alive. Further calls
        only wait again; :meth:`start` does nothing after ``stop``.
        """
        with self._lock:
            thread = self._thread
            if not self._stopped:
                self._stopped = True
                self._stop.set()
                if thread is None or not thread.is_alive():
                    thread = threading.Thread(target=self._run_final, name=THREAD_NAME, daemon=True)
                    self._thread = thread
                    thread.start()
        if thread is None or thread is threading.current_thread():
            return thread is None
        thread.join(max(timeout, 0.0))
        return not thread.is_alive()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's thread (it does not exist here) so that
        :meth:`start` starts a new one. Only call it from an after-fork hook."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def _delay(self) -> float:
        interval = self._interval
        try:
            into = self._clock() % interval
        except Exception:
            log.exception("cliffwatch: the configured clock raised")
            return interval
        return min(max(interval - into, 0.0), interval) + WAKE_LAG_S

    def _maybe_sync(self, due: float) -> float:
        """Call ``sync`` if ``due`` (monotonic) has come; return when it is due next."""
        sync = self._sync
        now = time.monotonic()
        if sync is None or now < due:
            return due
        try:
            ok = sync()
        except Exception:
            log.exception("cliffwatch: measuring the Redis clock failed unexpectedly")
            ok = False
        return now + (SYNC_EVERY_S if ok else SYNC_RETRY_S)

    def _run(self) -> None:
        stop = self._stop
        failures = 0
        sync_due = self._maybe_sync(-math.inf)
        while True:
            delay = backoff_delay(failures) if failures else self._delay()
            if stop.wait(delay):
                break
            sync_due = self._maybe_sync(sync_due)
            try:
                done = self._flush()
            except Exception:
                log.exception("cliffwatch: flushing counts failed unexpectedly")
                done = False
            failures = 0 if done else failures + 1
        self._run_final()

    def _run_final(self) -> None:
        try:
            self._final()
        except Exception:
            log.exception("cliffwatch: the final flush failed unexpectedly")
