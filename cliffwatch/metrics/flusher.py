"""The background thread that calls a flush function just after each second boundary.

It is started on demand, is a daemon (it never keeps the process alive), is named
``cliffwatch-flusher``, backs off exponentially (capped) while the flush function
fails, and calls a final function once when stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

THREAD_NAME = "cliffwatch-flusher"

WAKE_LAG_S = 0.01
"""How long after a boundary the thread wakes, so the second before is surely closed."""

BACKOFF_FIRST_S = 0.5
"""Wait before the first retry of a failed flush; doubled on each further failure..."""

BACKOFF_CAP_S = 30.0
"""...up to this."""


def backoff_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failed flushes (``failures >= 1``)."""
    return min(BACKOFF_FIRST_S * 2.0 ** min(failures - 1, 32), BACKOFF_CAP_S)


class Flusher:
    """Calls ``flush()`` every ``interval`` seconds of ``clock``, just after the boundary.

    :param flush: returns ``True`` when it did its work, ``False`` to be retried after a
        backoff. If it raises, the error is logged and treated as ``False``.
    :param final: called once, in the thread, when :meth:`stop` is called; errors are
        logged.
    :param clock: epoch seconds; decides where the boundaries are. The thread sleeps on
        the wall clock, at most ``interval`` (plus a few ms) at a time.
    """

    def __init__(
        self,
        flush: Callable[[], bool],
        final: Callable[[], None],
        *,
        clock: Callable[[], float],
        interval: float,
    ) -> None:
        self._flush = flush
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

    def _run(self) -> None:
        stop = self._stop
        failures = 0
        while True:
            delay = backoff_delay(failures) if failures else self._delay()
            if stop.wait(delay):
                break
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
