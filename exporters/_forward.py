"""A lossless Fluentd shipper: ECS documents over the Forward protocol, at least once.

``msgpack``'s C packer encodes the records (EventTime framing: see ``_ENTRY_HEAD``).
fluent-logger's sender cannot be reused for the rest (REFERENCE §2: Message mode only, no
``chunk``/ack, no handshake, no TLS, drops its whole buffer past 1 MiB, blocks callers, not
fork-safe) and no maintained Python library implements the client side, so this module writes
by hand the Forward *client*: PackedForward batching per tag, the chunk/ack state machine with
resend of the same chunk id, the HELO/PING/PONG handshake, failover, split and dead-letter of
refused batches, and the disk spill.

Threads: :meth:`ForwardSink.write` runs on the caller's (batcher) thread and only encodes and
appends to a byte-bounded buffer; one sender thread of the sink's own does every socket
operation. Durability: a batch leaves memory only when acked, dead-lettered, or written to a
spill segment (fsynced, then renamed into place).
"""

from __future__ import annotations

import atexit
import base64
import calendar
import gzip
import hashlib
import hmac
import ipaddress
import json
import os
import random
import re
import secrets
import socket
import ssl
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rpcscope import schema
from rpcscope._config import ConfigError
from rpcscope.exporters._logs import LogSink

DEFAULT_PORT: Final = 24224
DEFAULT_ACCESS_TAG: Final = "rpcscope.access"
DEFAULT_APP_TAG: Final = "rpcscope.app"
#: Fluent Bit's in_forward rejects requests over 6,144,000 bytes; 1 MiB stays far below it
#: and below common Fluentd ``chunk_limit_size`` settings.
DEFAULT_BATCH_BYTES: Final = 1 << 20
_SEGMENT_SUFFIX: Final = ".fwd"
_SEGMENT_VERSION: Final = 1
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_MAX_TAG_LEN: Final = 128
_MAX_DEPTH: Final = 32
#: ``[EventTime, record]`` up to the record: fixarray(2), then EventTime as msgpack fixext8
#: of type 0 (``D7 00``, uint32 BE seconds, uint32 BE nanoseconds). fluent-logger's
#: ``EventTime`` (an ExtType built per record in Python) gives the same bytes; framing them
#: with one precompiled struct is cheaper per record, and the record itself still goes
#: through msgpack's C packer.
_ENTRY_HEAD: Final = struct.Struct(">BBbII")
#: How often the spill directory is searched for segments of dead processes or closed sinks.
_RESCAN_SECONDS: Final = 10.0
#: Strings at most this long are never truncated: the budget goes to the large fields.
_SHORT_FIELD: Final = 1024


class ForwardAuthError(Exception):
    """The server refused or could not prove the shared-key handshake (a configuration fix)."""


class _NoAck(Exception):
    """The whole request was written but no matching ack came: the server may refuse it."""


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """One Forward endpoint: TCP ``host:port`` (TLS or not) or a unix socket path."""

    host: str
    port: int
    unix_path: str | None = None
    tls: bool = False

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix://{self.unix_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls://' if self.tls else ''}{host}:{self.port}"


def _bad(name: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"invalid Fluentd option {name!r}: {problem}; fix: {fix}")


def parse_servers(value: str | Sequence[str], name: str = "servers") -> tuple[Server, ...]:
    """``host:port``, ``[v6]:port``, ``host`` (port 24224), ``tls://host:port``,
    ``unix:///path``; several comma-separated (or a list) for failover, tried in order."""
    items = value.split(",") if isinstance(value, str) else list(value)
    servers: list[Server] = []
    example = "host:24224, tls://host:24224, [::1]:24224 or unix:///run/fluentd.sock"
    for raw in items:
        if not isinstance(raw, str):
            raise _bad(name, f"server {raw!r} is not a string", f"e.g. {example}")
        item = raw.strip()
        if not item:
            continue
        if item.startswith("unix://"):
            path = item[len("unix://"):]
            if not path.startswith("/"):
                raise _bad(name, f"{item!r} needs an absolute path", "e.g. unix:///var/run/f.sock")
            servers.append(Server("", 0, unix_path=path))
            continue
        tls = False
        for scheme in ("tls://", "tcp://"):
            if item.startswith(scheme):
                tls, item = scheme == "tls://", item[len(scheme):]
        if "/" in item or "://" in item:
            raise _bad(name, f"{raw.strip()!r} is not host:port", f"e.g. {example}")
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise _bad(name, f"{raw.strip()!r}: unbalanced IPv6 brackets", "e.g. [::1]:24224")
            port_text = rest[1:] if rest else ""
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise _bad(name, f"{host!r} is not an IPv6 address", "e.g. [::1]:24224") from None
        elif item.count(":") > 1:
            raise _bad(name, f"{raw.strip()!r}: an IPv6 address needs brackets", "e.g. [::1]:24224")
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise _bad(name, f"{raw.strip()!r} has no host", f"e.g. {example}")
        port = DEFAULT_PORT
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise _bad(name, f"port {port_text!r} in {raw.strip()!r} is not 1-65535",
                           "e.g. fluentd:24224")
            port = int(port_text)
        servers.append(Server(host, port, tls=tls))
    if not servers:
        raise _bad(name, "no server given", f"e.g. {example}")
    return tuple(servers)


def check_tag(tag: Any, name: str) -> str:
    """Fluentd routes and builds file paths from tags: dot-separated words of
    ``[A-Za-z0-9_-]``, at most 128 characters."""
    if not isinstance(tag, str) or len(tag) > _MAX_TAG_LEN or not _TAG_RE.fullmatch(tag):
        shown = repr(tag) if len(repr(tag)) < 80 else repr(tag)[:77] + "..."
        raise _bad(name, f"{shown} is not a Fluentd tag (dot-separated words of letters, "
                   f"digits, '_' and '-', at most {_MAX_TAG_LEN} characters)",
                   "e.g. rpcscope.access")
    return tag


def _readable_file(path: Any, name: str) -> str:
    if not isinstance(path, str | os.PathLike):
        raise _bad(name, f"must be a file path, got {type(path).__name__}", "a PEM file path")
    text = os.fspath(path)
    if not os.path.isfile(text):
        raise _bad(name, f"file {text!r} does not exist", "point it at a readable PEM file")
    return text


