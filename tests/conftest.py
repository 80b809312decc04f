"""Shared fixtures: a real Redis (``--redis-url``), one key prefix per test, throwaway
Redis servers, child processes, a settable clock, and errors logged by cliffwatch
turned into failures."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis
from httpstub import Recorder
from procs import Processes

from cliffwatch.metrics import bus
from cliffwatch.metrics.store import Store

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=DEFAULT_TEST_REDIS_URL,
        help=f"Redis the tests use; each test keeps to its own key prefix "
        f"(default {DEFAULT_TEST_REDIS_URL})",
    )


# -- Redis --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """The URL of the Redis the tests talk to."""
    return str(request.config.getoption("--redis-url"))


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test Redis (bytes replies); fails the test if Redis is down."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"the test Redis at {redis_url} is not reachable ({error}); see --redis-url")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test alone; every key under it is deleted afterwards."""
    value = f"cwtest:{uuid.uuid4().hex[:12]}:"
    yield value
    keys = list(redis_client.scan_iter(match=f"{value}*", count=1000))
    for start in range(0, len(keys), 500):
        redis_client.delete(*keys[start : start + 500])


class RoundTrip:
    """The commands of one pipelined round trip, as sent."""

    def __init__(self, commands: list[tuple[Any, ...]]) -> None:
        self.commands = commands
        self.transaction = any(str(c[0]).upper() == "MULTI" for c in commands)

    def names(self) -> list[str]:
        return [str(command[0]).upper() for command in self.commands]


class _RecordingConnection(redis.Connection):
    """Records each batch of commands sent in one go (a pipeline's execution, or the
    store's own pipelined round trip) in ``trips``, read back from the bytes sent;
    single commands are not recorded."""

    trips: list[RoundTrip]  # one list per recording client (see recording_client)
    _single = False

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self._single = True
        try:
            super().send_command(*args, **kwargs)
        finally:
            self._single = False

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._single:
            reader = hiredis.Reader()
            for chunk in [command] if isinstance(command, bytes) else command:
                reader.feed(bytes(chunk))
            batch = []
            while (sent := reader.gets()) is not False:
                batch.append(tuple(arg.decode("utf-8", "replace") for arg in sent))
            self.trips.append(RoundTrip(batch))
        super().send_packed_command(command, check_health)


class RecordingRedis(redis.Redis):
    """A real client that also records each pipelined round trip it sends (its
    commands) in ``round_trips``."""

    round_trips: list[RoundTrip]


@pytest.fixture
def recording_client(redis_url: str, redis_client: redis.Redis) -> Iterator[RecordingRedis]:
    """A client of the test Redis that records the pipelined round trips it sends."""
    trips: list[RoundTrip] = []
    connection = type("Connection", (_RecordingConnection,), {"trips": trips})
    client = RecordingRedis(
        connection_pool=redis.ConnectionPool.from_url(redis_url, connection_class=connection)
    )
    client.round_trips = trips
    yield client
    client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway ``redis-server`` on a free local port, stopped and started at will."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            wait_for(lambda: _answers(client), timeout=10, what="redis-server to start")
        finally:
            client.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway Redis server (not started yet); stopped after the test."""
    server = RedisServer()
    yield server
    server.stop()


# -- time ---------------------------------------------------------------------------------


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., None]:
    """``wait_for(condition, timeout=10, what=...)``: poll with a deadline."""
    return wait_for


class FakeClock:
    """Epoch seconds that only move when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A settable clock starting half-way through epoch second 1_800_000_000."""
    return FakeClock(1_800_000_000.5)


# -- cliffwatch state and its errors ------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _cliffwatch_errors_fail_tests(request: pytest.FixtureRequest) -> Iterator[_Capture]:
    """Start each test with a fresh bus; after it, shut cliffwatch down and fail the test
    if anything logged an error on the ``cliffwatch`` logger (unless the test asked for
    the ``cliffwatch_errors`` fixture, which means it expects and checks them)."""
    bus._reset_registry()
    capture = _Capture()
    logger = logging.getLogger("cliffwatch")
    logger.addHandler(capture)
    try:
        yield capture
        bus._reset_registry()
    finally:
        logger.removeHandler(capture)
    if capture.records and "cliffwatch_errors" not in request.fixturenames:
        lines = [f"{r.name}: {r.getMessage()}" for r in capture.records]
        pytest.fail("cliffwatch logged errors:\n" + "\n".join(lines))


@pytest.fixture
def cliffwatch_errors(_cliffwatch_errors_fail_tests: _Capture) -> list[logging.LogRecord]:
    """The errors logged on the ``cliffwatch`` logger during the test (expected ones)."""
    return _cliffwatch_errors_fail_tests.records


@pytest.fixture
def stub() -> Iterator[Recorder]:
    """A local HTTP stand-in for Slack and PagerDuty, recording every request."""
    with Recorder() as recorder:
        yield recorder


@pytest.fixture
def store(redis_url: str, prefix: str) -> Iterator[Store]:
    """A store over the test Redis, under this test's prefix (some modules define their
    own ``store`` over ``redis_client``; theirs wins there)."""
    s = Store.from_url(redis_url, prefix=prefix)
    yield s
    s.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Child processes of the test, killed at its end; their logs in ``tmp_path``."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
