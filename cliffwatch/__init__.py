"""cliffwatch: pages a team when a critical business metric falls off a cliff.

In the app::

    import cliffwatch

    cliffwatch.configure("redis://127.0.0.1:6379/0")

    @cliffwatch.event("orders.created")
    def create_order(...): ...

    cliffwatch.emit("signups.completed")
"""

from cliffwatch.metrics import configure, emit, event, shutdown, signal

__all__ = ["configure", "emit", "event", "shutdown", "signal"]
