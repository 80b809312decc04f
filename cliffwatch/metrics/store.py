"""Redis access shared by the app side (writing counts) and the worker (reading them).

Every method talks to Redis in one pipelined round trip, a few in two
(``transaction=False``: no MULTI/EXEC; the only scripts are the leases' (the leader's
and the shards') compare-and-renew and compare-and-delete and the worker membership's
join, each on one key), and every Redis failure surfaces as a
:class:`~cliffwatch.errors.StoreError` with a one-line message that names the server but
never its password. Key names come from :mod:`cliffwatch.metrics.keys`.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import hiredis
import numpy as np
import redis

from cliffwatch.errors import ConfigError, StoreError
from cliffwatch.metrics.connect import Client, connect
from cliffwatch.metrics.connect import mask_url as mask_url
from cliffwatch.metrics.keys import DEFAULT_PREFIX, Keys

DEFAULT_RETENTION_S = 7200
"""Seconds a per-minute hash of counts lives after this process first writes it."""

_MAX_COMMANDS_PER_ROUND_TRIP = 50_000
_BATCH = 10_000  # commands per round trip when writing many metrics' keys
"""Bigger requests (an hour of history for thousands of metrics) are split, to bound memory."""

_SECONDS_PER_MINUTE = 60


_TRANSIENT_REFUSALS = (
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
)
"""Error replies that say "not now" (out of memory, a replica after failover, loading)..."""

_TRANSIENT_ERRORS = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)
"""...as redis-py raises them (it strips the code from the message)."""


def _transient(error: BaseException) -> bool:
    return isinstance(error, _TRANSIENT_ERRORS) or str(error).startswith(_TRANSIENT_REFUSALS)


class CountsRefused(StoreError):
    """Redis answered a :meth:`Store.write_counts` round trip but refused some of its
    commands (a key of the wrong type, out of memory). The accepted commands are applied,
    so writing the same counts again would count them twice.

    ``refused`` holds the counts Redis did not apply (second -> metric -> count) and
    ``refused_drops`` the drop counts it did not apply; ``transient`` is true when every
    refusal says "not now" (OOM, READONLY, LOADING, BUSY...), so writing exactly those
    again later counts nothing twice."""

    def __init__(
        self,
        message: str,
        refused: dict[int, dict[str, int]] | None = None,
        refused_drops: dict[str, int] | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.refused = refused or {}
        self.refused_drops = refused_drops or {}
        self.transient = transient


def _describe(client: Client) -> str:
    """Name the server a client talks to, without credentials."""
    try:
        kwargs = client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    except AttributeError:  # a RedisCluster has one pool per node
        return "Redis"
    if "path" in kwargs:
        return f"Redis at unix://{kwargs['path']}"
    if "host" in kwargs:
        return f"Redis at {kwargs['host']}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    return "Redis"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _text_hash(raw: Any) -> dict[str, str]:
    """An HGETALL reply as text: a dict (RESP3, or a client's callback) or the flat
    ``[field, value, ...]`` list of RESP2."""
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    return {_text(k): _text(v) for k, v in pairs}


class Store:
    """Per-second counts, alert state and detector snapshots of metrics, in one Redis.

    :param client: a ready ``redis.Redis`` or ``RedisCluster`` (see
        :mod:`cliffwatch.metrics.connect`; a ``fakeredis.FakeRedis`` works too); it may
        or may not decode responses. Nothing is sent to it until a method is called.
    :param prefix: put in front of every key (see :mod:`cliffwatch.metrics.keys`).
    :param retention_s: seconds a per-minute hash of counts lives: its EXPIRE is set when
        this ``Store`` first writes the key.

    Methods raise :class:`~cliffwatch.errors.StoreError` when Redis cannot be reached or
    answers with an error. A ``Store`` may be shared by threads.
    """

    def __init__(
        self,
        client: Client,
        prefix: str = DEFAULT_PREFIX,
        retention_s: int = DEFAULT_RETENTION_S,
    ) -> None:
        if not isinstance(prefix, str):
            raise ConfigError(f"prefix must be a string, not {prefix!r}")
        if isinstance(retention_s, bool) or not isinstance(retention_s, int) or retention_s < 60:
            raise ConfigError(f"retention_s must be an integer >= 60, not {retention_s!r}")
        self.client = client
        self.keys = Keys(prefix)
        self.retention_s = retention_s
        self._where = _describe(client)
        self._lock = threading.Lock()
        # What this process has already told Redis, so it is said once: minute -> metrics
        # whose hash for that minute has its EXPIRE set, and the names added to Pmetrics.
        self._expiring: dict[int, set[str]] = {}
        self._announced: set[str] = set()
        _live_stores.add(self)

    @property
    def prefix(self) -> str:
        """The key prefix."""
        return self.keys.prefix

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        *,
        retention_s: int = DEFAULT_RETENTION_S,
        **client_options: Any,
    ) -> Store:
        """Build a ``Store`` over a new client for ``url``: ``redis://``, ``rediss://``,
        ``unix://``, ``redis+cluster://``, ``redis+sentinel://`` or ``redis+twemproxy://``
        (see :mod:`cliffwatch.metrics.connect`). Does not connect: a Redis that is down is
        only noticed by the first call that needs it.

        ``client_options`` go to the client (defaults: 2 s to connect, 5 s per reply).
        Raises :class:`~cliffwatch.errors.ConfigError` naming the URL (password masked) if
        it cannot be used.
        """
        client = connect(url, **client_options)
        store = cls(client, prefix=prefix, retention_s=retention_s)
        store._where = f"Redis at {mask_url(url)}"
        return store

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as error:
            raise StoreError(f"{doing} failed on {self._where}: {_one_line(error)}") from None

    def _round_trip(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one pipelined round trip; return their raw replies.

        On one server (plain, TLS, Sentinel, twemproxy) the commands are packed and the
        replies read on one pooled connection, with redis-py's own retry of a dropped
        connection: its ``Pipeline`` costs twice as much per command (measured with
        25,000 HMGETs: 290 ms against 150 ms), and a worker's tick is mostly such
        reads. The commands are packed by hiredis itself, without redis-py's wrapper
        around it, which costs three times as much (25,000 HMGETs: 0.19-0.24 s against
        0.04-0.08 s). A ``RedisCluster`` needs its pipeline, which routes each command
        to its node. An error reply raises (after the connection is dropped, since
        replies were left unread). Call inside :meth:`_errors`."""
        if not isinstance(self.client, redis.Redis):
            cluster: Any = self.client  # redis-py leaves the cluster client untyped
            pipe = cluster.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(pipe.execute())
        try:
            packed: list[bytes] | None = [b"".join(map(hiredis.pack_command, commands))]
        except TypeError:  # an argument hiredis cannot take: redis-py's packing says which
            packed = None
        pool = self.client.connection_pool
        conn: Any = pool.get_connection()

        def send_and_read() -> list[Any]:
            conn.send_packed_command(packed if packed is not None else conn.pack_commands(commands))
            return [conn.read_response() for _ in commands]

        def drop(_error: Exception) -> None:
            conn.disconnect()

        try:
            return list(conn.retry.call_with_retry(send_and_read, drop))
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def ping(self) -> None:
        """Check that Redis answers. Raises ``StoreError`` with a one-line reason if not."""
        with self._errors("PING"):
            self.client.ping()

    def close(self) -> None:
        """Close the client's connections. The ``Store`` reconnects if used again."""
        self.client.close()

    def write_counts(
        self,
        seconds: Mapping[int, Mapping[str, int]],
        emitter: str | None = None,
        *,
        now: int | None = None,
        drops: Mapping[str, int] | None = None,
    ) -> None:
        """Add per-second counts (and drop counts) to Redis in one pipelined round trip.

        ``seconds`` maps an epoch second to ``{metric: count}``; a count of ``0`` still
        writes the field (zero events, as opposed to no data). Counts are added with
        HINCRBY, so several processes can write the same second. The first time this
        ``Store`` writes a minute's hash it sets the hash's EXPIRE and the first time it
        writes a metric it adds the name to the ``metrics`` set. With ``emitter``
        (``<host>:<pid>``) it records ``now`` (default: the wall clock) as that process's
        last flush. ``drops`` (reason -> events) are added to the ``drops`` hash.

        Raises ``StoreError`` if the round trip fails (commands that reached Redis are not
        undone, so a retry after a dropped connection may count some events twice), and
        :class:`CountsRefused` if Redis refused some commands.
        """
        pipe = self.client.pipeline(transaction=False)
        new_ttls: list[tuple[int, str]] = []
        new_names: set[str] = set()
        # what each command adds, by its index in the pipeline (None: not a count)
        adds: list[tuple[int, str, int] | tuple[None, str, int] | None] = []
        with self._lock:  # only reads the bookkeeping; no I/O under the lock
            for second, counts in seconds.items():
                minute = second - second % _SECONDS_PER_MINUTE
                field = second - minute
                have_ttl = self._expiring.get(minute, ())
                for metric, count in counts.items():
                    key = self.keys.seconds(metric, minute)
                    pipe.hincrby(key, field, count)
                    adds.append((second, metric, count))
                    if metric not in have_ttl:
                        new_ttls.append((minute, metric))
                    if metric not in self._announced:
                        new_names.add(metric)
        for minute, metric in dict.fromkeys(new_ttls):
            pipe.expire(self.keys.seconds(metric, minute), self.retention_s)
        if new_names:
            pipe.sadd(self.keys.metrics, *sorted(new_names))
        if emitter is not None:
            stamp = int(time.time()) if now is None else int(now)
            pipe.hset(self.keys.emitters, emitter, stamp)
        adds.extend([None] * (len(pipe) - len(adds)))
        for reason, count in (drops or {}).items():
            if count:
                pipe.hincrby(self.keys.drops, reason, count)
                adds.append((None, reason, count))
        if not len(pipe):
            return
        try:
            with self._errors("writing counts"):
                results = pipe.execute(raise_on_error=False)
        except StoreError:
            # Redis may come back empty (restarted without persistence): say it all again.
            with self._lock:
                self._announced.clear()
                self._expiring.clear()
            raise
        refused = [result for result in results if isinstance(result, Exception)]
        if refused:
            not_applied: dict[int, dict[str, int]] = {}
            lost_drops: dict[str, int] = {}
            for add, result in zip(adds, results, strict=True):
                if add is None or not isinstance(result, Exception):
                    continue
                at, name, value = add
                if at is None:
                    lost_drops[name] = value
                else:
                    not_applied.setdefault(at, {})[name] = value
            raise CountsRefused(
                f"writing counts on {self._where}: Redis refused {len(refused)} of "
                f"{len(results)} commands, first: {_one_line(refused[0])}",
                not_applied,
                lost_drops,
                all(_transient(error) for error in refused),
            )
        with self._lock:
            self._announced |= new_names
            for minute, metric in new_ttls:
                self._expiring.setdefault(minute, set()).add(metric)
            self._forget_old_minutes()

    def _forget_old_minutes(self) -> None:
        """Keep the EXPIRE bookkeeping to the last few minutes (a late write to an older
        minute only sets its EXPIRE once more)."""
        if len(self._expiring) > 4:
            newest = max(self._expiring)
            for minute in [m for m in self._expiring if m < newest - 3 * _SECONDS_PER_MINUTE]:
                del self._expiring[minute]

    def read_counts(self, metrics: Sequence[str], start: int, end: int) -> np.ndarray:
        """Counts of ``metrics`` for epoch seconds ``start`` (included) to ``end``
        (excluded), as float64 of shape ``(len(metrics), end - start)``: NaN where Redis has
        no field (no data), the count otherwise (``0.0`` for zero events).

        One pipelined round trip of one HMGET per metric and minute (requests of more than
        50,000 HMGETs are split into several round trips). Raises ``ValueError`` if
        ``end < start``, ``StoreError`` if Redis fails.
        """
        if end < start:
            raise ValueError(f"read_counts: end ({end}) is before start ({start})")
        width = end - start
        if not metrics or not width:
            return np.full((len(metrics), width), np.nan)
        first_minute = start - start % _SECONDS_PER_MINUTE
        spans: list[tuple[int, list[int]]] = []
        for minute in range(first_minute, end, _SECONDS_PER_MINUTE):
            low = max(start, minute) - minute
            high = min(end, minute + _SECONDS_PER_MINUTE) - minute
            spans.append((minute, list(range(low, high))))
        replies: list[list[Any]] = []
        per_chunk = max(1, _MAX_COMMANDS_PER_ROUND_TRIP // len(spans))
        with self._errors("reading counts"):
            for offset in range(0, len(metrics), per_chunk):
                replies.extend(
                    self._round_trip(
                        [
                            ("HMGET", self.keys.seconds(metric, minute), *fields)
                            for metric in metrics[offset : offset + per_chunk]
                            for minute, fields in spans
                        ]
                    )
                )
        # Fields come back in (metric, second) order, so the flat list is the row-major
        # matrix. int() parses bytes and str alike.
        flat = itertools.chain.from_iterable(replies)
        values = np.fromiter(
            (np.nan if value is None else int(value) for value in flat),
            dtype=np.float64,
            count=len(metrics) * width,
        )
        return values.reshape(len(metrics), width)

    def metric_names(self) -> list[str]:
        """Every metric name any app has flushed, sorted. Raises ``StoreError``."""
        with self._errors("reading metric names"):
            names = self.client.smembers(self.keys.metrics)
        return sorted(_text(name) for name in names)

    def count_metric_names(self) -> int:
        """How many metric names apps have flushed (``SCARD``: cheap, unlike reading
        them). Raises ``StoreError``."""
        with self._errors("counting metric names"):
            return int(self.client.scard(self.keys.metrics))

    def get_state(self, metric: str) -> dict[str, str]:
        """The metric's alert state hash (empty if none). Raises ``StoreError``."""
        with self._errors(f"reading state of {metric!r}"):
            raw = self.client.hgetall(self.keys.state(metric))
        return {_text(key): _text(value) for key, value in raw.items()}

    def set_state(self, metric: str, mapping: Mapping[str, str | int | float]) -> None:
        """Set fields of the metric's alert state hash (others are kept). Raises
        ``StoreError``."""
        if not mapping:
            return
        with self._errors(f"writing state of {metric!r}"):
            fields: dict[Any, Any] = dict(mapping)
            self.client.hset(self.keys.state(metric), mapping=fields)

    def get_blob(self, metric: str) -> bytes | None:
        """The detector snapshot stored for the metric, or ``None``. Raises ``StoreError``."""
        with self._errors(f"reading detector snapshot of {metric!r}"):
            data = self.client.get(self.keys.detector(metric))
        if data is None or isinstance(data, bytes):
            return data
        raise StoreError(
            f"detector snapshot of {metric!r} came back as text: build the Store over a "
            "client with decode_responses=False"
        )

    def set_blob(self, metric: str, data: bytes) -> None:
        """Store the detector snapshot for the metric. Raises ``StoreError``."""
        with self._errors(f"writing detector snapshot of {metric!r}"):
            self.client.set(self.keys.detector(metric), data)

    def set_states(self, states: Mapping[str, Mapping[str, str | int | float]]) -> None:
        """:meth:`set_state` for many metrics, pipelined (a round trip per 10,000).
        Raises ``StoreError``."""
        items: list[tuple[str, dict[Any, Any]]] = [(m, dict(f)) for m, f in states.items() if f]
        with self._errors("writing states"):
            for lo in range(0, len(items), _BATCH):
                self._round_trip(
                    [
                        ("HSET", self.keys.state(metric), *itertools.chain(*fields.items()))
                        for metric, fields in items[lo : lo + _BATCH]
                    ]
                )

    def get_blobs(self, metrics: Sequence[str]) -> list[bytes | None]:
        """:meth:`get_blob` for many metrics, pipelined. Raises ``StoreError``."""
        out: list[bytes | None] = []
        with self._errors("reading detector snapshots"):
            for lo in range(0, len(metrics), _BATCH):
                out.extend(
                    self._round_trip(
                        [("GET", self.keys.detector(m)) for m in metrics[lo : lo + _BATCH]]
                    )
                )
        if any(data is not None and not isinstance(data, bytes) for data in out):
            raise StoreError(
                "detector snapshots came back as text: build the Store over a client with "
                "decode_responses=False"
            )
        return out

    def set_blobs(self, blobs: Mapping[str, bytes]) -> None:
        """:meth:`set_blob` for many metrics, pipelined. Raises ``StoreError``."""
        items = list(blobs.items())
        with self._errors("writing detector snapshots"):
            for lo in range(0, len(items), _BATCH):
                self._round_trip(
                    [("SET", self.keys.detector(m), data) for m, data in items[lo : lo + _BATCH]]
                )

    def emitters(self) -> dict[str, int]:
        """``<host>:<pid>`` -> epoch second of that process's last flush. Raises
        ``StoreError``."""
        return self._int_hash(self.keys.emitters, "reading emitters")

    def drops(self) -> dict[str, int]:
        """Drop reason -> events the apps could not deliver, summed over all apps (see
        :mod:`cliffwatch.metrics.counter`). Raises ``StoreError``."""
        return self._int_hash(self.keys.drops, "reading drop counts")

    def _int_hash(self, key: str, doing: str) -> dict[str, int]:
        """A hash of integers (fields that are not integers left out)."""
        with self._errors(doing):
            raw = self.client.hgetall(key)
        result: dict[str, int] = {}
        for field, value in raw.items():
            try:
                result[_text(field)] = int(value)
            except ValueError:
                continue
        return result

    def server_time(self) -> float:
        """The Redis server's clock (``TIME``), in epoch seconds. Raises ``StoreError``."""
        with self._errors("reading the server time"):
            seconds, micros = self.client.time()
        return int(seconds) + int(micros) / 1e6

    def prune_emitters(self, before: int) -> int:
        """Forget emitters whose last flush is older than epoch second ``before`` (processes
        that are gone); return how many. Raises ``StoreError``."""
        stale = [name for name, last in self.emitters().items() if last < before]
        if not stale:
            return 0
        with self._errors("pruning emitters"):
            return int(self.client.hdel(self.keys.emitters, *stale))

    def set_judged_to(self, shards: Sequence[int], second: int) -> None:
        """Record that every second before ``second`` of the metrics of ``shards`` has
        been judged (one pipelined round trip; each record expires after a day). Raises
        ``StoreError``."""
        if not shards:
            return
        with self._errors("writing how far shards are judged"):
            self._round_trip(
                [("SET", self.keys.shard_judged(n), second, "EX", 86_400) for n in shards]
            )

    def judged_to(self, shards: Sequence[int]) -> dict[int, int]:
        """What :meth:`set_judged_to` recorded for ``shards`` (those without a record,
        or with one that is not a second, are left out). Raises ``StoreError``."""
        if not shards:
            return {}
        with self._errors("reading how far shards are judged"):
            got = self._round_trip([("GET", self.keys.shard_judged(n)) for n in shards])
        return {n: int(v) for n, v in zip(shards, got, strict=True) if v and v.isdigit()}

    def get_states(self, metrics: Sequence[str]) -> list[dict[str, str]]:
        """The alert state hashes of ``metrics`` (``{}`` for none), one pipelined round
        trip per 10,000 metrics. Raises ``StoreError``."""
        if not metrics:
            return []
        replies: list[Any] = []
        with self._errors("reading states"):
            for lo in range(0, len(metrics), _BATCH):
                replies += self._round_trip(
                    [("HGETALL", self.keys.state(m)) for m in metrics[lo : lo + _BATCH]]
                )
        return [_text_hash(raw) for raw in replies]

    def silences(self) -> dict[str, str]:
        """Every stored silence: id -> its JSON text. Raises ``StoreError``."""
        with self._errors("reading silences"):
            raw = self.client.hgetall(self.keys.silences)
        return {_text(key): _text(value) for key, value in raw.items()}

    def add_silence(self, silence_id: str, data: str) -> bool:
        """Store a silence under a new id; False (and nothing written) if the id is taken.
        Raises ``StoreError``."""
        with self._errors("writing a silence"):
            return bool(self.client.hsetnx(self.keys.silences, silence_id, data))

    def delete_silences(self, silence_ids: Sequence[str]) -> int:
        """Delete the silences with these ids; return how many existed. Raises
        ``StoreError``."""
        if not silence_ids:
            return 0
        with self._errors("deleting silences"):
            return int(self.client.hdel(self.keys.silences, *silence_ids))

    # -- alerts held for the quiet-hours digest (see cliffwatch.alerting.quiet) -----

    def hold(self, name: str, data: str) -> None:
        """Keep a held alert under ``name`` (replacing one of the same name). Raises
        ``StoreError``."""
        with self._errors("holding an alert for the digest"):
            self.client.hset(self.keys.quiet_held, name, data)

    def held(self) -> dict[str, str]:
        """Every held alert: name -> its JSON text. Raises ``StoreError``."""
        with self._errors("reading the held alerts"):
            raw = self.client.hgetall(self.keys.quiet_held)
        return {_text(key): _text(value) for key, value in raw.items()}

    def any_held(self) -> bool:
        """True when some alert is held. Raises ``StoreError``."""
        with self._errors("reading the held alerts"):
            return bool(self.client.hlen(self.keys.quiet_held))

    def release(self, names: Sequence[str]) -> int:
        """Forget the held alerts ``names``; return how many there were. Raises
        ``StoreError``."""
        if not names:
            return 0
        with self._errors("releasing held alerts"):
            return int(self.client.hdel(self.keys.quiet_held, *names))

    # -- the worker leader's lease (see cliffwatch.alerting.leader) -----------------

    def acquire_lease(self, token: str, ttl_ms: int) -> int | None:
        """Take the leader lease for ``token`` if nobody holds it (SET NX PX), and then a
        new fencing epoch (INCR); return the epoch, or ``None`` if the lease is held.
        Raises ``StoreError``."""
        with self._errors("taking the leader lease"):
            if not self.client.set(self.keys.leader, token, nx=True, px=ttl_ms):
                return None
            return int(self.client.incr(self.keys.leader_epoch))

    def renew_lease(self, token: str, ttl_ms: int) -> tuple[bool, int]:
        """Extend the lease to ``ttl_ms`` from now if ``token`` still holds it (one
        single-key compare-and-PEXPIRE script); return (still held, newest epoch).
        Raises ``StoreError``."""
        with self._errors("renewing the leader lease"):
            pipe = self.client.pipeline(transaction=False)
            # execute_command: a cluster pipeline's eval() takes no script
            pipe.execute_command("EVAL", _RENEW, 1, self.keys.leader, token, ttl_ms)
            pipe.get(self.keys.leader_epoch)
            held, epoch = pipe.execute()
        return bool(held), int(epoch or 0)

    def release_lease(self, token: str) -> bool:
        """Delete the lease if ``token`` holds it (compare-and-DEL script); True if it
        did. Raises ``StoreError``."""
        with self._errors("releasing the leader lease"):
            return bool(self.client.eval(_RELEASE, 1, self.keys.leader, token))

    def lease_holder(self) -> str | None:
        """The token holding the leader lease, or ``None``. Raises ``StoreError``."""
        with self._errors("reading the leader lease"):
            value = self.client.get(self.keys.leader)
        return None if value is None else _text(value)

    # -- the shards' leases and the workers sharing them (cliffwatch.alerting.shards) --

    def join_workers(self, token: str, ttl_ms: int) -> list[str]:
        """Record ``token`` as a live worker for ``ttl_ms`` more milliseconds (on the
        Redis server's clock), forget workers whose membership expired, and return the
        live tokens, sorted. One single-key script. Raises ``StoreError``."""
        with self._errors("renewing the worker membership"):
            live = self.client.eval(_JOIN, 1, self.keys.workers, token, ttl_ms)
        return sorted(_text(t) for t in live)

    def leave_workers(self, token: str) -> None:
        """Remove ``token`` from the live workers and its info. Raises ``StoreError``."""
        with self._errors("leaving the workers"):
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(self.keys.workers, token)
            pipe.hdel(self.keys.workers_info, token)
            pipe.execute()

    def live_workers(self) -> dict[str, str]:
        """The live workers' tokens -> their info JSON (``"{}"`` if none written yet),
        in one round trip. Raises ``StoreError``."""
        with self._errors("reading the workers"):
            pipe = self.client.pipeline(transaction=False)
            pipe.time()
            pipe.zrange(self.keys.workers, 0, -1, withscores=True)
            pipe.hgetall(self.keys.workers_info)
            (sec, micros), members, info = pipe.execute()
        now_ms = int(sec) * 1000 + int(micros) // 1000
        infos = {_text(k): _text(v) for k, v in info.items()}
        return {_text(t): infos.get(_text(t), "{}") for t, expiry in members if expiry > now_ms}

    def set_worker_info(self, token: str, info: str) -> None:
        """Publish what worker ``token`` judges (JSON). Raises ``StoreError``."""
        with self._errors("writing the worker info"):
            self.client.hset(self.keys.workers_info, token, info)

    def take_shards(self, token: str, shards: Sequence[int], ttl_ms: int) -> dict[int, int]:
        """Take the lease of each free shard in ``shards`` (SET NX PX), then a new fencing
        epoch (INCR) for each taken; return shard -> epoch for those taken, in two
        pipelined round trips. Raises ``StoreError``."""
        if not shards:
            return {}
        with self._errors("taking shard leases"):
            pipe = self.client.pipeline(transaction=False)
            for n in shards:
                pipe.set(self.keys.shard(n), token, nx=True, px=ttl_ms)
            won = [n for n, ok in zip(shards, pipe.execute(), strict=True) if ok]
            if not won:
                return {}
            pipe = self.client.pipeline(transaction=False)
            for n in won:
                pipe.incr(self.keys.shard_epoch(n))
            epochs = pipe.execute()
        return {n: int(e) for n, e in zip(won, epochs, strict=True)}

    def renew_shards(
        self, token: str, shards: Sequence[int], ttl_ms: int
    ) -> dict[int, tuple[bool, int]]:
        """Extend each shard lease ``token`` still holds to ``ttl_ms`` from now (one
        single-key compare-and-PEXPIRE script per shard, pipelined); return shard ->
        (still held, newest epoch). Raises ``StoreError``."""
        if not shards:
            return {}
        with self._errors("renewing shard leases"):
            pipe = self.client.pipeline(transaction=False)
            for n in shards:
                pipe.execute_command("EVAL", _RENEW, 1, self.keys.shard(n), token, ttl_ms)
                pipe.get(self.keys.shard_epoch(n))
            replies = pipe.execute()
        return {
            n: (bool(replies[2 * k]), int(replies[2 * k + 1] or 0)) for k, n in enumerate(shards)
        }

    def release_shards(self, token: str, shards: Sequence[int]) -> None:
        """Delete the shard leases ``token`` holds among ``shards`` (compare-and-DEL,
        pipelined). Raises ``StoreError``."""
        if not shards:
            return
        with self._errors("releasing shard leases"):
            pipe = self.client.pipeline(transaction=False)
            for n in shards:
                pipe.execute_command("EVAL", _RELEASE, 1, self.keys.shard(n), token)
            pipe.execute()

    def shard_holders(self, shards: int) -> list[str | None]:
        """The token holding each shard's lease (``None``: free), for shards ``0`` to
        ``shards - 1``, in one pipelined round trip. Raises ``StoreError``."""
        with self._errors("reading shard leases"):
            pipe = self.client.pipeline(transaction=False)
            for n in range(shards):
                pipe.get(self.keys.shard(n))
            replies = pipe.execute()
        return [None if r is None else _text(r) for r in replies]

    # -- the worker's heartbeat (the dead-man's switch) -------------------------------

    def beat(self, at: float, ttl_ms: int) -> None:
        """Record a worker tick at epoch ``at``: the heartbeat key (expiring after
        ``ttl_ms``) and the last-tick key, in one round trip. Raises ``StoreError``."""
        with self._errors("writing the worker heartbeat"):
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.keys.heartbeat, repr(float(at)), px=ttl_ms)
            pipe.set(self.keys.last_tick, repr(float(at)))
            pipe.execute()

    def heartbeat(self) -> tuple[float | None, float | None]:
        """(the live heartbeat's epoch or ``None`` if it expired, the last tick's epoch or
        ``None`` if no worker ever ticked), in one round trip. Raises ``StoreError``."""
        with self._errors("reading the worker heartbeat"):
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self.keys.heartbeat)
            pipe.get(self.keys.last_tick)
            alive, last = pipe.execute()
        return _epoch(alive), _epoch(last)

    # -- the alert outbox (see cliffwatch.alerting.outbox) ---------------------------

    def outbox_add(self, fields: Mapping[str, str], maxlen: int) -> str:
        """Append an entry to the outbox stream (trimmed to about ``maxlen`` entries);
        return its id. Raises ``StoreError``."""
        with self._errors("appending to the outbox"):
            entry: dict[Any, Any] = dict(fields)
            entry_id = self.client.xadd(self.keys.outbox, entry, maxlen=maxlen, approximate=True)
        return _text(entry_id)

    def outbox_group(self, group: str, start: str = "$") -> None:
        """Create consumer group ``group`` on the outbox (and the stream), reading
        entries added after ``start`` (``"$"``: from now on, ``"0"``: every entry the
        stream holds); nothing if it exists. Raises ``StoreError``."""
        try:
            with self._errors(f"creating outbox group {group!r}"):
                self.client.xgroup_create(self.keys.outbox, group, id=start, mkstream=True)
        except StoreError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def outbox_read(
        self, group: str, consumer: str, count: int, *, unacked: bool
    ) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` outbox entries for ``group``: with ``unacked``, those read
        before and not acknowledged (oldest first), else new ones. Raises
        ``StoreError``."""
        with self._errors(f"reading the outbox for {group!r}"):
            reply: Any = self.client.xreadgroup(
                group, consumer, {self.keys.outbox: "0" if unacked else ">"}, count=count
            )
        entries: list[tuple[str, dict[str, str]]] = []
        for _stream, items in reply or []:
            for entry_id, fields in items:
                if fields is None:  # trimmed away while unacknowledged
                    continue
                entries.append((_text(entry_id), {_text(k): _text(v) for k, v in fields.items()}))
        return entries

    def outbox_ack(self, group: str, entry_id: str) -> None:
        """Acknowledge an outbox entry for ``group``. Raises ``StoreError``."""
        with self._errors(f"acknowledging outbox entry {entry_id} for {group!r}"):
            self.client.xack(self.keys.outbox, group, entry_id)

    def __repr__(self) -> str:
        return f"<Store {self._where} prefix={self.prefix!r}>"


def _epoch(value: bytes | str | None) -> float | None:
    try:
        return None if value is None else float(_text(value))
    except ValueError:
        return None


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_JOIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

_live_stores: weakref.WeakSet[Store] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by a parent thread at fork() would stay held forever in the child.
    for store in list(_live_stores):
        store._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
