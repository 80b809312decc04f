"""Security: ``rediss://`` with an ACL user works for the app side, the worker and
``status`` against a real TLS ``redis-server`` with a self-signed certificate; and the
secrets (Slack token and webhook URL, PagerDuty routing key, Redis password) appear in
no log, error, ``status`` output, alert text or Redis value."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import wait_for
from httpstub import PAGERDUTY_PATH, Recorder

import cliffwatch
from cliffwatch.metrics.store import Store

CLIFFWATCH = Path(sys.executable).parent / "cliffwatch"
METRIC = "orders.created"
USER = "alice"
PASSWORD = "Rp4ss-7c1e9b52d0aa"  # distinctive, so a grep cannot miss or mistake it
SLACK_TOKEN = "xoxb-1234-5678-S3cr3tT0kenZq"
WEBHOOK_URL = "https://hooks.slack.example/services/T0001/B0001/whS3cretPathQx"
ROUTING_KEY = "PDr0utingK3y0123456789abcdefXYZ"
SECRETS = {
    "Redis password": PASSWORD,
    "Slack token": SLACK_TOKEN,
    "Slack webhook URL": WEBHOOK_URL,
    "webhook secret path": "whS3cretPathQx",
    "PagerDuty routing key": ROUTING_KEY,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TlsRedis:
    """A ``redis-server`` that only speaks TLS (self-signed certificate for 127.0.0.1)
    and only lets the ACL user ``alice`` in (the default user is off)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.ca = directory / "cert.pem"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, password: str = PASSWORD, db: int = 0) -> str:
        return f"rediss://{USER}:{password}@127.0.0.1:{self.port}/{db}?ssl_ca_certs={self.ca}"

    def start(self) -> None:
        binary, openssl = shutil.which("redis-server"), shutil.which("openssl")
        if binary is None or openssl is None:
            pytest.skip("redis-server or openssl is not installed")
        key = self.directory / "key.pem"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(key), "-out", str(self.ca), "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60)
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            [binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(self.ca), "--tls-key-file", str(key),
             "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no",
             "--save", "", "--appendonly", "no", "--logfile", str(log),
             "--user", "default", "off",
             "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url(), socket_connect_timeout=0.5)

        def answers() -> bool:
            assert self.process is not None and self.process.poll() is None, (
                "redis-server exited (is it built without TLS?): " + log.read_text()[-500:])
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_for(answers, timeout=10, what="the TLS redis-server to start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    """A started TLS + ACL redis-server, stopped after the test."""
    server = TlsRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tls_store(tls_redis: TlsRedis) -> Iterator[Store]:
    s = Store.from_url(tls_redis.url(), prefix=f"sec:{uuid.uuid4().hex[:8]}:")
    yield s
    s.close()


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIFFWATCH_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLIFFWATCH), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


# -- TLS and ACL ----------------------------------------------------------------------


def test_the_app_side_flushes_over_tls_as_an_acl_user(
    tls_redis: TlsRedis, tls_store: Store
) -> None:
    """configure("rediss://alice:...@...?ssl_ca_certs=...") counts events into the TLS
    Redis, where they are read back exactly."""
    cliffwatch.configure(tls_redis.url(), prefix=tls_store.prefix, flush_interval=0.05)
    try:
        for _ in range(25):
            cliffwatch.emit(METRIC)
        assert cliffwatch.shutdown(timeout=5)
    finally:
        cliffwatch.shutdown(timeout=1)
    now = int(time.time())
    counts = tls_store.read_counts([METRIC], now - 30, now + 5)
    assert int(np.nansum(counts)) == 25
    assert tls_store.emitters(), "the app process recorded no flush"


def test_worker_and_status_work_over_tls_as_an_acl_user(
    tls_redis: TlsRedis, tls_store: Store, tmp_path: Path
) -> None:
    """`cliffwatch worker` and `cliffwatch status --json` with a rediss:// URL (CA file in
    the query) connect, judge and report the metric; the password is masked in what
    they print."""
    now = int(time.time())
    tls_store.write_counts({now - 120 + k: {METRIC: 5} for k in range(120)}, "web:1", now=now)
    rules = tmp_path / "rules.toml"
    rules.write_text(f'[[rule]]\nmetric = "{METRIC}"\n')
    env = environment(CLIFFWATCH_REDIS_URL=tls_redis.url(), CLIFFWATCH_PREFIX=tls_store.prefix)
    worker = subprocess.Popen([str(CLIFFWATCH), "worker", "--rules", str(rules)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: worker.poll() is None and tls_store.get_state(METRIC).get("status"),
                 timeout=20, what="the worker to write the metric's status over TLS")
        done = run_cli("status", "--json", env=env)
        assert done.returncode == 0, done.stderr
        overview = json.loads(done.stdout)
        assert [m["metric"] for m in overview["metrics"]] == [METRIC]
        assert overview["metrics"][0]["status"] != "not watched"
        text = run_cli("status", env=env)
        assert text.returncode == 0 and METRIC in text.stdout, text.stderr
        assert "alice:***@" in text.stdout and PASSWORD not in text.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=10)
    assert worker.returncode == 0, err
    assert "rediss://alice:***@127.0.0.1" in err
    assert PASSWORD not in out + err


def test_a_wrong_password_or_no_ca_is_one_clear_line_without_the_secret(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    """A wrong ACL password, or a rediss:// URL whose CA is not given, makes `status` exit
    1 with one error line that names the server but not the password."""
    for url in (tls_redis.url(password="wrong-" + PASSWORD),
                tls_redis.url().split("?")[0]):
        done = run_cli("status", "--redis-url", url, env=environment())
        assert done.returncode == 1, done.stdout
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, done.stderr
        assert f"127.0.0.1:{tls_redis.port}" in errors[0]
        assert PASSWORD not in done.stderr + done.stdout


# -- secrets never leak ---------------------------------------------------------------


class Feeder:
    """An app process's flusher, played by a thread: every 0.2 s it writes the seconds
    closed since, at ``rate`` events/s, with its heartbeat."""

    def __init__(self, store: Store, rate: int) -> None:
        self.store = store
        self.rate = rate
        self.stop = threading.Event()
        self.next = int(time.time())
        self.thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            now = int(time.time())
            if now > self.next:
                seconds = {s: {METRIC: self.rate} for s in range(self.next, now)}
                self.store.write_counts(seconds, "web:1", now=now)
                self.next = now

    def __enter__(self) -> Feeder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def leaks(text: str) -> list[str]:
    """The names of the secrets found in ``text``."""
    return [name for name, secret in SECRETS.items() if secret in text]


def test_no_secret_appears_in_logs_errors_status_or_alerts(
    tls_redis: TlsRedis, tls_store: Store, tmp_path: Path, wait_for: Callable[..., None]
) -> None:
    """With every secret set: a worker at -vv pages for real (Slack answering 500 first),
    `status` (text and JSON), `rules check`, `backtest` and the worker's error paths run;
    none of their stdout, stderr, the alert texts, the PagerDuty payload or the values
    in Redis contains any secret."""
    captured: dict[str, str] = {}
    with Recorder() as stub:
        rules = tmp_path / "rules.toml"
        rules.write_text(textwrap.dedent(f"""
            [[rule]]
            metric = "{METRIC}"

            [slack]
            channel = "#oncall"
            base_url = "{stub.slack_api_url}"

            [pagerduty]
            url = "{stub.pagerduty_url}"
        """))
        env = environment(
            CLIFFWATCH_REDIS_URL=tls_redis.url(), CLIFFWATCH_PREFIX=tls_store.prefix,
            CLIFFWATCH_SLACK_TOKEN=SLACK_TOKEN, CLIFFWATCH_SLACK_WEBHOOK_URL=WEBHOOK_URL,
            CLIFFWATCH_PAGERDUTY_ROUTING_KEY=ROUTING_KEY)
        start = int(time.time()) - 40 * 60
        tls_store.write_counts({start + k: {METRIC: 50} for k in range(40 * 60)})
        stub.fail_next(1, 500, path="/api/chat.postMessage")
        with Feeder(tls_store, 50) as feeder:
            worker = subprocess.Popen(
                [str(CLIFFWATCH), "-vv", "worker", "--rules", str(rules), "--warmup", "30"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                wait_for(lambda: worker.poll() is None
                         and tls_store.get_state(METRIC).get("status") == "ok",
                         timeout=30, what="the worker to judge the metric")
                feeder.rate = 0  # the business stops: a real page
                stub.wait_for(lambda rs: any(r.path == PAGERDUTY_PATH for r in rs)
                              and sum(r.path == "/api/chat.postMessage" for r in rs) >= 2,
                              timeout=30)
                for args in (["status"], ["status", "--json"], ["rules", "check", str(rules)]):
                    done = run_cli(*args, env=env)
                    assert done.returncode == 0, done.stderr
                    captured[" ".join(args)] = done.stdout + done.stderr
            finally:
                worker.send_signal(signal.SIGTERM)
                out, err = worker.communicate(timeout=15)
        captured["worker"] = out + err
        assert "orders.created firing" in err, err[-2000:]
        for request in stub.requests:  # what reached Slack and PagerDuty, minus the auth
            data = dict(request.data or {})
            data.pop("routing_key", None)
            captured[f"{request.method} {request.path}"] = json.dumps(data)
            assert "routing_key" not in json.dumps(data)

    # error paths
    bad_rules = tmp_path / "bad.toml"
    bad_rules.write_text('[[rule]]\nmetric = "orders.created"\ntoken = "x"\n')
    bad_csv = tmp_path / "counts.csv"
    bad_csv.write_text("timestamp,orders.created\n1,2\nnot-a-number,3\n")
    unreachable = f"rediss://{USER}:{PASSWORD}@127.0.0.1:1/0"
    for name, args, extra in [
        ("rules check bad", ["rules", "check", str(bad_rules)], {}),
        ("worker bad rules", ["worker", "--rules", str(bad_rules)], {}),
        ("backtest bad csv", ["backtest", str(bad_csv)], {}),
        ("worker unreachable", ["-vv", "worker", "--rules", str(rules)],
         {"CLIFFWATCH_REDIS_URL": unreachable}),
        ("status unreachable", ["status"], {"CLIFFWATCH_REDIS_URL": unreachable}),
        ("status wrong password", ["status", "--redis-url", tls_redis.url("x" + PASSWORD)], {}),
    ]:
        done = run_cli(*args, env={**env, **extra})
        assert done.returncode != 0, (name, done.stdout)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        captured[name] = done.stdout + done.stderr

    # and everything cliffwatch keeps in Redis
    raw = redis.Redis.from_url(tls_redis.url())
    try:
        for key in raw.scan_iter(match=f"{tls_store.prefix}*"):
            kind = raw.type(key)
            if kind == b"hash":
                captured[f"redis {key!r}"] = repr(raw.hgetall(key))
            elif kind == b"string":
                captured[f"redis {key!r}"] = repr(raw.get(key))
            elif kind == b"stream":
                captured[f"redis {key!r}"] = repr(raw.xrange(key))
    finally:
        raw.close()

    found = {name: leaks(text) for name, text in captured.items() if leaks(text)}
    assert found == {}, f"secrets leaked: {found}"
    assert len(captured) >= 12
