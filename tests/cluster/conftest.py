"""Real Redis deployments on free loopback ports in temporary directories: a Redis
Cluster (3 masters, 3 replicas), twemproxy in front of 3 Redis shards, and a master with
one replica watched by 3 sentinels. Each fixture skips its tests, with the reason, when a
binary is missing, and stops every process it started."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

CLUSTER_NODE_TIMEOUT_MS = 1000
SENTINEL_DOWN_AFTER_MS = 1000


def free_ports(count: int, bus_offset: int = 0) -> list[int]:
    """``count`` distinct loopback ports free now (and, with ``bus_offset``, each
    ``port + bus_offset`` too). Every port stays bound until all are chosen, so the
    kernel cannot hand the same one out twice."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(200 * count):
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if bus_offset:
                if port + bus_offset >= 65536:
                    continue
                bus = socket.socket()
                held.append(bus)
                try:
                    bus.bind(("127.0.0.1", port + bus_offset))
                except OSError:
                    continue
            ports.append(port)
            if len(ports) == count:
                return ports
        raise RuntimeError(f"no {count} free ports found")
    finally:
        for sock in held:
            sock.close()


def binary(name: str) -> str:
    """The path of ``name``, or skip the test saying it is not installed."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def wait(condition: Callable[[], object], timeout: float, what: str,
         describe: Callable[[], str] | None = None) -> float:
    """Poll ``condition`` until true; return the seconds it took. Fails after ``timeout``,
    with what ``describe`` says of the state then."""
    start = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - start
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() - start > timeout:
            detail = f"\n{describe()}" if describe else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(0.02)


def client(port: int) -> redis.Redis:
    """A plain client of one server (not cluster-aware), short timeouts."""
    return redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=2.0)


class Process:
    """One server process started in a directory of its own."""

    def __init__(self, argv: list[str], cwd: Path, log: Path) -> None:
        self.argv = argv
        self.cwd = cwd
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        """SIGKILL: the process is gone at once, as in a crash."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def redis_argv(port: int, *extra: str) -> list[str]:
    return [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", *extra]


# -- Redis Cluster ----------------------------------------------------------------------


class Cluster:
    """Six ``redis-server --cluster-enabled yes``, joined by ``redis-cli --cluster create``
    with one replica per master."""

    def __init__(self, root: Path) -> None:
        self.ports = free_ports(6, bus_offset=10000)
        self.nodes = {
            port: Process(
                redis_argv(port, "--cluster-enabled", "yes",
                           "--cluster-config-file", "nodes.conf",
                           "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS)),
                root / str(port), root / f"{port}.log")
            for port in self.ports
        }
        self.dead: set[int] = set()

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming three of the nodes as startup nodes."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start(self) -> None:
        cli = binary("redis-cli")
        for node in self.nodes.values():
            node.start()
        for port in self.ports:
            wait(lambda p=port: client(p).ping(), 10, f"cluster node {port}")
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )
        self.wait_ok(30)
        wait(self._replicas_synced, 30, "replicas in sync")

    def _info(self, port: int) -> dict[str, str]:
        text = client(port).execute_command("CLUSTER", "INFO")
        text = text.decode() if isinstance(text, bytes) else text
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def alive(self) -> list[int]:
        return [p for p in self.ports if p not in self.dead]

    def wait_ok(self, timeout: float) -> float:
        """Wait until every live node reports ``cluster_state:ok``; return the seconds."""
        return wait(lambda: all(self._info(p)["cluster_state"] == "ok" for p in self.alive()),
                    timeout, "cluster_state:ok on every live node")

    def _replicas_synced(self) -> bool:
        for port in self.alive():
            info = client(port).info("replication")
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def masters(self) -> list[int]:
        """Ports of the live masters."""
        return [p for p in self.alive() if client(p).info("replication")["role"] == "master"]

    def master_of_key(self, key: str) -> int:
        slot = int(client(self.alive()[0]).execute_command("CLUSTER", "KEYSLOT", key))
        for port in self.masters():
            for start, end, *_ in client(port).execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(_[0][1])
        raise AssertionError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node."""
        self.nodes[port].kill()
        self.dead.add(port)

    def serves_all_slots_without(self, port: int) -> bool:
        """True once the live masters cover every slot and none of it is ``port``."""
        slots = client(self.alive()[0]).execute_command("CLUSTER", "SLOTS")
        covered = sum(end - start + 1 for start, end, *_ in slots)
        return covered == 16384 and all(int(s[2][1]) != port for s in slots)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running 3-master, 3-replica Redis Cluster (for the whole test module)."""
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


# -- twemproxy ---------------------------------------------------------------------------

NUTCRACKER_CONFIG = """\
cliffwatch:
  listen: 127.0.0.1:{port}
  hash: murmur
  hash_tag: "{{}}"
  distribution: ketama
  redis: true
  preconnect: true
  auto_eject_hosts: false
  server_connections: 1
  timeout: 2000
  servers:
{servers}
"""


class Twemproxy:
    """``nutcracker`` on a free port in front of three ``redis-server`` shards."""

    def __init__(self, root: Path) -> None:
        self.nutcracker = binary("nutcracker")
        self.port, self.stats_port, *self.shard_ports = free_ports(5)
        self.shards = [Process(redis_argv(p), root / str(p), root / f"{p}.log")
                       for p in self.shard_ports]
        servers = "\n".join(f"   - 127.0.0.1:{p}:1 shard{i}"
                            for i, p in enumerate(self.shard_ports))
        self.config = root / "nutcracker.yml"
        self.config.write_text(NUTCRACKER_CONFIG.format(port=self.port, servers=servers))
        self.proxy = Process(
            [self.nutcracker, "-c", str(self.config), "-s", str(self.stats_port),
             "-o", str(root / "nutcracker.log")],
            root, root / "nutcracker.out")

    @property
    def url(self) -> str:
        return f"redis+twemproxy://127.0.0.1:{self.port}"

    def start(self) -> None:
        for shard in self.shards:
            shard.start()
        for port in self.shard_ports:
            wait(lambda p=port: client(p).ping(), 10, f"shard {port}")
        self.proxy.start()
        proxied = redis.Redis(port=self.port, protocol=2, driver_info=None,
                              socket_connect_timeout=0.5, socket_timeout=2.0)
        wait(lambda: proxied.ping(), 10, "nutcracker to answer")
        proxied.close()

    def stop(self) -> None:
        self.proxy.stop()
        for shard in self.shards:
            shard.stop()


@pytest.fixture(scope="module")
def twemproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twemproxy]:
    """nutcracker (``hash_tag: "{}"``) in front of 3 running Redis shards."""
    t = Twemproxy(tmp_path_factory.mktemp("twemproxy"))
    try:
        t.start()
        yield t
    finally:
        t.stop()


