"""The Redis store: counts written and read back, state, snapshots, errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import redis

from cliffwatch.errors import ConfigError, StoreError
from cliffwatch.metrics import Store
from cliffwatch.metrics.keys import Keys
from cliffwatch.metrics.store import CountsRefused, mask_url

if TYPE_CHECKING:
    from conftest import RecordingRedis, RedisServer

T0 = 1_800_000_000  # a minute boundary (divisible by 60)


@pytest.fixture
def store(redis_client: redis.Redis, prefix: str) -> Store:
    return Store(redis_client, prefix=prefix)


def test_read_counts_nan_for_missing_and_zero_for_zero(store: Store) -> None:
    """A field written as 0 reads 0.0; a field never written reads NaN."""
    store.write_counts({T0 + 1: {"a": 0, "b": 5}, T0 + 3: {"a": 7}})
    counts = store.read_counts(["a", "b", "c"], T0, T0 + 4)
    assert counts.dtype == np.float64
    assert counts.shape == (3, 4)
    np.testing.assert_array_equal(
        counts,
        [[np.nan, 0, np.nan, 7], [np.nan, 5, np.nan, np.nan], [np.nan] * 4],
    )


def test_write_counts_adds_up_across_writers(
    store: Store, redis_client: redis.Redis, prefix: str
) -> None:
    """Two writes of the same second (two processes) add up."""
    other = Store(redis_client, prefix=prefix)
    store.write_counts({T0: {"a": 2}})
    other.write_counts({T0: {"a": 3}})
    assert store.read_counts(["a"], T0, T0 + 1).tolist() == [[5.0]]


def test_read_counts_spans_minutes_in_one_round_trip(
    recording_client: RecordingRedis, prefix: str
) -> None:
    """A range across minute boundaries reads in the right columns, in one round trip."""
    store = Store(recording_client, prefix=prefix)
    seconds = {T0 - 2: {"m": 1}, T0 + 59: {"m": 2}, T0 + 60: {"m": 3}, T0 + 61: {"m": 4}}
    store.write_counts(seconds)
    recording_client.round_trips.clear()
    counts = store.read_counts(["m", "n"], T0 - 2, T0 + 62)
    assert len(recording_client.round_trips) == 1
    trip = recording_client.round_trips[0]
    assert not trip.transaction
    assert set(trip.names()) == {"HMGET"}
    assert len(trip.commands) == 2 * 3  # 2 metrics x 3 minutes
    assert counts[0, 0] == 1 and counts[0, 61] == 2 and counts[0, 62] == 3
    assert counts[0, 63] == 4
    assert np.isnan(counts[0, 1:61]).all() and np.isnan(counts[1]).all()


def test_read_counts_many_metrics_one_round_trip(
    recording_client: RecordingRedis, prefix: str
) -> None:
    """Thousands of metrics for a few seconds are read in one pipelined round trip."""
    store = Store(recording_client, prefix=prefix)
    names = [f"m{i}" for i in range(3000)]
    store.write_counts({T0 + 10: {name: i for i, name in enumerate(names)}})
    recording_client.round_trips.clear()
    counts = store.read_counts(names, T0 + 9, T0 + 12)
    assert len(recording_client.round_trips) == 1
    np.testing.assert_array_equal(counts[:, 1], np.arange(3000, dtype=np.float64))
    assert np.isnan(counts[:, [0, 2]]).all()


def test_read_counts_with_a_decoding_client(redis_url: str, prefix: str) -> None:
    """A client with decode_responses=True reads the same numbers."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = Store(client, prefix=prefix)
        store.write_counts({T0: {"a": 3}})
        assert store.read_counts(["a"], T0, T0 + 2).tolist()[0][0] == 3.0
        assert store.metric_names() == ["a"]
    finally:
        client.close()


def test_read_counts_empty_and_bad_ranges(store: Store) -> None:
    """Empty requests give empty matrices without Redis; end < start is a ValueError."""
    assert store.read_counts([], T0, T0 + 5).shape == (0, 5)
    assert store.read_counts(["a"], T0, T0).shape == (1, 0)
    with pytest.raises(ValueError, match="before start"):
        store.read_counts(["a"], T0, T0 - 1)


def test_write_counts_sets_ttl_once_per_minute_key(
    recording_client: RecordingRedis, prefix: str
) -> None:
    """Minute keys get an EXPIRE of retention_s, sent only on this store's first write."""
    store = Store(recording_client, prefix=prefix, retention_s=3600)
    key = Keys(prefix).seconds("a", T0)
    store.write_counts({T0 + 1: {"a": 1}})
    ttl = recording_client.ttl(key)
    assert 3500 < ttl <= 3600
    recording_client.round_trips.clear()
    store.write_counts({T0 + 2: {"a": 1}})
    assert "EXPIRE" not in recording_client.round_trips[0].names()
    store.write_counts({T0 + 60: {"a": 1}})
    assert "EXPIRE" in recording_client.round_trips[1].names()


