"""Sharded workers: several workers split the metrics, each metric judged by one of them.

The metrics are cut into :data:`SHARDS` fixed shards by a stable hash of the name
(:func:`shard_of`: CRC-32 of the UTF-8 name, modulo the shard count; the same in every
process and every Python, unlike ``hash()``). A fixed count, rather than one shard per
worker, lets the work move a shard at a time: with 64 shards and up to a few dozen
workers each worker's share is within a shard or two of even.

Membership: every worker adds its token to ``Pworkers`` (see
:mod:`cliffwatch.metrics.keys`), a sorted set scored by the millisecond its membership
expires on the Redis server's clock, renewed every :data:`RENEW_EVERY_S`; the live
workers are the unexpired ones. So no worker's clock matters, and a worker killed with
SIGKILL drops out :data:`SHARD_TTL_S` after its last renewal.

Assignment: a shard stays with the live worker holding its lease while that worker
has fewer than ``ceil(SHARDS / N)`` shards (taken in shard order); every other shard
goes to the live worker with the highest ``blake2b(f"{shard}:{token}")`` (rendezvous,
or highest-random-weight, hashing) that has fewer than that yet (rendezvous with
bounded loads). Every worker computes it alone from the member list and the lease
holders (:func:`assignment`). So the workers start with the rendezvous split, 16 shards
each of 64 over 4 (plain rendezvous ranged from 12 to 20, and a worker with 20 ticks
25 % longer than the mean); a joining worker takes from each only what puts it over
the new bound; and a dead worker's shards are spread up to that bound, so no survivor
takes on more than ``ceil(SHARDS / (N - 1)) - SHARDS / N`` of them: 6 of 16 with 4
workers, where the rendezvous assignment alone, not knowing who holds what, gave one
survivor 7 or 8 in most runs (up to 10 of 16 in a simulation), and moved a few of the
survivors' own shards between them a minute later. A consistent-hash ring needs virtual
nodes for the same balance; slot ranges move half the shards on every change.

Exactly one judge: the membership views of two workers may disagree for a moment (one
has seen a join the other has not), so the assignment alone cannot promise that a metric
is judged once. Each shard therefore has a lease, ``Pshard:<n>`` (``SET NX PX`` to the
holder's token, renewed with a compare-and-PEXPIRE, like the leader lease of
:mod:`cliffwatch.alerting.leader`), and a fencing epoch, ``Pshard:<n>:epoch``
(``INCR`` by each worker that takes the lease). A worker judges a metric only while it
holds that metric's shard lease; the incidents it writes carry the shard's epoch
(``shard_epoch`` in the state hash) and a worker finding a newer one there gives the
shard up. A held lease counts as held only until ``ttl - MARGIN_S`` after its renewal was
last *asked* for (monotonic clock), so a worker cut off from Redis stops judging before
another can take over. (It keeps learning those metrics, deciding nothing, for
:data:`~cliffwatch.alerting.worker.LOST_GRACE_S`, so taking the shard back after a
Redis restart costs no re-learning.)

Hand-over: a worker takes the free leases of the shards assigned to it, renews the ones
it holds, and keeps judging a held shard that is now assigned elsewhere until the next
whole minute: then it saves that shard's detector snapshots (they are only valid at a
whole minute) and releases the lease, and the new owner restores them, refills the
seconds since from Redis and compares the result with the open incidents (no page
again, none lost). So a join moves load within about a minute with no second unjudged.
When a worker dies its leases expire after :data:`SHARD_TTL_S`; the new owners restore
the last snapshots (saved every minute:
:data:`~cliffwatch.alerting.worker.SHARDED_SNAPSHOT_EVERY_S`), catch up from Redis and
judge again (measured in ``BENCHMARKS.md``, "Sharded workers").

Global duties stay with the one leader of :mod:`cliffwatch.alerting.leader` (every
worker also runs for it): delivering the outbox, the "monitoring blind" check and the
heartbeat. A lone worker is the only member and holds every shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence

from ..errors import CliffwatchError, ConfigError
from ..metrics.store import Store
from .alert import no_data_metric
from .leader import LostLeadership

log = logging.getLogger("cliffwatch.shards")

SHARDS = 64
"""The fixed number of shards the metrics are split into. Changing it moves every
metric: stop all workers first."""
SHARD_TTL_S = 3.0
"""Seconds a shard lease (and a worker's membership) lives without renewal: a dead
worker's shards are free this long after its last renewal (a takeover must be done
within 10 s: this is most of the wait)."""
RENEW_EVERY_S = 0.5
"""How often a worker renews its membership and leases and tries to take free shards: a
renewal may come up to ``SHARD_TTL_S - MARGIN_S - RENEW_EVERY_S`` (1.5 s) late, say on
a busy machine, before the worker stops deciding for its shards."""
JOIN_WAIT_S = 2.0
"""A starting worker announces itself this long before it takes any shard."""
MARGIN_S = 1.0
"""A worker stops judging a shard this long before its lease could have expired."""


class LostShard(LostLeadership):
    """This worker does not (or no longer) hold the shard of the metric it was about to
    write: a newer epoch exists or its lease lapsed. Whatever raised it did not write."""


def shard_of(metric: str, shards: int = SHARDS) -> int:
    """The shard of ``metric``: CRC-32 of its UTF-8 name modulo ``shards``."""
    return zlib.crc32(metric.encode()) % shards


def assignment(
    members: Sequence[str], shards: int = SHARDS, holders: Sequence[str | None] = ()
) -> dict[str, list[int]]:
    """Each member's shards, as every worker computes them from the same member list
    and lease holders (``holders[n]``: the token holding shard ``n``'s lease, ``None``
    or missing if free): a shard stays with the member holding it while that one has
    fewer than ``ceil(shards / len(members))`` (in shard order); every other shard, in
    order, goes to the member of highest rendezvous weight that has fewer than that."""
    out: dict[str, list[int]] = {m: [] for m in members}
    if not members:
        return out
    cap = -(-shards // len(members))
    rest = []
    for n in range(shards):
        holder = holders[n] if n < len(holders) else None
        if holder in out and len(out[holder]) < cap:
            out[holder].append(n)
        else:
            rest.append(n)
    for n in rest:
        ranked = sorted(members, key=lambda m: _weight(n, m), reverse=True)
        owner = next(m for m in ranked if len(out[m]) < cap)
        out[owner].append(n)
    for mine in out.values():
        mine.sort()
    return out


def _weight(shard: int, member: str) -> bytes:
    return hashlib.blake2b(f"{shard}:{member}".encode(), digest_size=8).digest()


class ShardMap:
    """This worker's shards: its membership, the leases it holds and the ones it should.

    :param store: the Redis the workers share.
    :param shards: how many shards the metrics are split into (every worker must agree).
    :param ttl: seconds a lease and the membership live without renewal.
    :param renew_every: seconds between steps (renewals and attempts to take shards).
    :param monotonic: the clock lease validity is measured on.

    Raises :class:`ConfigError` unless ``0 < renew_every < ttl - MARGIN_S`` and
    ``shards >= 1``. Redis errors in a step are logged; held leases then count as held
    only until they could have expired.
    """

    def __init__(
        self,
        store: Store,
        *,
        shards: int = SHARDS,
        ttl: float = SHARD_TTL_S,
        renew_every: float = RENEW_EVERY_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < renew_every < ttl - MARGIN_S:
            raise ConfigError(
                f"shard lease renewal every {renew_every!r} s must be > 0 and well within "
                f"the lease's {ttl!r} s"
            )
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ConfigError(f"shards must be an integer >= 1, not {shards!r}")
        self.store = store
        self.shards = shards
        self.ttl = ttl
        self.renew_every = renew_every
        self.monotonic = monotonic
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.members: list[str] = []
        self.info: dict[str, object] = {}
        """What the worker judges, published with every step (see :meth:`publish`)."""
        self.on_taken: Callable[[list[int]], None] | None = None
        """Called from the lease thread with the shards a step has just taken (the
        worker starts reading their snapshots before its next tick takes them on)."""
        self._epochs: dict[int, int] = {}  # shard -> the epoch taken with its lease
        self._valid_until: dict[int, float] = {}  # shard -> monotonic deadline
        self._assigned: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the worker asks -------------------------------------------------------

    def shard_of(self, metric: str) -> int:
        """The metric's shard (a metric's "no data" incident is in the metric's shard:
        the worker judging the metric decides it)."""
        return shard_of(no_data_metric(metric) or metric, self.shards)

    def held(self) -> dict[int, int]:
        """Shard -> fencing epoch, for each shard whose lease this worker holds (as far as
        it can know)."""
        now = self.monotonic()
        with self._lock:
            return {n: e for n, e in self._epochs.items() if self._valid_until.get(n, -1) > now}

    def leaving(self) -> set[int]:
        """Held shards that are now assigned to another worker: to hand over at the next
        whole minute (:meth:`release`)."""
        with self._lock:
            assigned = set(self._assigned)
        return set(self.held()) - assigned

    def check(self, metric: str, seen: int | str | None = None) -> None:
        """Raise :class:`LostShard` unless this worker holds ``metric``'s shard and
        ``seen`` (a shard epoch found in Redis) is not newer than its own; a newer one
        gives the shard up at once."""
        n = self.shard_of(metric)
        epoch = self.held().get(n)
        if epoch is None:
            raise LostShard(f"shard {n} of {metric!r} is not held by this worker")
        if seen and int(seen) > epoch:
            self._drop([n], f"found epoch {seen} of shard {n}, newer than this worker's {epoch}")
            raise LostShard(f"shard {n} of {metric!r} has a newer owner (epoch {seen})")

    def epoch_of(self, metric: str) -> int:
        """The fencing epoch of ``metric``'s shard (0 if not held)."""
        with self._lock:
            return self._epochs.get(self.shard_of(metric), 0)

    def release(self, shards: Sequence[int]) -> None:
        """Give up these shards' leases at once (after saving their snapshots), so their
        new owner takes them on its next step. Redis errors are logged: the leases then
        expire on their own."""
        shards = list(shards)
        if not shards:
            return
        self._drop(shards, "")
        try:
            self.store.release_shards(self.token, shards)
        except CliffwatchError as exc:
            log.warning("could not release shards %s: %s", shards, exc)
        log.info("handed over %d shards", len(shards))

    # -- the lease loop -------------------------------------------------------------

    def step(self) -> dict[int, int]:
        """Renew the membership and the held leases, take the free shards assigned to
        this worker, publish :attr:`info`; return :meth:`held`. Redis errors are logged
        (the leases then lapse on their own)."""
        started = self.monotonic()
        ttl_ms = int(self.ttl * 1000)
        try:
            members = self.store.join_workers(self.token, ttl_ms)
            holders = self.store.shard_holders(self.shards)
            mine = set(assignment(members, self.shards, holders).get(self.token, ()))
            with self._lock:
                self.members = members
                self._assigned = mine
                held = list(self._epochs)
            renewed = self.store.renew_shards(self.token, held, ttl_ms)
            lost = []
            for n, (still, newest) in renewed.items():
                if still and newest == self._epochs.get(n):
                    with self._lock:
                        self._valid_until[n] = started + self.ttl - MARGIN_S
                else:
                    lost.append(n)
            if lost:
                self._drop(lost, "the lease was taken over or lapsed")
            wanted = sorted(mine - set(self._epochs))
            taken = self.store.take_shards(self.token, wanted, ttl_ms)
            if taken:
                with self._lock:
                    for n, epoch in taken.items():
                        self._epochs[n] = epoch
                        self._valid_until[n] = started + self.ttl - MARGIN_S
                log.info(
                    "took %d shards (now %d of %d)", len(taken), len(self._epochs), self.shards
                )
                if self.on_taken is not None:
                    try:
                        self.on_taken(sorted(taken))
                    except Exception:  # the leases matter more than reading ahead
                        log.exception("reading ahead for shards %s failed", sorted(taken))
            self.publish()
        except CliffwatchError as exc:
            log.warning("shard leases: %s", exc)
        return self.held()

    def publish(self) -> None:
        """Write :attr:`info` and the held shards to ``Pworkers:info``. Raises
        ``StoreError``."""
        info = {**self.info, "shards": len(self.held()), "pid": os.getpid()}
        self.store.set_worker_info(self.token, json.dumps(info, sort_keys=True))

    def start(self) -> None:
        """Take part from a daemon thread until :meth:`stop`: join the members, wait
        :data:`JOIN_WAIT_S` (so workers started together see each other and split the
        shards at once, rather than the first taking them all and handing most over a
        minute later), one :meth:`step`, then one every ``renew_every`` seconds. A Redis
        error while joining is logged (the steps try again)."""
        if self._thread is not None:
            return
        self._stop.clear()
        try:
            self.store.join_workers(self.token, int(self.ttl * 1000))
        except CliffwatchError as exc:
            log.warning("shard leases: %s", exc)
        self._stop.wait(JOIN_WAIT_S)
        self.step()
        self._thread = threading.Thread(target=self._loop, name="cliffwatch-shards", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop the thread and (with ``release``) give up every lease and the membership,
        so the other workers take the shards over at once. Redis errors are logged."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if not release:
            return
        with self._lock:
            shards = list(self._epochs)
        self._drop(shards, "")
        try:
            self.store.release_shards(self.token, shards)
            self.store.leave_workers(self.token)
        except CliffwatchError as exc:
            log.warning("could not release the shards: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.renew_every):
            self.step()

    def _drop(self, shards: Sequence[int], why: str) -> None:
        with self._lock:
            for n in shards:
                self._epochs.pop(n, None)
                self._valid_until.pop(n, None)
        if why:
            log.warning("gave up shards %s: %s", list(shards), why)

    def __repr__(self) -> str:
        return f"<ShardMap {self.token} holds={len(self.held())}/{self.shards}>"
