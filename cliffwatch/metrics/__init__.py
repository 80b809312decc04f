"""Counting business events in the app: the bus, the in-process counter, the Redis store."""

from cliffwatch.metrics.bus import configure, emit, event, shutdown, signal
from cliffwatch.metrics.counter import Counter
from cliffwatch.metrics.store import Store

__all__ = ["Counter", "Store", "configure", "emit", "event", "shutdown", "signal"]