def test_write_counts_announces_metrics_and_emitter(store: Store) -> None:
    """A write adds the metric names to the set and stamps the emitter."""
    store.write_counts({T0: {"b": 1, "a": 0}}, emitter="host:1", now=T0 + 1)
    store.write_counts({T0 + 1: {"c": 1}}, emitter="host:2", now=T0 + 2)
    assert store.metric_names() == ["a", "b", "c"]
    assert store.emitters() == {"host:1": T0 + 1, "host:2": T0 + 2}
    assert store.prune_emitters(before=T0 + 2) == 1
    assert store.emitters() == {"host:2": T0 + 2}


def test_write_counts_refused_commands(
    store: Store, redis_client: redis.Redis, prefix: str
) -> None:
    """A key of the wrong type makes Redis refuse: CountsRefused, other commands applied."""
    redis_client.set(Keys(prefix).seconds("bad", T0), "not a hash")
    with pytest.raises(CountsRefused, match="refused 1 of"):
        store.write_counts({T0: {"bad": 1, "good": 2}})
    assert store.read_counts(["good"], T0, T0 + 1).tolist() == [[2.0]]


def test_state_and_blob_round_trip(store: Store) -> None:
    """Alert state and detector snapshots read back as written."""
    assert store.get_state("a") == {}
    store.set_state("a", {"status": "firing", "since": 12, "score": 0.5})
    store.set_state("a", {"status": "ok"})
    assert store.get_state("a") == {"status": "ok", "since": "12", "score": "0.5"}
    assert store.get_blob("a") is None
    store.set_blob("a", b"\x00\xffsnapshot")
    assert store.get_blob("a") == b"\x00\xffsnapshot"


def test_from_url_rejects_bad_url_with_password_masked() -> None:
    """A URL redis-py cannot use is a ConfigError naming it, without the password."""
    with pytest.raises(ConfigError) as caught:
        Store.from_url("http://user:s3cret@example.com:6379/0")
    assert "s3cret" not in str(caught.value)
    assert "http://user:***@example.com:6379/0" in str(caught.value)


def test_unreachable_redis_is_a_one_line_store_error(redis_server: RedisServer) -> None:
    """ping() on a closed port raises StoreError: one line, server named, password masked."""
    url = f"redis://:hunter2@127.0.0.1:{redis_server.port}/0"
    store = Store.from_url(url, socket_connect_timeout=0.5)
    with pytest.raises(StoreError) as caught:
        store.ping()
    message = str(caught.value)
    assert "\n" not in message
    assert "hunter2" not in message
    assert f"127.0.0.1:{redis_server.port}" in message
    with pytest.raises(StoreError):
        store.read_counts(["a"], T0, T0 + 1)


def test_mask_url() -> None:
    """Passwords are masked, URLs without one are unchanged."""
    assert mask_url("redis://u:p@h:1/2") == "redis://u:***@h:1/2"
    assert mask_url("redis://:p@h") == "redis://:***@h"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


def test_batch_state_and_snapshot_methods_round_trip(store: Store) -> None:
    """set_states, set_blobs and get_blobs do for many metrics what the one-metric
    methods do: missing snapshots come back as None, states merge into the hashes."""
    store.set_state("a", {"state": "firing"})
    store.set_states({"a": {"status": "ok"}, "b": {"status": "warming up"}, "c": {}})
    assert store.get_states(["a", "b", "c"]) == [
        {"state": "firing", "status": "ok"},
        {"status": "warming up"},
        {},
    ]
    store.set_blobs({"a": b"\x00one", "b": b"\xfftwo"})
    assert store.get_blobs(["a", "missing", "b"]) == [b"\x00one", None, b"\xfftwo"]
    assert store.get_blobs([]) == []


def test_a_value_redis_cannot_take_is_a_store_error_and_the_store_goes_on(store: Store) -> None:
    """Batched writes are packed by hiredis; a value it refuses (a bool, a numpy int)
    is a one-line StoreError, as redis-py would report it, and the store goes on
    working (nothing half-sent is left on the pooled connection)."""
    with pytest.raises(StoreError, match="writing states failed.*str, int, float or bytes"):
        store.set_states({"a": {"status": "ok", "flag": True}})
    with pytest.raises(StoreError, match="writing states failed.*str, int, float or bytes"):
        store.set_states({"a": {"minutes_seen": np.int64(3)}})
    store.set_states({"a": {"status": "ok", "score": -1.25, "minutes": 7}})
    assert store.get_states(["a"]) == [{"status": "ok", "score": "-1.25", "minutes": "7"}]
