"""The Redis client a :class:`~cliffwatch.metrics.store.Store` talks through, built from a URL.

==========================================================  ================================
URL                                                         client
==========================================================  ================================
``redis://[[user]:password@]host[:port][/db]``              ``redis.Redis`` (redis-py's own
``rediss://...`` (TLS), ``unix://path[?db=N]``              URL parsing, unchanged)
``redis+cluster://[[user]:password@]host:port[,host:port]``  ``redis.cluster.RedisCluster``
``rediss+cluster://...`` (TLS), or any ``redis://`` /       with every listed node as a
``rediss://`` URL with ``?cluster=true``                    startup node
``redis+sentinel://[[user]:password@]host:port[,host:port]  ``Sentinel(...).master_for(
/service_name[/db]``                                        service_name)``: follows the
                                                            master through failovers
``redis+twemproxy://[[user]:password@]host:port``, or       ``redis.Redis`` speaking RESP2
``?twemproxy=true``                                         with no ``CLIENT SETINFO`` (see
                                                            below)
==========================================================  ================================

The password in a URL is the data nodes' (for Sentinel: the master's and replicas', not
the sentinels'). Query options redis-py accepts in a URL (``socket_timeout``,
``max_connections``, ``protocol``, ...) are accepted by every form.

One client is one connection pool: every thread of a process shares it, so an app
process holds one connection per Redis node it writes to (its flusher is the only
thread that talks to Redis), however many metrics and threads it has.

twemproxy (nutcracker 0.5) closes the connection on a command it does not know, and
redis-py 8 opens every connection with two of them (``HELLO 3`` and ``CLIENT
SETINFO``); ``redis+twemproxy://`` speaks RESP2 and skips both. twemproxy has no
``SELECT``, so the database must be 0, and no stream commands (the worker's alert
outbox); see ``docs/twemproxy.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.sentinel import Sentinel

from cliffwatch.errors import ConfigError

Client: TypeAlias = "redis.Redis | RedisCluster"
"""What :func:`connect` returns; both have the commands and pipelines a Store uses."""

DEFAULT_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
"""Client options unless given: seconds to connect, seconds to wait for a reply."""

_SECRET_QUERY_NAMES = frozenset({"password", "sentinel_password"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def mask_url(url: str) -> str:
    """Return ``url`` with its password (in the user info or a ``password=`` query
    option) replaced by ``***``. Never raises: a URL that cannot be split at all comes
    back as ``<unparsable Redis URL>``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name in _SECRET_QUERY_NAMES for name, _ in pairs):
            masked = [(n, "***" if n in _SECRET_QUERY_NAMES else v) for n, v in pairs]
            query = urlencode(masked, safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def connect(url: str, **options: Any) -> Client:
    """A new client for ``url`` (the forms are in the module docstring). Does not
    connect: a Redis that is down is only noticed by the first command.

    ``options`` go to the client (defaults: :data:`DEFAULT_OPTIONS`); they override
    query options of the URL. Raises :class:`~cliffwatch.errors.ConfigError` naming the
    URL (password masked) if it cannot be used.
    """
    if not isinstance(url, str) or not url:
        raise ConfigError(f"Redis URL must be a non-empty string, not {url!r}")
    try:
        return _connect(url, {**DEFAULT_OPTIONS, **options})
    except ConfigError as error:
        raise ConfigError(f"cannot use Redis URL {mask_url(url)!r}: {error}") from None
    except (ValueError, TypeError, redis.RedisError) as error:
        raise ConfigError(f"cannot use Redis URL {mask_url(url)!r}: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _connect(url: str, options: dict[str, Any]) -> Client:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    base, _, flavour = scheme.partition("+")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if not flavour:
        if _flag(query.pop("cluster", None), "cluster"):
            flavour = "cluster"
        elif _flag(query.pop("twemproxy", None), "twemproxy"):
            flavour = "twemproxy"
        else:
            return redis.Redis.from_url(url, **options)
    if base not in ("redis", "rediss") or flavour not in ("cluster", "sentinel", "twemproxy"):
        raise ConfigError(
            f"unknown scheme {parts.scheme!r}: use redis://, rediss://, unix://, "
            "redis+cluster://, rediss+cluster://, redis+sentinel:// or redis+twemproxy://"
        )
    if flavour == "twemproxy":
        return _twemproxy(url, base, parts.netloc, parts.path, query, options)
    kwargs = {**_query_options(query), **options}
    if parts.username:
        kwargs.setdefault("username", unquote(parts.username))
    if parts.password:
        kwargs.setdefault("password", unquote(parts.password))
    nodes = _nodes(parts.netloc.rpartition("@")[2], 26379 if flavour == "sentinel" else 6379)
    if flavour == "cluster":
        if base == "rediss":
            kwargs.setdefault("ssl", True)
        db = parts.path.strip("/")
        if db not in ("", "0") or kwargs.pop("db", 0) not in (0, "0"):
            raise ConfigError("Redis Cluster has only database 0")
        startup = [ClusterNode(h, p) for h, p in nodes]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=startup, **kwargs)
    if base == "rediss":
        raise ConfigError("TLS to Sentinel is not supported by this URL form")
    service, number = _service(parts.path)
    if number is not None:
        kwargs["db"] = number
    sentinel_kwargs = {
        k: v for k, v in kwargs.items() if k.startswith("socket_") and k != "socket_read_size"
    }
    if "sentinel_password" in kwargs:
        sentinel_kwargs["password"] = kwargs.pop("sentinel_password")
    sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(service, **kwargs)  # type: ignore[no-untyped-call]
    return client


def _twemproxy(
    url: str, base: str, netloc: str, path: str, query: dict[str, str], options: dict[str, Any]
) -> redis.Redis:
    if "," in netloc:
        raise ConfigError("name one twemproxy (put several behind a load balancer)")
    if path.strip("/") not in ("", "0") or query.get("db", "0") != "0":
        raise ConfigError("twemproxy has no SELECT: use database 0")
    plain = urlunsplit((base, netloc, path, urlencode(query), ""))
    kwargs: dict[str, Any] = {"protocol": 2, "driver_info": None, **options}
    return redis.Redis.from_url(plain, **kwargs)


def _flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not true or false")


def _query_options(query: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in query.items():
        parser: Callable[[str], Any] | None = URL_QUERY_ARGUMENT_PARSERS.get(name)  # type: ignore[assignment]
        try:
            out[name] = parser(value) if parser else value
        except (TypeError, ValueError):
            raise ConfigError(f"invalid value for {name!r} in the query") from None
    return out


def _nodes(hosts: str, default_port: int) -> list[tuple[str, int]]:
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            raise ConfigError("an empty host in the host list")
        if item.startswith("["):  # [v6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = item.rpartition(":")
            if not host:
                host, port_text = item, ""
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigError(f"bad port in {item!r}") from None
        if not 0 < port < 65536:
            raise ConfigError(f"bad port in {item!r}")
        nodes.append((host, port))
    return nodes


def _service(path: str) -> tuple[str, int | None]:
    pieces = [unquote(p) for p in path.split("/") if p]
    if not pieces or len(pieces) > 2:
        raise ConfigError("name the monitored master: redis+sentinel://host:port/service[/db]")
    if len(pieces) == 1:
        return pieces[0], None
    try:
        return pieces[0], int(pieces[1])
    except ValueError:
        raise ConfigError(f"bad database number {pieces[1]!r}") from None
