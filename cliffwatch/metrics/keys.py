"""Every Redis key cliffwatch uses, as templates under one prefix.

All keys of one metric share the hash tag ``{<metric>}``, so Redis Cluster puts them in
one slot and twemproxy (``hash_tag: "{}"``) on one shard. Nothing needs MULTI/EXEC, and
no script touches more than one key. The few keys shared by all metrics (``Pmetrics``,
``Pemitters``, ``Pdrops``, ``Psilences``, ``Pleader``, ``Pleader:epoch``, ``Poutbox``,
``Pworker:heartbeat``, ``Pworker:last_tick``, ``Pquiet:held``, ``Pworkers``,
``Pworkers:info``, ``Pshard:<n>``, ``Pshard:<n>:epoch``) are each one
key, read and written on its own; in Redis Cluster each lives in its own slot, so the
worker's outbox (one stream) sits on one shard, which is ample for alert traffic.

==============================  ======  ================================================
key                             type    holds
==============================  ======  ================================================
``P{m}:s:<minute>``             hash    field ``0``..``59`` (second of that minute) ->
                                        events counted in that second; a missing field
                                        is *no data*, ``0`` is zero events. ``<minute>``
                                        is the epoch second the minute starts at.
``P{m}:state``                  hash    the metric's alert state (ok / firing) and the
                                        open incident, written by the worker; also the
                                        state of the pseudo-metrics
                                        ``cliffwatch.monitoring-blind`` and
                                        ``cliffwatch.no-data:<metric>`` (see
                                        :mod:`cliffwatch.alerting.blind`)
``P{m}:detector``               string  the detector's learnt state for the metric
``Pmetrics``                    set     every metric name any app has flushed
``Pemitters``                   hash    ``<host>:<pid>`` -> epoch second of its last flush
                                        (on the Redis server's clock: apps correct theirs)
``Pdrops``                      hash    drop reason -> events the apps could not deliver
                                        (HINCRBY by each app's flush; see
                                        :mod:`cliffwatch.metrics.counter` for reasons)
``Psilences``                   hash    silence id -> JSON of one silence (metric glob,
                                        start, end, reason, who); expired ones are
                                        deleted by whoever reads them next
``Pleader``                     string  the worker leader's lease: a random token, with
                                        a PX expiry renewed by the leader (see
                                        :mod:`cliffwatch.alerting.leader`)
``Pleader:epoch``               string  integer, INCR'd by each worker that takes the
                                        lease: its fencing epoch
``Poutbox``                     stream  alert transitions waiting for delivery, one
                                        consumer group per notifier (``slack``,
                                        ``pagerduty``, ``slack:<channel>``,
                                        ``pagerduty:<service>``); see
                                        :mod:`cliffwatch.alerting.outbox`
``Pworker:heartbeat``           string  epoch of the leader worker's last tick, with a
                                        PX expiry of a few seconds: the dead-man's
                                        switch (gone: no worker is ticking)
``Pworker:last_tick``           string  the same epoch without expiry, so ``cliffwatch
                                        status`` can say how long ago it stopped
``Pquiet:held``                 hash    ``<incident id>|<firing/resolved/reminder>`` ->
                                        JSON of a ``notify`` alert held during quiet
                                        hours, until the digest takes it (see
                                        :mod:`cliffwatch.alerting.quiet`)
``Pworkers``                    zset    worker token -> the millisecond (Redis server
                                        clock) its membership expires: the live
                                        workers that share the shards (see
                                        :mod:`cliffwatch.alerting.shards`)
``Pworkers:info``               hash    worker token -> JSON of what it judges (shards,
                                        metrics, last tick), for ``cliffwatch status``
``Pshard:<n>``                  string  shard ``n``'s lease: the token of the worker
                                        judging its metrics, with a PX expiry
``Pshard:<n>:epoch``            string  integer, INCR'd by each worker that takes shard
                                        ``n``'s lease: its fencing epoch
``Pshard:<n>:judged``           string  epoch second: every earlier second of shard
                                        ``n``'s metrics has been judged (written by the
                                        lease holder after each tick; a day's expiry)
==============================  ======  ================================================

``P`` is the prefix, ``cliffwatch:`` unless configured otherwise.
"""

from __future__ import annotations

DEFAULT_PREFIX = "cliffwatch:"


class Keys:
    """Key names under one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def seconds(self, metric: str, minute: int) -> str:
        """Hash of per-second counts for the minute starting at epoch second ``minute``."""
        return f"{self.prefix}{{{metric}}}:s:{minute}"

    def state(self, metric: str) -> str:
        """Hash holding the metric's alert state and open incident."""
        return f"{self.prefix}{{{metric}}}:state"

    def detector(self, metric: str) -> str:
        """The detector's learnt state for the metric."""
        return f"{self.prefix}{{{metric}}}:detector"

    @property
    def metrics(self) -> str:
        """Set of every metric name flushed by any app."""
        return f"{self.prefix}metrics"

    @property
    def emitters(self) -> str:
        """Hash of ``<host>:<pid>`` -> epoch second of that process's last flush."""
        return f"{self.prefix}emitters"

    @property
    def drops(self) -> str:
        """Hash of drop reason -> events the apps dropped for it, summed over all apps."""
        return f"{self.prefix}drops"

    @property
    def silences(self) -> str:
        """Hash of silence id -> JSON of that silence (see :mod:`cliffwatch.alerting.silences`)."""
        return f"{self.prefix}silences"

    @property
    def leader(self) -> str:
        """The worker leader's lease: its token, expiring unless renewed."""
        return f"{self.prefix}leader"

    @property
    def leader_epoch(self) -> str:
        """Integer counter, incremented by every worker that takes the lease."""
        return f"{self.prefix}leader:epoch"

    @property
    def outbox(self) -> str:
        """Stream of alert transitions to deliver (one consumer group per notifier)."""
        return f"{self.prefix}outbox"

    @property
    def heartbeat(self) -> str:
        """Epoch of the leader worker's last tick, expiring unless it ticks again."""
        return f"{self.prefix}worker:heartbeat"

    @property
    def last_tick(self) -> str:
        """Epoch of the leader worker's last tick (no expiry)."""
        return f"{self.prefix}worker:last_tick"

    @property
    def quiet_held(self) -> str:
        """Hash of the ``notify`` alerts held for the quiet-hours digest."""
        return f"{self.prefix}quiet:held"

    @property
    def workers(self) -> str:
        """Sorted set of worker token -> expiry (server-clock milliseconds)."""
        return f"{self.prefix}workers"

    @property
    def workers_info(self) -> str:
        """Hash of worker token -> JSON of the shards and metrics it judges."""
        return f"{self.prefix}workers:info"

    def shard(self, n: int) -> str:
        """Shard ``n``'s lease: the token of the worker that judges its metrics."""
        return f"{self.prefix}shard:{n}"

    def shard_epoch(self, n: int) -> str:
        """Integer counter, incremented by every worker that takes shard ``n``'s lease."""
        return f"{self.prefix}shard:{n}:epoch"

    def shard_judged(self, n: int) -> str:
        """Epoch second up to which shard ``n``'s metrics have been judged."""
        return f"{self.prefix}shard:{n}:judged"
