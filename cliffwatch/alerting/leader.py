"""Leader election among workers: a lease in Redis, with a fencing epoch.

Several workers may watch the same Redis; exactly one of them, the *leader*, opens and
closes incidents and delivers alerts. The others (*followers*) keep their detectors warm
(they read and learn every second) and deliver nothing, so one of them can take over at
once.

The lease is one key, ``Pleader`` (see :mod:`cliffwatch.metrics.keys`), set with
``SET NX PX`` to a random token. The leader renews it every ``renew_every`` seconds with a
compare-and-PEXPIRE (a one-key script: only the token's owner extends it); followers try
to take it every ``poll_every`` seconds. A leader killed with SIGKILL stops renewing and a
follower takes the lease at most ``ttl + poll_every`` seconds after the last renewal.

Fencing: whoever takes the lease also takes a new epoch (``INCR Pleader:epoch``). The
epoch is written into every state hash and outbox entry the leader writes, and a worker
that finds an epoch newer than its own (at renewal, in a state hash, in the outbox) stops
acting at once. On its own side, a leader counts its lease as held only until ``ttl -
margin`` seconds after it last *asked* to renew it (measured on the monotonic clock), so
a leader cut off from Redis stops acting before anyone else can take over. What this
cannot stop is a write already under way when the process was paused (a stop-the-world
pause between the check and the write); such a write carries the old epoch, and the next
leader refuses to act on state whose epoch is newer than its own, never older.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from ..errors import CliffwatchError, ConfigError
from ..metrics.store import Store

log = logging.getLogger("cliffwatch.leader")

LEASE_TTL_S = 8.0
"""Seconds the lease lives without renewal: a dead leader is replaced within this (plus
``POLL_EVERY_S``)."""
RENEW_EVERY_S = 2.0
"""How often the leader renews its lease."""
POLL_EVERY_S = 0.5
"""How often a follower tries to take the lease."""
MARGIN_S = 1.0
"""The leader stops acting this long before its lease could have expired in Redis."""


class LostLeadership(CliffwatchError):
    """This worker is not (or no longer) the leader: a newer epoch exists or its lease
    has lapsed. Whatever raised it did not write."""


class Leader:
    """This process's part in the election: holds, renews or waits for the lease.

    :param store: the Redis the workers share.
    :param ttl: seconds the lease lives without renewal.
    :param renew_every: seconds between renewals while leader.
    :param poll_every: seconds between attempts to take the lease while follower.
    :param monotonic: the clock lease validity is measured on.

    Raises :class:`ConfigError` unless ``0 < renew_every < ttl - MARGIN_S`` and
    ``poll_every > 0``. Redis errors during renewal are logged and retried; the lease is
    then held only until it could have expired.
    """

    def __init__(
        self,
        store: Store,
        *,
        ttl: float = LEASE_TTL_S,
        renew_every: float = RENEW_EVERY_S,
        poll_every: float = POLL_EVERY_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < renew_every < ttl - MARGIN_S:
            raise ConfigError(
                f"lease renewal every {renew_every!r} s must be > 0 and well within "
                f"the lease's {ttl!r} s"
            )
        if not poll_every > 0:
            raise ConfigError(f"poll_every must be > 0 seconds, not {poll_every!r}")
        self.store = store
        self.ttl = ttl
        self.renew_every = renew_every
        self.poll_every = poll_every
        self.monotonic = monotonic
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._epoch = 0
        self._valid_until = -1.0  # monotonic; the lease counts as held before this
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def epoch(self) -> int:
        """The fencing epoch taken with the lease (0 before the first)."""
        return self._epoch

    def holds(self) -> bool:
        """True while this process holds the lease (as far as it can know)."""
        with self._lock:
            return self.monotonic() < self._valid_until

    def check(self, seen: int | str | None = None) -> None:
        """Raise :class:`LostLeadership` unless this process holds the lease and
        ``seen`` (an epoch found in Redis, if any) is not newer than its own. Finding a
        newer epoch gives up the lease at once."""
        newer = bool(seen) and int(seen or 0) > self._epoch
        if newer:
            self._lose(f"found epoch {seen}, newer than this worker's {self._epoch}")
        if not self.holds():
            raise LostLeadership(f"not the leader (epoch {self._epoch})")

    def step(self) -> bool:
        """Renew the lease if held, else try to take it; return whether it is held.
        Redis errors are logged (the lease then lapses on its own)."""
        started = self.monotonic()
        try:
            if self.holds():
                held, newest = self.store.renew_lease(self.token, int(self.ttl * 1000))
                if not held:
                    self._lose("the lease was taken over")
                elif newest > self._epoch:
                    self._lose(f"epoch {newest} is newer than this worker's {self._epoch}")
                else:
                    self._valid(started)
            else:
                epoch = self.store.acquire_lease(self.token, int(self.ttl * 1000))
                if epoch is None and self._epoch:
                    # Lapsed here (Redis was away) but perhaps still ours there.
                    held, newest = self.store.renew_lease(self.token, int(self.ttl * 1000))
                    if held and newest == self._epoch:
                        self._valid(started)
                        log.warning("this worker is the leader again (epoch %d)", newest)
                elif epoch is not None:
                    with self._lock:
                        self._epoch = epoch
                    self._valid(started)
                    log.warning("this worker is now the leader (epoch %d)", epoch)
        except CliffwatchError as exc:
            log.warning("leader lease: %s", exc)
        return self.holds()

    def start(self) -> None:
        """Take part in the election from a daemon thread (one :meth:`step` at once,
        then one every ``renew_every`` or ``poll_every`` seconds) until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self.step()
        self._thread = threading.Thread(target=self._loop, name="cliffwatch-leader", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop the thread and (with ``release``) give the lease up so a follower takes
        over at once. Redis errors are logged: the lease then expires on its own."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if release and self.holds():
            with self._lock:
                self._valid_until = -1.0
            try:
                self.store.release_lease(self.token)
            except CliffwatchError as exc:
                log.warning("could not release the leader lease: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.renew_every if self.holds() else self.poll_every):
            self.step()

    def _valid(self, asked_at: float) -> None:
        with self._lock:
            self._valid_until = asked_at + self.ttl - MARGIN_S

    def _lose(self, why: str) -> None:
        with self._lock:
            was = self._valid_until > self.monotonic()
            self._valid_until = -1.0
        if was:
            log.warning("this worker is no longer the leader: %s", why)

    def __repr__(self) -> str:
        return f"<Leader {self.token} epoch={self._epoch} holds={self.holds()}>"
