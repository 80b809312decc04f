"""The event bus: named blinker signals, and the one counter they feed in this process.

App code emits events by name (:func:`emit`, :func:`event`); each name is a
:class:`blinker.NamedSignal` in the cliffwatch namespace (:func:`signal`), whose first
receiver counts the event in the process's :class:`~cliffwatch.metrics.counter.Counter`
(set up by :func:`configure`). App observers may connect to the same signals; they run
after the counting receiver, in the order they connected.

Event names are 1-200 characters of ``[a-z0-9_.-]``, checked once per name. The
decorator and :func:`signal` raise :class:`~cliffwatch.errors.EventNameError` for a bad
name (a mistake in code, best caught at import time); :func:`emit` never raises into the
app, so it drops the event instead, logs one warning per name and counts the drop.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from blinker import NamedSignal, Namespace

from cliffwatch.errors import ConfigError, EventNameError
from cliffwatch.metrics.counter import (
    DEFAULT_FLUSH_INTERVAL_S,
    DEFAULT_MAX_BUFFERED_SECONDS,
    Counter,
)
from cliffwatch.metrics.keys import DEFAULT_PREFIX
from cliffwatch.metrics.store import DEFAULT_RETENTION_S, Store

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MAX_METRICS = 1000
"""Distinct metric names counted per process; events of further names are dropped."""

_NAME = re.compile(r"[a-z0-9_.-]{1,200}")
_MAX_REMEMBERED_REJECTS = 1000
_OBSERVER_ERROR_LOG_EVERY_S = 60.0


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid event name, else raise ``EventNameError`` naming it."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    raise EventNameError(
        f"invalid event name {name!r}: use 1-200 characters of a-z, 0-9, '_', '.', '-'"
    )


class _OrderedIds(dict[Any, None]):
    """An insertion-ordered set (dict keys), so receivers run in the order they connected."""

    __slots__ = ()

    def add(self, item: Any) -> None:
        self[item] = None

    def discard(self, item: Any) -> None:
        self.pop(item, None)


class EventSignal(NamedSignal):
    """A blinker ``NamedSignal`` that calls its receivers in the order they connected.

    Its first receiver is cliffwatch's own (:meth:`connect_first`). While that is the
    only receiver, :meth:`send` calls it directly: the same call and the same return
    value as blinker's generic dispatch, at a fraction of the cost.
    """

    set_class = _OrderedIds  # type: ignore[assignment]

    _first: Callable[..., Any] | None = None
    _first_id: object = None

    def connect_first(self, receiver: Callable[..., Any]) -> None:
        """Connect the function ``receiver`` (strongly) before anything else is connected."""
        if self.receivers:
            raise RuntimeError(f"signal {self.name!r} already has receivers")
        self.connect(receiver, weak=False)
        self._first = receiver
        self._first_id = id(receiver)  # blinker's id of a plain function

    def send(
        self,
        sender: Any | None = None,
        /,
        *,
        _async_wrapper: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Callable[..., Any], Any]]:
        """As :meth:`blinker.Signal.send`: call every receiver (cliffwatch's first) with
        ``sender`` and ``kwargs``; an exception of a receiver propagates."""
        receivers = self.receivers
        first = self._first
        if (
            first is not None
            and len(receivers) == 1
            and self._first_id in receivers
            and not self.is_muted
        ):
            return [(first, first(sender, **kwargs))]
        return super().send(sender, _async_wrapper=_async_wrapper, **kwargs)


events = Namespace()
"""The cliffwatch namespace: event name -> its :class:`EventSignal`."""

_lookup = events.get
_lock = threading.Lock()
_counter: Counter | None = None
_max_metrics = DEFAULT_MAX_METRICS
_counted: set[str] = set()  # names whose signal counts; at most _max_metrics of them
_rejected: dict[object, str] = {}  # name -> drop reason, remembered for emit()
_warned_cap = False
_observer_errors: dict[str, float] = {}  # name -> monotonic time of the last logged error


def active_counter() -> Counter | None:
    """The counter set up by the last :func:`configure`, or ``None``."""
    return _counter


# -- receivers --------------------------------------------------------------------------


def _counting_receiver(name: str) -> Callable[..., None]:
    def count_event(sender: object, count: int = 1, **_: object) -> None:
        counter = _counter
        if counter is None:
            return
        if count.__class__ is int and count >= 0:
            try:
                counter.add(name, count)
            except Exception:
                log.exception("cliffwatch: counting an event of %r failed", name)
        else:  # emit(name, count="3"): the app's mistake; dropped, counted, never raised
            counter.record_drop("bad_count")

    return count_event


def _dropping_receiver(name: str) -> Callable[..., None]:
    def drop_event(sender: object, count: int = 1, **_: object) -> None:
        _record_drop("too_many_metrics", count)

    return drop_event


def _record_drop(reason: str, count: object) -> None:
    counter = _counter
    if counter is not None:
        counter.record_drop(reason, count if isinstance(count, int) and count > 0 else 1)


# -- registry ---------------------------------------------------------------------------


def _admit(name: str) -> EventSignal | None:
    """The signal of a valid ``name``, created (and the metric made known) on first use.
    ``None`` if the name is new and the ``max_metrics`` cap is reached."""
    global _warned_cap
    with _lock:
        found = events.get(name)
        if found is not None:
            return cast(EventSignal, found)
        if len(_counted) >= _max_metrics:
            if not _warned_cap:
                _warned_cap = True
                log.warning(
                    "cliffwatch: more than %d metric names in this process; events of %r "
                    "and any further new name are not counted (max_metrics)",
                    _max_metrics,
                    name,
                )
            return None
        sig = EventSignal(name)
        sig.connect_first(_counting_receiver(name))
        _counted.add(name)
        events[name] = sig  # published only once the counting receiver is connected
        if _counter is not None:
            _counter.register(name)
        return sig


def _uncounted(name: str) -> EventSignal:
    """A signal for a name beyond the cap: it carries events to app observers only."""
    with _lock:
        found = events.get(name)
        if found is None:
            found = EventSignal(name)
            found.connect_first(_dropping_receiver(name))
            events[name] = found
        return cast(EventSignal, found)


def _reject(name: object, reason: str, count: object) -> None:
    _record_drop(reason, count)
    try:
        if name in _rejected:
            return
        if len(_rejected) < _MAX_REMEMBERED_REJECTS:
            _rejected[name] = reason
    except TypeError:  # unhashable: not remembered, warned about each time
        pass
    if reason == "invalid_name":
        log.warning("cliffwatch: dropped events of invalid event name %r", name)


def _emit_new(name: object, count: object) -> EventSignal | None:
    """emit()'s slow path: the first event of a name (or one that was dropped before)."""
    reason = _rejected.get(name)
    if reason is not None:
        _record_drop(reason, count)
        return None
    try:
        valid = validate_name(name)
    except EventNameError:
        _reject(name, "invalid_name", count)
        return None
    sig = _admit(valid)
    if sig is None:
        _reject(name, "too_many_metrics", count)
    return sig


def _observer_failed(name: object) -> None:
    """Log an exception raised while sending an event (by an app observer), at most once
    a minute per event name."""
    key = name if isinstance(name, str) else repr(name)
    now = time.monotonic()
    last = _observer_errors.get(key)
    if last is not None and now - last < _OBSERVER_ERROR_LOG_EVERY_S:
        return
    _observer_errors[key] = now
    log.exception(
        "cliffwatch: an observer of event %r raised (the event was counted; further "
        "errors for this event are logged at most once a minute)",
        name,
    )


# -- public API -------------------------------------------------------------------------


def emit(name: str, count: int = 1) -> None:
    """Send ``count`` events named ``name`` through the bus (counted, then app observers).

    Never raises and never does I/O. Before :func:`configure` (and after
    :func:`shutdown`) nothing is counted, but app observers still receive the event.
    An invalid name, or a new name beyond the ``max_metrics`` cap, is dropped: counted in
    :attr:`Counter.dropped <cliffwatch.metrics.counter.Counter.dropped>` and logged once
    as a warning. An exception raised by an app observer is logged on the ``cliffwatch``
    logger (at most once a minute per event) and swallowed; observers connected after
    it do not run for that event.
    """
    try:
        sig = _lookup(name)
        if sig is None:
            sig = _emit_new(name, count)
            if sig is None:
                return
        sig.send(name, count=count)
    except Exception:
        if isinstance(name, str):
            _observer_failed(name)
        else:
            _reject(name, "invalid_name", count)


def _sender(name: str) -> Callable[..., Any]:
    """The send of ``name``'s signal, for the decorator (validates the name)."""
    sig = _admit(validate_name(name))
    if sig is None:
        sig = _uncounted(name)
    return sig.send


def event(name: str) -> Callable[[F], F]:
    """Decorate a function (sync or async, or a method) to emit ``name`` once each time a
    call returns normally; a call that raises emits nothing.

    Registers the metric as known to this process (it is zero-filled from now on).
    Raises ``EventNameError`` naming the value if ``name`` is not a valid event name,
    ``TypeError`` if what is decorated is not callable. A generator function emits when
    the call returns the generator. Exceptions of app observers are logged, not raised.
    """
    send = _sender(name)

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"@event({name!r}) decorates functions, not {fn!r}")
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def emitting_async(*args: Any, **kwargs: Any) -> Any:
                result = await fn(*args, **kwargs)
                try:
                    send(name, count=1)
                except Exception:
                    _observer_failed(name)
                return result

            return cast(F, emitting_async)

        @functools.wraps(fn)
        def emitting(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            try:
                send(name, count=1)
            except Exception:
                _observer_failed(name)
            return result

        return cast(F, emitting)

    return decorate


def signal(name: str) -> NamedSignal:
    """The blinker signal behind event ``name``, for app observers:
    ``signal("orders.created").connect(on_order)``. Observers are called as
    ``observer(name, count=n)`` after cliffwatch has counted the event.

    Registers the metric as known (it is zero-filled from now on). Raises
    ``EventNameError`` naming the value for an invalid name. Beyond the ``max_metrics``
    cap the signal still reaches observers, but its events are not counted (one warning).
    """
    valid = validate_name(name)
    return _admit(valid) or _uncounted(valid)


_OPTIONS = (
    "prefix",
    "flush_interval",
    "store",
    "clock",
    "max_buffered_seconds",
    "max_metrics",
    "retention_s",
)


def configure(redis_url: str | None = None, **options: Any) -> Counter:
    """Count this process's events and flush them to Redis every second from now on.

    :param redis_url: default: env ``CLIFFWATCH_REDIS_URL``, then
        ``redis://127.0.0.1:6379/0``. Not contacted here: a Redis that is down is
        retried in the background, buffering counts meanwhile.
    :param options:
        ``prefix`` key prefix (env ``CLIFFWATCH_PREFIX``, default ``"cliffwatch:"``);
        ``flush_interval`` seconds between flushes (default 1.0);
        ``store`` a ready :class:`~cliffwatch.metrics.store.Store` to use instead of a URL
        (for instance over fakeredis);
        ``clock`` callable returning epoch seconds (default ``time.time``);
        ``max_buffered_seconds`` closed seconds kept while Redis is unreachable (600);
        ``max_metrics`` distinct metric names counted in this process (1000);
        ``retention_s`` seconds of per-second history Redis keeps (7200).

    Calling it again replaces the previous setup: the previous counter writes what it
    holds in the background and stops. Returns the new counter. Raises
    :class:`~cliffwatch.errors.ConfigError` for an unknown option (naming it), a bad
    value, or an unusable URL (password masked).
    """
    global _counter, _max_metrics, _rejected
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown configure() option {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(_OPTIONS)}"
        )
    max_metrics = options.get("max_metrics", DEFAULT_MAX_METRICS)
    if isinstance(max_metrics, bool) or not isinstance(max_metrics, int) or max_metrics < 1:
        raise ConfigError(f"max_metrics must be an integer >= 1, not {max_metrics!r}")
    store = _store(redis_url, options)
    counter = Counter(
        store,
        clock=options.get("clock", time.time),
        flush_interval=options.get("flush_interval", DEFAULT_FLUSH_INTERVAL_S),
        max_buffered_seconds=options.get("max_buffered_seconds", DEFAULT_MAX_BUFFERED_SECONDS),
    )
    with _lock:
        for name in _counted:
            counter.register(name)
        _max_metrics = max_metrics
        # Names dropped for the cap get another chance under the new one.
        _rejected = {k: v for k, v in _rejected.items() if v != "too_many_metrics"}
        previous, _counter = _counter, counter
    counter.start()
    if previous is not None:
        previous.close(timeout=0)
    return counter