# -- Sentinel ----------------------------------------------------------------------------

SERVICE = "cwmaster"


class Sentinels:
    """A master, one replica and three ``redis-sentinel`` processes watching them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.master_port, self.replica_port = free_ports(2)
        self.servers = {
            self.master_port: Process(redis_argv(self.master_port), root / "master",
                                      root / "master.log"),
            self.replica_port: Process(
                redis_argv(self.replica_port, "--replicaof", "127.0.0.1",
                           str(self.master_port)),
                root / "replica", root / "replica.log"),
        }
        self.sentinel_ports: list[int] = []
        self.sentinels: list[Process] = []

    def _start_sentinels(self) -> None:
        """Three sentinels on ports chosen just now, so nothing else has taken them."""
        self.sentinel_ports = free_ports(3)
        for port in self.sentinel_ports:
            conf = self.root / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {SENTINEL_DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            sentinel = Process([*_sentinel_command(), str(conf), "--sentinel"],
                               self.root, self.root / f"sentinel-{port}.log")
            sentinel.start()
            self.sentinels.append(sentinel)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def master(self) -> tuple[str, int] | None:
        """The master the first answering sentinel names."""
        for port in self.sentinel_ports:
            try:
                host, master_port = client(port).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                return (host.decode(), int(master_port))
            except (redis.RedisError, TypeError):
                continue
        return None

    def start(self) -> None:
        for server in self.servers.values():
            server.start()
        for port in self.servers:
            wait(lambda p=port: client(p).ping(), 10, f"redis {port}")
        wait(lambda: client(self.replica_port).info("replication")
             .get("master_link_status") == "up", 15, "the replica in sync")
        self._start_sentinels()
        wait(lambda: all(_sentinels_seen(client(p)) == 3 for p in self.sentinel_ports),
             20, "three sentinels that know each other", self._describe)

    def _describe(self) -> str:
        """What each sentinel sees, and the end of its log (for a failed wait)."""
        lines = []
        for port, sentinel in zip(self.sentinel_ports, self.sentinels, strict=True):
            try:
                seen: object = _sentinels_seen(client(port))
            except (redis.RedisError, OSError, KeyError) as exc:
                seen = exc
            exited = sentinel.popen.poll() if sentinel.popen else None
            tail = sentinel.log.read_text(errors="replace").splitlines()[-5:]
            lines.append(f"sentinel {port}: sees {seen}, exit code {exited}; log ends:")
            lines.extend(f"    {line}" for line in tail)
        return "\n".join(lines)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers.values():
            server.stop()


def _sentinel_command() -> list[str]:
    """``redis-sentinel``, or ``redis-server`` in sentinel mode (the same program)."""
    path = shutil.which("redis-sentinel")
    return [path] if path else [binary("redis-server")]


def _sentinels_seen(c: redis.Redis) -> int:
    """How many sentinels (itself included) a sentinel knows watch the master."""
    master = c.sentinel_masters()[SERVICE]
    return int(master["num-other-sentinels"]) + 1


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[Sentinels]:
    """A running master + replica watched by three sentinels (one set per test)."""
    s = Sentinels(tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.stop()