def tls_context(ca: str | None, cert: str | None, key: str | None, insecure: bool,
                ) -> ssl.SSLContext:
    """Client TLS: the system or given CA, hostname checks on, TLS >= 1.2; ``insecure`` turns
    verification off and must be asked for by name."""
    if key is not None and cert is None:
        raise _bad("tls_key", "a client key without a client certificate",
                   "set tls_cert too (or drop tls_key)")
    try:
        ctx = ssl.create_default_context(cafile=_readable_file(ca, "tls_ca") if ca else None)
    except ssl.SSLError as e:
        raise _bad("tls_ca", f"cannot load CA file {ca!r}: {e}", "a PEM CA bundle") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        try:
            ctx.load_cert_chain(_readable_file(cert, "tls_cert"),
                                _readable_file(key, "tls_key") if key else None)
        except ssl.SSLError as e:
            raise _bad("tls_cert", f"cannot load client certificate/key: {e}",
                       "a PEM certificate and its unencrypted PEM key") from None
    return ctx


def forward_options(cfg: Any) -> dict[str, Any]:
    """:class:`ForwardSink` keyword arguments from a validated :class:`rpcscope.Config`
    (``ForwardSink(**forward_options(cfg))``)."""
    return {
        "servers": cfg.fluentd,
        "shared_key": cfg.fluentd_shared_key,
        "username": cfg.fluentd_username,
        "password": cfg.fluentd_password,
        "tls_ca": cfg.fluentd_tls_ca,
        "tls_cert": cfg.fluentd_tls_cert,
        "tls_key": cfg.fluentd_tls_key,
        "tls_insecure": cfg.fluentd_tls_insecure,
        "spill_dir": cfg.fluentd_spill_dir,
        "access_tag": cfg.fluentd_access_tag,
        "app_tag": cfg.fluentd_app_tag,
    }


# -- batches and spill segments --------------------------------------------------------------


class _Batch:
    """One PackedForward request: entries of one tag under one chunk id, kept until acked."""

    __slots__ = ("chunk", "count", "entries", "first_seq", "own", "refusals", "request",
                 "segment", "sizes", "suspect_acks", "tag")

    def __init__(self, tag: str, entries: bytes, sizes: list[int], first_seq: int,
                 own: bool = True, chunk: str | None = None, segment: str | None = None) -> None:
        self.tag = tag
        self.entries = entries
        #: Byte length of each entry, so a refused batch can be split without decoding it.
        self.sizes = sizes
        self.count = len(sizes)
        self.first_seq = first_seq
        self.own = own
        self.chunk = chunk if chunk is not None else base64.b64encode(os.urandom(16)).decode()
        self.segment = segment
        self.refusals = 0
        #: Acks the server had sent when this single record became suspect (None: not yet).
        self.suspect_acks: int | None = None
        self.request: bytes | None = None

    def split(self) -> tuple[_Batch, _Batch]:
        half = self.count // 2
        cut = sum(self.sizes[:half])
        a = _Batch(self.tag, self.entries[:cut], self.sizes[:half], self.first_seq, self.own)
        b = _Batch(self.tag, self.entries[cut:], self.sizes[half:], self.first_seq + half,
                   self.own)
        return a, b


class _Open:
    """The batch being filled for one tag."""

    __slots__ = ("first_seq", "opened", "parts", "size", "sizes")

    def __init__(self, first_seq: int) -> None:
        self.parts: list[bytes] = []
        self.sizes: list[int] = []
        self.size = 0
        self.first_seq = first_seq
        self.opened = time.monotonic()


#: Tokens of the sinks alive in this process: a segment named with our pid but another token
#: was left by a sink that is closed, and may be adopted.
_LIVE_TOKENS: set[str] = set()


def _write_segment(directory: str, batch: _Batch, token: str, seq: int) -> tuple[str, int]:
    """Atomically: a temp file, fsync, rename, fsync of the directory. Names sort oldest first
    and carry pid and sink token, so forked processes never collide and orphans (of a dead
    process or a closed sink) can be adopted."""
    name = f"{time.time_ns():020d}-{os.getpid()}-{token}-{seq:08d}{_SEGMENT_SUFFIX}"
    data = msgpack.packb([_SEGMENT_VERSION, batch.tag, batch.chunk, batch.sizes, batch.entries],
                         use_bin_type=True)
    tmp = os.path.join(directory, f".tmp-{name}")
    final = os.path.join(directory, name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, final)
    _fsync_dir(directory)
    return final, len(data)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_segment(path: str, own: bool) -> _Batch:
    with open(path, "rb") as f:
        version, tag, chunk, sizes, entries = msgpack.unpackb(f.read(), raw=False)
    if version != _SEGMENT_VERSION:
        raise ValueError(f"unknown spill segment version {version}")
    return _Batch(tag, entries, list(sizes), 0, own=own, chunk=chunk, segment=path)


def _segment_owner(name: str) -> tuple[int, str]:
    parts = name.split("-")
    try:
        return int(parts[1]), parts[2]
    except (IndexError, ValueError):
        return -1, ""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- time and record encoding ----------------------------------------------------------------


class _Clock:
    """``@timestamp`` (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) → (seconds, nanoseconds); the
    seconds of the last prefix are cached (a batch mostly shares them)."""

    __slots__ = ("prefix", "seconds")

    def __init__(self) -> None:
        self.prefix = ""
        self.seconds = 0

    def parse(self, ts: Any) -> tuple[int, int]:
        try:
            prefix = ts[:19]
            if prefix != self.prefix:
                self.seconds = calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S"))
                self.prefix = prefix
            if not 0 <= self.seconds < 1 << 32:  # EventTime seconds are uint32
                raise ValueError(ts)
            rest = ts[19:]
            if rest == "Z":
                return self.seconds, 0
            if rest[0] != "." or rest[-1] != "Z" or not rest[1:-1].isdigit():
                raise ValueError(ts)
            return self.seconds, int(rest[1:-1][:9].ljust(9, "0"))
        except Exception:
            seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
            return seconds, nanos