def _store(redis_url: str | None, options: dict[str, Any]) -> Store:
    store = options.get("store")
    if store is None:
        url = redis_url or os.environ.get("CLIFFWATCH_REDIS_URL") or DEFAULT_REDIS_URL
        prefix = options.get("prefix", os.environ.get("CLIFFWATCH_PREFIX") or DEFAULT_PREFIX)
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(f"prefix must be a non-empty string, not {prefix!r}")
        return Store.from_url(
            url, prefix=prefix, retention_s=options.get("retention_s", DEFAULT_RETENTION_S)
        )
    if not isinstance(store, Store):
        raise ConfigError(f"store must be a cliffwatch Store, not {store!r}")
    if redis_url is not None:
        raise ConfigError("configure() takes a redis_url or a store, not both")
    if "prefix" in options and options["prefix"] != store.prefix:
        raise ConfigError(
            f"prefix {options['prefix']!r} differs from the store's prefix {store.prefix!r}"
        )
    if "retention_s" in options and options["retention_s"] != store.retention_s:
        raise ConfigError("with a store, set retention_s on the Store itself")
    return store


def shutdown(timeout: float = 2.0) -> bool:
    """Write everything counted so far and stop the flusher, waiting at most ``timeout``
    seconds; afterwards :func:`emit` counts nothing until the next :func:`configure`.

    Return ``True`` if the final flush finished in time. Never raises. Runs at interpreter
    exit; a process that ends with ``os._exit()`` (a ``multiprocessing`` child, for
    instance) must call it itself to send its last second.
    """
    global _counter
    with _lock:
        counter, _counter = _counter, None
    if counter is None:
        return True
    return counter.close(timeout)


def _reset_registry() -> None:
    """Shut down and forget every name, as in a fresh process (for test suites)."""
    global _warned_cap, _max_metrics
    shutdown(timeout=5.0)
    with _lock:
        events.clear()
        _counted.clear()
        _rejected.clear()
        _observer_errors.clear()
        _warned_cap = False
        _max_metrics = DEFAULT_MAX_METRICS


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)