def _default(value: Any) -> Any:
    """Values msgpack has no type for: containers become lists, the rest strings."""
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def _sanitize(value: Any, depth: int, seen: set[int]) -> Any:
    """A value msgpack can encode: lone surrogates escaped, out-of-range ints and unknown
    objects as strings, cycles and deep nesting cut."""
    if value is None or isinstance(value, bool | float | bytes):
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, int):
        return value if -(1 << 63) <= value < (1 << 64) else str(value)
    if isinstance(value, dict | list | tuple | set | frozenset):
        if depth >= _MAX_DEPTH or id(value) in seen:
            return "<recursive or too deep>"
        seen.add(id(value))
        try:
            if isinstance(value, dict):
                return {_sanitize(k if isinstance(k, str) else str(k), depth + 1, seen):
                        _sanitize(v, depth + 1, seen) for k, v in value.items()}
            return [_sanitize(v, depth + 1, seen) for v in value]
        finally:
            seen.discard(id(value))
    return _sanitize(str(value), depth + 1, seen)


# -- the sink --------------------------------------------------------------------------------


class ForwardSink(LogSink):
    """Ships ECS documents to Fluentd (or Fluent Bit) over the Forward protocol, at least once.

    Documents whose ``log.logger`` is the access logger go under ``access_tag``, the rest
    under ``app_tag``. :meth:`write` never does network I/O; one sender thread (started on the
    first write) connects, authenticates, sends PackedForward batches with a ``chunk`` id and
    waits for the ack, resending the same chunk after a timeout, reconnect or failover. It is
    also a prometheus_client collector of its own counters (``registry.register(sink)``).
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        shared_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        self_hostname: str | None = None,
        tls: bool = False,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_insecure: bool = False,
        access_tag: str = DEFAULT_ACCESS_TAG,
        app_tag: str = DEFAULT_APP_TAG,
        ack: bool = True,
        compress: bool = False,
        spill_dir: str | os.PathLike[str] | None = None,
        max_buffer_bytes: int = 64 << 20,
        spill_max_bytes: int = 1 << 30,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        batch_records: int = 10_000,
        max_record_bytes: int | None = None,
        flush_interval: float = 0.2,
        connect_timeout: float = 5.0,
        write_timeout: float = 10.0,
        ack_timeout: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        split_after: int = 3,
        dead_letter_path: str | os.PathLike[str] | None = None,
        exit_timeout: float = 5.0,
    ) -> None:
        self.servers = parse_servers(servers)
        self.access_tag = check_tag(access_tag, "access_tag")
        self.app_tag = check_tag(app_tag, "app_tag")
        for name, value in (("shared_key", shared_key), ("username", username),
                            ("password", password), ("self_hostname", self_hostname)):
            if value is not None and (not isinstance(value, str) or not value):
                raise _bad(name, "must be a non-empty string", f"unset it or give a {name}")
        if username is not None and shared_key is None:
            raise _bad("username", "user authentication runs inside the shared-key handshake",
                       "set shared_key too")
        if (username is None) != (password is None):
            raise _bad("password", "username and password go together", "set both or neither")
        self._shared_key = shared_key.encode() if shared_key else None
        self._username = (username or "").encode()
        self._password = (password or "").encode()
        self._hostname = (self_hostname or socket.gethostname()).encode()
        use_tls = tls or tls_insecure or tls_ca is not None or tls_cert is not None
        if use_tls and any(s.unix_path is not None for s in self.servers):
            raise _bad("tls", "TLS over a unix socket is not supported",
                       "use tls://host:port, or drop the TLS options for a local socket")
        if use_tls:
            self.servers = tuple(Server(s.host, s.port, s.unix_path, True) for s in self.servers)
        self._ssl = (tls_context(tls_ca, tls_cert, tls_key, tls_insecure)
                     if any(s.tls for s in self.servers) else None)
        if max_record_bytes is None:
            max_record_bytes = batch_bytes
        for name, number, low, example in (
                ("max_buffer_bytes", max_buffer_bytes, 1 << 16, "64 << 20"),
                ("spill_max_bytes", spill_max_bytes, 1 << 16, "1 << 30"),
                ("batch_bytes", batch_bytes, 1 << 10, "1 << 20"),
                ("batch_records", batch_records, 1, "10_000"),
                ("max_record_bytes", max_record_bytes, 1 << 12, "1 << 20"),
                ("split_after", split_after, 1, "3")):
            if isinstance(number, bool) or not isinstance(number, int) or number < low:
                raise _bad(name, f"must be an integer >= {low}, got {number!r}",
                           f"{name}={example}")
        if batch_bytes > max_buffer_bytes:
            raise _bad("batch_bytes", "is larger than max_buffer_bytes",
                       "raise max_buffer_bytes or lower batch_bytes")
        for name, seconds in (("flush_interval", flush_interval),
                              ("connect_timeout", connect_timeout),
                              ("write_timeout", write_timeout), ("ack_timeout", ack_timeout),
                              ("backoff_base", backoff_base), ("backoff_max", backoff_max),
                              ("exit_timeout", exit_timeout)):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                    or not 0 < seconds < 86400:
                raise _bad(name, f"must be seconds > 0, got {seconds!r}", f"{name}=5")
        self._spill_dir = os.fspath(spill_dir) if spill_dir is not None else None
        if self._spill_dir is not None:
            try:
                os.makedirs(self._spill_dir, mode=0o700, exist_ok=True)
            except OSError as e:
                raise _bad("spill_dir", f"cannot create {self._spill_dir!r}: {e.strerror}",
                           "a writable directory on a persistent volume") from None
        if dead_letter_path is None and self._spill_dir is not None:
            dead_letter_path = os.path.join(self._spill_dir, "dead-letter.jsonl")
        self._dead_letter_path = os.fspath(dead_letter_path) if dead_letter_path else None
        self._ack = bool(ack)
        self._compress = bool(compress)
        self._max_buffer = max_buffer_bytes
        self._spill_max = spill_max_bytes
        self._batch_bytes = batch_bytes
        self._batch_records = batch_records
        self._max_record = max_record_bytes
        self._interval = float(flush_interval)
        self._connect_timeout = float(connect_timeout)
        self._write_timeout = float(write_timeout)
        self._ack_timeout = float(ack_timeout)
        self._backoff_base = float(backoff_base)
        self._backoff_max = float(backoff_max)
        self._split_after = split_after
        self._exit_timeout = float(exit_timeout)
        self._init_state()
        ref = weakref.ref(self)
        os.register_at_fork(before=lambda: _fork_hook(ref, "before"),
                            after_in_parent=lambda: _fork_hook(ref, "parent"),
                            after_in_child=lambda: _fork_hook(ref, "child"))
        atexit.register(_close_at_exit, ref)

    def _init_state(self) -> None:
        """Everything a process owns alone (rebuilt in a forked child)."""
        self._pid = os.getpid()
        self._token = secrets.token_hex(4)
        _LIVE_TOKENS.add(self._token)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._packer = msgpack.Packer(use_bin_type=True, default=_default)
        self._encode_lock = threading.Lock()
        self._clock = _Clock()
        self._open: dict[str, _Open] = {}
        self._queue: deque[_Batch] = deque()
        self._inflight: _Batch | None = None
        self._mem_bytes = 0
        self._seq = 0
        self._segments: list[str] = []  # spilled, oldest first
        self._segment_bytes: dict[str, int] = {}
        self._own_segments: dict[str, int] = {}  # path -> first_seq, for flush()
        self._spill_bytes = 0
        self._segment_seq = 0
        self._scanned = -1e9
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._keepalive = True
        self._server_index = 0
        self._closed = False
        self._closing = False
        self._deadline = float("inf")
        self._wake = threading.Event()
        self._last_ack = time.time()
        self._last_error: str | None = None
        self._errors_reported: dict[str, float] = {}
        self._acks_total = 0
        self._counts: dict[str, int] = dict.fromkeys(schema.FORWARD_OUTCOMES, 0)
        self._dropped: dict[str, int] = dict.fromkeys(schema.FORWARD_DROP_REASONS, 0)
        self._bytes_sent = 0
        self._reconnects = 0

    # -- the batcher side: encode and buffer, no I/O ---------------------------------------

    def write(self, documents: Sequence[dict[str, Any]]) -> int:
        """Encode and buffer ``documents``; how many were accepted (buffered or spilled)."""
        if self._pid != os.getpid():
            self._reset_after_fork()
        if self._closed:
            self._drop("closed", len(documents))
            return 0
        encoded: list[tuple[str, bytes, bytes]] = []
        access_logger = schema.ACCESS_LOGGER
        access_tag, app_tag, max_record = self.access_tag, self.app_tag, self._max_record
        head_size = _ENTRY_HEAD.size
        with self._encode_lock:
            pack = self._packer.pack
            clock = self._clock
            head_pack = _ENTRY_HEAD.pack
            for doc in documents:
                try:
                    ts = doc.get("@timestamp")
                    # Fast path: the writer's own format, in the second seen last.
                    if (type(ts) is str and len(ts) == 27 and ts[26] == "Z"
                            and ts[19] == "." and ts[:19] == clock.prefix
                            and ts[20:26].isdigit()):
                        seconds, nanos = clock.seconds, int(ts[20:26]) * 1000
                    else:
                        seconds, nanos = clock.parse(ts)
                    head = head_pack(0x92, 0xD7, 0, seconds, nanos)
                    try:
                        body = pack(doc)
                    except Exception:
                        body = self._repaired(doc)
                    if len(body) + head_size > max_record:
                        body = self._truncated(doc, body)
                    encoded.append((access_tag if doc.get("log.logger") == access_logger
                                    else app_tag, head, body))
                except Exception as e:
                    self._drop("unencodable", 1)
                    self._report("encode", f"a log document could not be encoded: {e!r}")
        accepted = 0
        spill: list[_Batch] = []
        with self._cond:
            limit = self._max_buffer
            batch_bytes, batch_records = self._batch_bytes, self._batch_records
            open_batches = self._open
            seq = self._seq
            for tag, head, body in encoded:
                size = head_size + len(body)
                if self._mem_bytes + size > limit:
                    if self._spill_dir is not None:
                        spill.extend(self._take_for_spill(size))
                    if self._mem_bytes + size > limit:
                        self._dropped["buffer_full"] += 1
                        continue
                opened = open_batches.get(tag)
                if opened is None:
                    opened = open_batches[tag] = _Open(seq)
                    self._cond.notify_all()  # an idle sender starts the flush-interval clock
                opened.parts += (head, body)
                opened.sizes.append(size)
                opened.size += size
                self._mem_bytes += size
                seq += 1
                if opened.size >= batch_bytes or len(opened.sizes) >= batch_records:
                    self._seal(tag)
            accepted = seq - self._seq
            self._seq = seq
            self._counts["accepted"] += accepted
        if spill:
            self._spill(spill)
        if accepted and (self._thread is None or not self._thread.is_alive()):
            self._start_thread()
        return accepted

    def _repaired(self, doc: dict[str, Any]) -> bytes:
        """Field by field: a value that does not encode is sanitized (made a string), and a
        field that still fails is dropped and named in ``rpcscope.dropped_fields``."""
        pack = self._packer.pack
        kept: dict[str, Any] = {}
        dropped: list[str] = []
        for key, value in doc.items():
            name = key if isinstance(key, str) else str(key)
            try:
                pack(name)
                pack(value)
                kept[name] = value
                continue
            except Exception:  # noqa: S110 - the sanitizing step below handles it
                pass
            try:
                clean = _sanitize(value, 0, set())
                pack(clean)
                kept[_sanitize(name, 0, set())] = clean
            except Exception:
                dropped.append(_sanitize(name, 0, set()))
        if dropped:
            kept["rpcscope.dropped_fields"] = [*kept.get("rpcscope.dropped_fields", ()),
                                               *dropped]
        self._counts["repaired"] += 1
        return pack(kept)  # type: ignore[no-any-return]

    def _truncated(self, doc: dict[str, Any], packed: bytes) -> bytes:
        """A record larger than ``max_record_bytes`` (a 10 MB message): its largest strings
        are cut to fit, then whole largest fields dropped; named, never the record lost."""
        pack = self._packer.pack
        try:
            record = msgpack.unpackb(packed, raw=False, strict_map_key=False)
        except Exception:
            record = dict(doc)
        budget = max(self._max_record - 4096, 1024)
        big = sorted((k for k, v in record.items() if isinstance(v, str)
                      and len(v) > _SHORT_FIELD), key=lambda k: -len(record[k]))
        truncated: list[str] = []
        if big:
            share = max(budget // len(big) // 4, _SHORT_FIELD)  # UTF-8: up to 4 bytes a char
            for key in big:
                value = record[key]
                if len(value) > share:
                    record[key] = value[:share] + f"...[truncated {len(value) - share} chars]"
                    truncated.append(key)
        out = pack(record)
        dropped: list[str] = []
        while len(out) > self._max_record - 16 and record:
            largest = max(record, key=lambda k: len(pack(record[k])))
            del record[largest]
            dropped.append(largest)
            out = pack(record)
        if truncated:
            record["rpcscope.truncated_fields"] = truncated
        if dropped:
            record["rpcscope.dropped_fields"] = [*record.get("rpcscope.dropped_fields", ()),
                                                 *dropped]
        self._counts["truncated"] += 1
        return pack(record)  # type: ignore[no-any-return]

    def _seal(self, tag: str) -> None:
        """Close the open batch of ``tag`` into the send queue (lock held)."""
        opened = self._open.pop(tag, None)
        if opened is None or not opened.parts:
            return
        self._queue.append(_Batch(tag, b"".join(opened.parts), opened.sizes, opened.first_seq))
        self._cond.notify_all()

    def _seal_all(self, older_than: float | None = None) -> None:
        now = time.monotonic()
        for tag in list(self._open):
            if older_than is None or now - self._open[tag].opened >= older_than:
                self._seal(tag)

    def _take_for_spill(self, need: int) -> list[_Batch]:
        """Batches to move to disk to make room for ``need`` bytes, newest first (lock held)."""
        taken: list[_Batch] = []
        if self._mem_bytes + need > self._max_buffer:
            self._seal_all()
        while self._queue and self._mem_bytes + need > self._max_buffer:
            batch = self._queue.pop()
            self._mem_bytes -= len(batch.entries)
            taken.append(batch)
        taken.reverse()  # written (and so replayed) in the order the records came
        return taken

    def _spill(self, batches: list[_Batch]) -> None:
        """Write batches as segments (outside the lock); what does not fit is dropped."""
        directory = self._spill_dir
        for batch in batches:
            if directory is None:
                self._drop("buffer_full", batch.count)
                continue
            with self._lock:
                room = self._spill_bytes + len(batch.entries) <= self._spill_max
                self._segment_seq += 1
                seq = self._segment_seq
            if not room:
                self._drop("spill_full", batch.count)
                continue
            try:
                path, size = _write_segment(directory, batch, self._token, seq)
            except OSError as e:
                self._drop("spill_error", batch.count)
                self._report("spill", f"cannot write a spill segment in {directory!r}: {e}")
                continue
            with self._cond:
                self._segments.append(path)
                self._segment_bytes[path] = size
                self._spill_bytes += size
                if batch.own:
                    self._own_segments[path] = batch.first_seq
                self._counts["spilled"] += batch.count
                self._cond.notify_all()

    def _drop(self, reason: str, n: int) -> None:
        with self._cond:
            self._dropped[reason] = self._dropped.get(reason, 0) + n
            self._cond.notify_all()

    # -- the sender thread -----------------------------------------------------------------

    def _start_thread(self) -> None:
        # Started under the lock: a concurrent caller must never see a thread that exists
        # but is not alive yet and start a second sender on the same socket and batch.
        with self._lock:
            if (self._thread is not None and self._thread.is_alive()) or self._closing:
                return
            thread = threading.Thread(target=self._run, name="rpcscope-forward", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # interpreter shutdown: close() delivers inline instead
                self._thread = None
                return
            self._thread = thread

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._deliver(batch)
        except Exception as e:  # never die silently: say so, and let close() spill the rest
            self._report("thread", f"the Fluentd sender stopped: {e!r}")
        finally:
            self._disconnect()

    def _next_batch(self) -> _Batch | None:
        """The oldest batch to send: the memory queue first, then spilled segments."""
        while True:
            self._adopt_orphans()
            with self._cond:
                if self._closing:
                    self._seal_all()
                    if time.monotonic() >= self._deadline:
                        return None
                else:
                    self._seal_all(older_than=self._interval)
                if self._queue:
                    batch = self._queue.popleft()
                    self._inflight = batch
                    return batch
                path = self._segments[0] if self._segments else None
                if path is None:
                    if self._closing and not self._open:
                        return None
                    # Idle: sleep until a write opens a batch (it notifies), or the next
                    # look for orphaned spill segments.
                    wait = _RESCAN_SECONDS if self._spill_dir is not None else 3600.0
                    if self._open:
                        oldest = min(o.opened for o in self._open.values())
                        wait = max(0.001, self._interval - (time.monotonic() - oldest))
                    self._cond.wait(wait)
                    continue
            try:
                batch = _read_segment(path, own=path in self._own_segments)
            except Exception as e:
                self._report("spill", f"unreadable spill segment {path!r} set aside: {e!r}")
                self._forget_segment(path, keep_file=True)
                with self._lock:
                    if path in self._own_segments:
                        self._dropped["spill_error"] += 1
                continue
            with self._lock:
                batch.first_seq = self._own_segments.get(path, 0)
                self._inflight = batch
            return batch

    def _forget_segment(self, path: str, keep_file: bool = False) -> None:
        """The file goes first: ``flush()`` returns once the segment is no longer tracked, and
        a process that exits right after must not leave an acked segment to be replayed."""
        try:
            if keep_file:
                os.rename(path, path + ".bad")
            else:
                os.unlink(path)
        except OSError:
            pass
        with self._cond:
            if path in self._segment_bytes:
                self._spill_bytes -= self._segment_bytes.pop(path)
            if path in self._segments:
                self._segments.remove(path)
            self._own_segments.pop(path, None)
            self._cond.notify_all()

    def _adopt_orphans(self) -> None:
        """Spill segments of processes that are gone (a crash, SIGKILL) become ours: renamed
        with our pid first, so two processes never replay the same segment."""
        directory = self._spill_dir
        now = time.monotonic()
        if directory is None or now - self._scanned < _RESCAN_SECONDS:
            return
        self._scanned = now
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return
        pid = os.getpid()
        for name in names:
            if not name.endswith(_SEGMENT_SUFFIX) or name.startswith("."):
                continue
            owner, token = _segment_owner(name)
            if token == self._token or (owner == pid and token in _LIVE_TOKENS) or (
                    owner != pid and _pid_alive(owner)):
                continue
            parts = name.split("-")
            new = os.path.join(directory, "-".join([parts[0], str(pid), self._token,
                                                    *parts[3:]]))
            try:
                os.rename(os.path.join(directory, name), new)
                size = os.path.getsize(new)
            except OSError:
                continue  # another process adopted it first
            with self._lock:
                self._segments.append(new)
                self._segments.sort(key=os.path.basename)
                self._segment_bytes[new] = size
                self._spill_bytes += size

    def _deliver(self, batch: _Batch) -> None:
        """Send one batch until acked, split, dead-lettered, or the close deadline passes."""
        failures = 0
        while True:
            if self._closing and time.monotonic() >= self._deadline:
                return  # close() spills what is still in flight
            refused = False
            try:
                self._send(batch)
            except _NoAck as e:
                refused = True
                self._failed(batch, e)
            except Exception as e:
                self._failed(batch, e)
            else:
                self._acked(batch)
                return
            if refused:
                batch.refusals += 1
                if batch.refusals >= self._split_after and self._refused(batch):
                    return
            failures += 1
            delay = random.uniform(0, min(self._backoff_max,
                                          self._backoff_base * 2 ** min(failures, 30)))
            if self._closing:
                delay = min(delay, max(0.0, self._deadline - time.monotonic()))
            if self._wake.wait(delay):
                self._wake.clear()  # close() cut this backoff short; later ones run normally

    def _failed(self, batch: _Batch, error: Exception) -> None:
        self._disconnect()
        with self._lock:
            self._counts["retried"] += batch.count
        self._report(type(error).__name__, f"Fluentd delivery failed, will retry: {error}")

    def _refused(self, batch: _Batch) -> bool:
        """The server keeps taking this batch without an ack (oversize, a record it rejects):
        split it; a single record is dead-lettered once the server has acked other data since
        it became suspect (so an overloaded server never turns into lost records)."""
        if batch.count > 1:
            a, b = batch.split()
            with self._cond:
                self._queue.appendleft(b)
                self._queue.appendleft(a)
                self._inflight = None
                self._cond.notify_all()
            if batch.segment is not None:  # the halves now live in memory
                with self._lock:
                    self._mem_bytes += len(batch.entries)
                self._forget_segment(batch.segment)
            return True
        if batch.suspect_acks is not None and self._acks_total > batch.suspect_acks:
            self._dead_letter(batch, f"no ack after {self._split_after} attempts while the "
                                     "server acked other batches")
            return True
        if batch.suspect_acks is None:
            batch.suspect_acks = self._acks_total
        batch.refusals = 0
        with self._cond:
            if not self._queue:
                return False  # nothing else to prove the server healthy: keep retrying
            self._queue.append(batch)  # behind the others: their acks are the evidence
            self._inflight = None
            if batch.segment is not None:
                self._mem_bytes += len(batch.entries)
        if batch.segment is not None:
            self._forget_segment(batch.segment)
            batch.segment = None
        return True

    def _send(self, batch: _Batch) -> None:
        sock = self._sock
        if sock is None or not self._keepalive:
            self._disconnect()
            sock = self._connect()
        request = batch.request
        if request is None:
            entries = batch.entries
            option: dict[str, Any] = {"size": batch.count}
            if self._ack:
                option["chunk"] = batch.chunk
            if self._compress:
                entries = gzip.compress(entries, compresslevel=6)
                option["compressed"] = "gzip"
            request = batch.request = msgpack.packb([batch.tag, entries, option],
                                                    use_bin_type=True)
        if not self._ack:
            self._check_unsolicited(sock)
        sock.settimeout(self._bounded(self._write_timeout))
        sock.sendall(request)
        with self._lock:
            self._bytes_sent += len(request)
        if self._ack:
            self._await_ack(sock, batch.chunk)

    def _await_ack(self, sock: socket.socket, chunk: str) -> None:
        unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
        end = time.monotonic() + self._bounded(self._ack_timeout)
        while True:
            now = time.monotonic()
            left = end - now
            if left <= 0:
                raise _NoAck(f"no ack within {self._ack_timeout}s")
            if self._closing and now >= self._deadline:
                raise _NoAck("closing: the deadline passed while waiting for the ack")
            # Short slices: close() may set a deadline while this wait is under way.
            sock.settimeout(min(left, 0.25))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                raise _NoAck(f"connection lost waiting for the ack: {e}") from None
            if not data:
                raise _NoAck("the server closed the connection without an ack")
            unpacker.feed(data)
            for reply in unpacker:
                if isinstance(reply, dict) and "ack" in reply:
                    if reply["ack"] == chunk:
                        return
                    raise ConnectionError(f"ack for another chunk ({reply['ack']!r})")
                self._unexpected(reply)

    def _unexpected(self, reply: Any) -> None:
        if isinstance(reply, list) and reply and reply[0] in ("HELO", b"HELO"):
            raise ForwardAuthError(
                "the Fluentd server requires the shared-key handshake (it sent HELO) but no "
                "shared key is configured; fix: set RPCSCOPE_FLUENTD_SHARED_KEY (or "
                "ForwardSink(shared_key=...)) to the server's <security> shared_key")
        raise ConnectionError(f"unexpected reply from the server: {reply!r:.100}")

    def _check_unsolicited(self, sock: socket.socket) -> None:
        """Without acks, the only reply a server sends unasked is HELO (auth required)."""
        sock.settimeout(0.0)
        try:
            data = sock.recv(4096)
        except (BlockingIOError, ssl.SSLWantReadError, InterruptedError):
            return
        if not data:
            raise ConnectionError("the server closed the connection")
        unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
        unpacker.feed(data)
        for reply in unpacker:
            self._unexpected(reply)

    def _bounded(self, seconds: float) -> float:
        """A timeout that never runs past the close deadline."""
        if self._closing:
            return max(0.01, min(seconds, self._deadline - time.monotonic()))
        return seconds

    def _connect(self) -> socket.socket:
        """The first server that accepts, starting from the last good one (failover)."""
        errors: list[str] = []
        auth_failed = False
        count = len(self.servers)
        for step in range(count):
            index = (self._server_index + step) % count
            server = self.servers[index]
            try:
                sock, keepalive = self._open_connection(server)
            except Exception as e:
                errors.append(f"{server}: {e}")
                auth_failed = auth_failed or isinstance(e, ForwardAuthError)
                continue
            with self._lock:
                self._reconnects += 1
            self._server_index = index
            self._sock, self._keepalive = sock, keepalive
            return sock
        error = ForwardAuthError if auth_failed else ConnectionError
        raise error("no Fluentd server reachable (" + "; ".join(errors) + ")")

    def _open_connection(self, server: Server) -> tuple[socket.socket, bool]:
        timeout = self._bounded(self._connect_timeout)
        sock: socket.socket
        if server.unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(server.unix_path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((server.host, server.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if server.tls:
                assert self._ssl is not None
                try:
                    sock = self._ssl.wrap_socket(sock, server_hostname=server.host)
                except ssl.SSLCertVerificationError as e:
                    sock.close()
                    raise ConnectionError(
                        f"TLS certificate check of {server} failed ({e}); fix: set the CA that "
                        "signed the server's certificate (RPCSCOPE_FLUENTD_TLS_CA) and use the "
                        "host name the certificate was issued for") from None
                except BaseException:
                    sock.close()
                    raise
        try:
            keepalive = self._handshake(sock) if self._shared_key is not None else True
        except BaseException:
            sock.close()
            raise
        return sock, keepalive

    def _handshake(self, sock: socket.socket) -> bool:
        """HELO → PING → PONG (Forward protocol v1). The server's PONG digest proves it knows
        the key too; it is checked in constant time and a mismatch fails closed."""
        key = self._shared_key
        assert key is not None
        sock.settimeout(self._bounded(self._connect_timeout))
        unpacker = msgpack.Unpacker(raw=True)

        def read() -> Any:
            while True:
                for message in unpacker:
                    return message
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection in the handshake")
                unpacker.feed(data)

        helo = read()
        if not (isinstance(helo, list) and len(helo) == 2 and helo[0] == b"HELO"
                and isinstance(helo[1], dict)):
            raise ForwardAuthError(
                f"expected HELO from the server but got {helo!r:.80}: is this a Forward "
                "server with <security> configured? fix: unset the shared key, or configure "
                "<security> on the server")
        options = helo[1]
        nonce = options.get(b"nonce", b"")
        auth = options.get(b"auth", b"") or b""
        keepalive = options.get(b"keepalive", True) is not False
        if not isinstance(nonce, bytes) or not isinstance(auth, bytes):
            raise ForwardAuthError("malformed HELO (nonce/auth are not strings)")
        salt = secrets.token_hex(16).encode()
        digest = hashlib.sha512(salt + self._hostname + nonce + key).hexdigest()
        user_digest = ""
        if auth:
            user_digest = hashlib.sha512(auth + self._username + self._password).hexdigest()
        sock.sendall(msgpack.packb(["PING", self._hostname.decode(), salt.decode(), digest,
                                    self._username.decode(), user_digest], use_bin_type=False))
        pong = read()
        if not (isinstance(pong, list) and len(pong) == 5 and pong[0] == b"PONG"):
            raise ForwardAuthError(f"expected PONG from the server but got {pong!r:.80}")
        _, ok, reason, server_host, server_digest = pong
        if ok is not True:
            why = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
            hint = ("check the username/password" if auth and self._username
                    else "check the shared key" + (
                        "; the server asks for a username and password" if auth and
                        not self._username else ""))
            raise ForwardAuthError(f"the Fluentd server refused the handshake: {why}; fix: "
                                   f"{hint}")
        if not isinstance(server_host, bytes) or not isinstance(server_digest, bytes):
            raise ForwardAuthError("malformed PONG from the server")
        if server_host == self._hostname:
            raise ForwardAuthError(
                "the server's hostname equals ours (a loop, or copied configuration); fix: "
                "give Fluentd's <security> self_hostname or our self_hostname another name")
        expected = hashlib.sha512(salt + server_host + nonce + key).hexdigest().encode()
        if not hmac.compare_digest(expected, server_digest):
            raise ForwardAuthError("the server's PONG digest is wrong: it does not know the "
                                   "shared key (or is not the server you meant); refusing it")
        return keepalive

    def _disconnect(self, wake: bool = False) -> None:
        """Drop the connection; ``wake`` also shuts it down, which (unlike close) wakes a
        thread blocked in recv on it."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                if wake:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass

    def _acked(self, batch: _Batch) -> None:
        if not self._keepalive:
            self._disconnect()
        with self._cond:
            mine = self._release(batch)
            self._counts["acked"] += batch.count
            self._acks_total += 1
            self._last_ack = time.time()
            if batch.segment is None and mine:
                self._mem_bytes -= len(batch.entries)
            else:
                self._counts["replayed"] += batch.count
            self._cond.notify_all()
        if batch.segment is not None:
            self._forget_segment(batch.segment)

    def _release(self, batch: _Batch) -> bool:
        """Lock held: stop tracking ``batch`` as in flight; False when close() already took it
        over (spilled or counted it), so its bytes are not released twice."""
        if self._inflight is batch:
            self._inflight = None
            return True
        return not self._closed

    def _dead_letter(self, batch: _Batch, reason: str) -> None:
        path = self._dead_letter_path
        line = ""
        try:
            _when, record = msgpack.unpackb(batch.entries, raw=False, strict_map_key=False,
                                           unicode_errors="surrogateescape")
            line = json.dumps({"reason": reason, "tag": batch.tag, "chunk": batch.chunk,
                               "dead_lettered_at": time.time(), "record": record},
                              default=repr, ensure_ascii=True)
            if path is not None:
                # Records may hold personal data: owner-only, like the spill segments.
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, (line + "\n").encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                sys.stderr.write(f"rpcscope: dead-lettered Fluentd record: {line:.2000}\n")
        except Exception as e:
            self._report("dead-letter", f"cannot write the dead-letter file {path!r}: {e!r}")
        with self._cond:
            mine = self._release(batch)
            self._counts["dead_lettered"] += batch.count
            if batch.segment is None and mine:
                self._mem_bytes -= len(batch.entries)
            self._cond.notify_all()
        if batch.segment is not None:
            self._forget_segment(batch.segment)

    def _report(self, kind: str, message: str) -> None:
        """Diagnostics to stderr, at most one line per kind a minute: never through
        ``logging``, which may route back into this very sink."""
        self._last_error = message
        now = time.monotonic()
        if now - self._errors_reported.get(kind, -1e9) < 60.0:
            return
        self._errors_reported[kind] = now
        try:
            sys.stderr.write(f"rpcscope: {message}\n")
        except Exception:  # noqa: S110 - a closed stderr must not break delivery
            pass

    # -- flush, close, fork ----------------------------------------------------------------

    def _outstanding_min_seq(self) -> int | None:
        """The oldest own record not yet acked, dead-lettered or dropped (lock held)."""
        seqs = [o.first_seq for o in self._open.values()]
        seqs.extend(b.first_seq for b in self._queue if b.own)
        if self._inflight is not None and self._inflight.own:
            seqs.append(self._inflight.first_seq)
        seqs.extend(self._own_segments.values())
        return min(seqs) if seqs else None

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record accepted so far is acked (or settled otherwise); True if
        that happened within ``timeout``."""
        if self._pid != os.getpid():
            self._reset_after_fork()
        end = time.monotonic() + timeout
        with self._cond:
            target = self._seq
            self._seal_all()
        self._start_thread()
        with self._cond:
            while True:
                oldest = self._outstanding_min_seq()
                if oldest is None or oldest >= target:
                    return True
                left = end - time.monotonic()
                if left <= 0 or (self._closed and self._thread is None):
                    return False
                self._cond.wait(min(left, 0.1))

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is buffered within ``timeout`` seconds, then spill the rest (when a
        spill directory is set) or count it dropped. Never hangs; idempotent."""
        if self._pid != os.getpid():
            self._reset_after_fork()
        with self._cond:
            if self._closed:
                return
            self._closed = self._closing = True
            self._deadline = time.monotonic() + max(timeout, 0.0)
            self._seal_all()
            self._cond.notify_all()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(max(timeout, 0.0) + 0.5)
            if thread.is_alive():
                self._disconnect(wake=True)
                thread.join(1.0)
        elif self._queue or self._segments:
            self._run()  # no thread (never started, or interpreter shutdown): deliver inline
        self._disconnect()
        with self._cond:
            leftover = list(self._queue)
            self._queue.clear()
            if self._inflight is not None and self._inflight.segment is None:
                leftover.insert(0, self._inflight)
            self._inflight = None
            self._mem_bytes -= sum(len(b.entries) for b in leftover)
            if self._spill_dir is None:
                self._dropped["close_timeout"] += sum(b.count for b in leftover)
                leftover = []
        if leftover:
            self._spill(leftover)
        _LIVE_TOKENS.discard(self._token)
        with self._cond:
            self._cond.notify_all()

    def _fork_before(self) -> None:
        self._lock.acquire()

    def _fork_parent(self) -> None:
        self._lock.release()

    def _reset_after_fork(self) -> None:
        """A forked child starts empty: its own lock, queue, socket, thread and spill names.
        The parent's buffered records stay the parent's to deliver (no duplicates)."""
        self._sock = None  # the parent's connection: never written to from here
        closed = self._closed
        self._init_state()
        self._closed = self._closing = closed

    # -- observability ---------------------------------------------------------------------

    @property
    def last_error(self) -> str | None:
        """The last delivery problem, for health checks (also printed to stderr)."""
        return self._last_error

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._counts)
            out["dropped"] = sum(self._dropped.values())
            out.update({f"dropped_{k}": v for k, v in self._dropped.items()})
            out["bytes_sent"] = self._bytes_sent
            out["reconnects"] = self._reconnects
            out["queue_bytes"] = self._mem_bytes
            out["spill_bytes"] = self._spill_bytes
            out["spill_segments"] = len(self._segments)
        return out

    def describe(self) -> Iterator[Metric]:
        return self._families(empty=True)

    def collect(self) -> Iterator[Metric]:
        return self._families(empty=False)

    def _families(self, empty: bool) -> Iterator[Metric]:
        help_ = schema.HELP
        with self._lock:
            counts = dict(self._counts)
            dropped = dict(self._dropped)
            sent, reconnects = self._bytes_sent, self._reconnects
            queue, spill, last_ack = self._mem_bytes, self._spill_bytes, self._last_ack
        records = CounterMetricFamily(schema.FORWARD_RECORDS, help_[schema.FORWARD_RECORDS],
                                      labels=[schema.LABEL_OUTCOME])
        lost = CounterMetricFamily(schema.FORWARD_DROPPED, help_[schema.FORWARD_DROPPED],
                                   labels=[schema.LABEL_REASON])
        sent_f = CounterMetricFamily(schema.FORWARD_SENT_BYTES,
                                     help_[schema.FORWARD_SENT_BYTES])
        reconn = CounterMetricFamily(schema.FORWARD_RECONNECTS, help_[schema.FORWARD_RECONNECTS])
        queue_f = GaugeMetricFamily(schema.FORWARD_QUEUE_BYTES, help_[schema.FORWARD_QUEUE_BYTES])
        spill_f = GaugeMetricFamily(schema.FORWARD_SPILL_BYTES, help_[schema.FORWARD_SPILL_BYTES])
        since = GaugeMetricFamily(schema.FORWARD_SECONDS_SINCE_ACK,
                                  help_[schema.FORWARD_SECONDS_SINCE_ACK])
        if not empty:
            for outcome in schema.FORWARD_OUTCOMES:
                records.add_metric([outcome], counts.get(outcome, 0))
            for reason in schema.FORWARD_DROP_REASONS:
                lost.add_metric([reason], dropped.get(reason, 0))
            sent_f.add_metric([], sent)
            reconn.add_metric([], reconnects)
            queue_f.add_metric([], queue)
            spill_f.add_metric([], spill)
            since.add_metric([], max(0.0, time.time() - last_ack))
        yield from (records, lost, sent_f, reconn, queue_f, spill_f, since)


def _fork_hook(ref: weakref.ref[ForwardSink], when: str) -> None:
    sink = ref()
    if sink is None:
        return
    if when == "before":
        sink._fork_before()
    elif when == "parent":
        sink._fork_parent()
    else:
        sink._reset_after_fork()


def _close_at_exit(ref: weakref.ref[ForwardSink]) -> None:
    sink = ref()
    if sink is not None:
        try:
            sink.close(sink._exit_timeout)
        except Exception:  # noqa: S110 - exit must go on
            pass
