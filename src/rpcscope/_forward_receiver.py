"""A real Fluentd Forward server for tests: ``rpcscope.testing.ForwardReceiver``.

Fluentd itself cannot be installed everywhere tests run, and no Python package implements the
server side of the Forward protocol, so this is written by hand (decoding uses ``msgpack``).
It speaks every mode a sender may use (Message, Forward, PackedForward,
CompressedPackedForward), acks ``chunk`` ids only after the events are stored (as in_forward
acks after the emit), runs the shared-key/user handshake and TLS, and injects the faults a
shipper must survive: withheld acks, a connection closed mid-request, slow reads, refused
requests, and stop/restart on the same port.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import msgpack

__all__ = ["ForwardEvent", "ForwardReceiver"]


class ForwardEvent(NamedTuple):
    """One event as the server stored it; ``mode`` is the carrier it came in."""

    tag: str
    time_ns: int
    record: dict[str, Any]
    mode: str
    #: The request's ``chunk`` id (None without ack), to tell resends from new data.
    chunk: str | None


class _EventTime(NamedTuple):
    ns: int


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 0 and len(data) == 8:
        seconds, nanos = struct.unpack(">II", data)
        return _EventTime(seconds * 1_000_000_000 + nanos)
    return msgpack.ExtType(code, data)


def _time_ns(value: Any) -> int:
    if isinstance(value, _EventTime):
        return value.ns
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"invalid event time {value!r}")
    # Fluentd >= 1.19 drops float times; kept here (as ns) but counted in ``float_times``.
    return int(value * 1_000_000_000)


class ForwardReceiver:
    """A Forward server on 127.0.0.1 (port 0 picks one) or on a unix socket.

    ``shared_key`` turns on the HELO/PING/PONG handshake; ``users`` (name → password) adds
    user authentication. ``tls_cert``/``tls_key`` serve TLS; ``tls_client_ca`` requires a
    client certificate signed by that CA. Fault switches are plain attributes, changeable
    while it runs: ``withhold_acks``, ``close_mid_request`` (close the next N connections
    half-way through a request), ``read_delay`` (seconds slept before each read of at most
    ``read_size`` bytes), ``refuse`` (a predicate on (tag, records): True closes the
    connection without storing or acking, like a server rejecting an oversized chunk) and
    ``max_request_bytes``, and ``forge_pong_key`` (claim a successful handshake with a
    digest made from the wrong key).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, unix_path: str | None = None,
                 shared_key: str | None = None, users: Mapping[str, str] | None = None,
                 self_hostname: str = "rpcscope-forward-receiver", keepalive: bool = True,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 tls_client_ca: str | None = None) -> None:
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.shared_key = shared_key.encode() if shared_key is not None else None
        self.users = {k.encode(): v.encode() for k, v in (users or {}).items()}
        self.self_hostname = self_hostname
        self.keepalive = keepalive
        self._ssl: ssl.SSLContext | None = None
        if tls_cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(tls_cert, tls_key)
            if tls_client_ca is not None:
                ctx.load_verify_locations(tls_client_ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
            self._ssl = ctx
        self.withhold_acks = False
        self.close_mid_request = 0
        self.read_delay = 0.0
        self.read_size = 65536
        self.refuse: Callable[[str, list[dict[str, Any]]], bool] | None = None
        self.max_request_bytes: int | None = None
        #: Answer every PING with PONG ok and a digest made with this key instead (a server
        #: that does not know the shared key but claims success).
        self.forge_pong_key: bytes | None = None
        self._events: list[ForwardEvent] = []
        self._chunks: dict[str, int] = {}
        self._cond = threading.Condition()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conn_threads: list[threading.Thread] = []
        self._running = False
        self.stats: dict[str, int] = dict.fromkeys(
            ("connections", "requests", "acks", "refused", "handshake_failures",
             "duplicate_chunks", "float_times", "decode_errors", "restarts"), 0)
        self.errors: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ForwardReceiver:
        """Listen (again, on the same port or path after :meth:`stop`) and serve."""
        if self._running:
            return self
        if self.unix_path is not None:
            if os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.unix_path)
        else:
            listener = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            self.port = listener.getsockname()[1]
        listener.listen(128)
        listener.settimeout(0.05)
        self._listener = listener
        self._running = True
        self._thread = threading.Thread(target=self._accept_loop, name="forward-receiver",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop like a killed server: close the listener and every connection at once
        (requests in progress are neither stored nor acked)."""
        if not self._running:
            return
        self._running = False
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._cond:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._conn_threads:
            thread.join(5)
        self._conn_threads = []

    def restart(self) -> None:
        self.stop()
        self.stats["restarts"] += 1
        self.start()

    def __enter__(self) -> ForwardReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """What ``RPCSCOPE_FLUENTD`` / ``ForwardSink(servers=...)`` takes."""
        if self.unix_path is not None:
            return f"unix://{self.unix_path}"
        scheme = "tls://" if self._ssl is not None else ""
        return f"{scheme}{self.host}:{self.port}"

    # -- results -----------------------------------------------------------------------------

    @property
    def events(self) -> list[ForwardEvent]:
        """Every event stored so far (resent ones again: at-least-once), in arrival order."""
        with self._cond:
            return list(self._events)

    @property
    def event_count(self) -> int:
        """How many events were stored so far (cheap: no copy)."""
        return len(self._events)

    def records(self, tag: str | None = None) -> list[dict[str, Any]]:
        return [e.record for e in self.events if tag is None or e.tag == tag]

    def wait_for(self, n: int, timeout: float = 10.0,
                 predicate: Callable[[ForwardEvent], bool] | None = None) -> list[ForwardEvent]:
        """Wait until at least ``n`` (matching) events arrived; AssertionError on timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self._events if predicate is None or predicate(e)]
                if len(found) >= n:
                    return found
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s: {len(found)} of {n} "
                                         f"events arrived (stats {self.stats}, errors "
                                         f"{self.errors[-3:]})")
                self._cond.wait(left)

    def clear(self) -> None:
        with self._cond:
            self._events.clear()
            self._chunks.clear()

    # -- serving -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while self._running:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.stats["connections"] += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                      name="forward-receiver-conn")
            self._conn_threads = [t for t in self._conn_threads if t.is_alive()]
            self._conn_threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        conn = raw
        with self._cond:
            self._conns.add(raw)
        try:
            conn.settimeout(10.0)
            if self._ssl is not None:
                conn = self._ssl.wrap_socket(conn, server_side=True)
                with self._cond:
                    self._conns.add(conn)
            if self.shared_key is not None and not self._handshake(conn):
                return
            self._serve_requests(conn)
        except Exception as e:
            if self._running:
                self.errors.append(repr(e))
        finally:
            with self._cond:
                self._conns.discard(conn)
                self._conns.discard(raw)
            for sock in (conn, raw):
                try:
                    sock.close()
                except OSError:
                    pass

    def _read(self, conn: socket.socket) -> bytes:
        if self.read_delay:
            time.sleep(self.read_delay)
        while self._running:
            try:
                return conn.recv(self.read_size)
            except TimeoutError:
                continue
        return b""

    def _handshake(self, conn: socket.socket) -> bool:
        key = self.shared_key
        assert key is not None
        nonce, auth = os.urandom(16), os.urandom(16)
        conn.sendall(msgpack.packb(
            ["HELO", {"nonce": nonce, "auth": auth if self.users else b"",
                      "keepalive": self.keepalive}], use_bin_type=True))
        unpacker = msgpack.Unpacker(raw=True)
        ping = None
        while ping is None:
            data = self._read(conn)
            if not data:
                return False
            unpacker.feed(data)
            for message in unpacker:
                ping = message
                break
        server_host = self.self_hostname.encode()
        reason = ""
        if not (isinstance(ping, list) and len(ping) == 6 and ping[0] == b"PING"):
            reason = "malformed PING"
        else:
            _, client_host, salt, digest, username, user_digest = ping
            expected = hashlib.sha512(salt + client_host + nonce + key).hexdigest().encode()
            if not hmac.compare_digest(expected, digest):
                reason = "shared_key mismatch"
            elif self.users:
                password = self.users.get(username)
                wanted = (hashlib.sha512(auth + username + password).hexdigest().encode()
                          if password is not None else b"")
                if password is None or not hmac.compare_digest(wanted, user_digest):
                    reason = "username/password mismatch"
        if self.forge_pong_key is not None and isinstance(ping, list) and len(ping) == 6:
            forged = hashlib.sha512(ping[2] + server_host + nonce + self.forge_pong_key)
            conn.sendall(msgpack.packb(["PONG", True, "", self.self_hostname,
                                        forged.hexdigest()]))
            return True
        if reason:
            self.stats["handshake_failures"] += 1
            conn.sendall(msgpack.packb(["PONG", False, reason, "", ""]))
            return False
        proof = hashlib.sha512(salt + server_host + nonce + key).hexdigest()
        conn.sendall(msgpack.packb(["PONG", True, "", self.self_hostname, proof]))
        return True

    def _serve_requests(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape",
                                    ext_hook=_ext_hook, strict_map_key=False,
                                    max_buffer_size=256 << 20)
        pending = 0
        while self._running:
            data = self._read(conn)
            if not data:
                return
            pending += len(data)
            if self.close_mid_request > 0:
                self.close_mid_request -= 1
                return  # half a request read, nothing stored or acked
            if self.max_request_bytes is not None and pending > self.max_request_bytes:
                self.stats["refused"] += 1
                return
            unpacker.feed(data)
            for message in unpacker:
                pending = 0
                if not self._handle(conn, message):
                    return
                if not self.keepalive:
                    return

    def _handle(self, conn: socket.socket, message: Any) -> bool:
        if message is None:  # a TCP heartbeat
            return True
        if not isinstance(message, list) or len(message) < 2 or not isinstance(message[0], str):
            self.stats["decode_errors"] += 1
            self.errors.append(f"not a Forward request: {message!r:.100}")
            return False
        self.stats["requests"] += 1
        tag, second = message[0], message[1]
        option: dict[str, Any] = {}
        try:
            if isinstance(second, list):
                mode = "Forward"
                option = message[2] if len(message) > 2 else {}
                pairs = [(_time_ns(t), r) for t, r in second]
            elif isinstance(second, bytes | str):
                option = message[2] if len(message) > 2 and message[2] else {}
                raw = (second if isinstance(second, bytes)
                       else second.encode("utf-8", "surrogateescape"))
                mode = "PackedForward"
                if option.get("compressed") == "gzip":
                    raw = gzip.decompress(raw)
                    mode = "CompressedPackedForward"
                inner = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape",
                                         ext_hook=_ext_hook, strict_map_key=False,
                                         max_buffer_size=max(len(raw), 1 << 20))
                inner.feed(raw)
                pairs = [(_time_ns(t), r) for t, r in inner]
            else:
                mode = "Message"
                option = message[3] if len(message) > 3 and message[3] else {}
                pairs = [(_time_ns(second), message[2])]
                if isinstance(second, float):
                    self.stats["float_times"] += 1
        except Exception as e:
            self.stats["decode_errors"] += 1
            self.errors.append(f"undecodable {tag!r} request: {e!r}")
            return False
        if not all(isinstance(r, dict) for _, r in pairs):
            self.stats["decode_errors"] += 1
            self.errors.append(f"a record of {tag!r} is not a map")
            return False
        records = [r for _, r in pairs]
        if self.refuse is not None and self.refuse(tag, records):
            self.stats["refused"] += 1
            return False
        chunk = option.get("chunk") if isinstance(option, dict) else None
        with self._cond:
            if chunk is not None:
                seen = self._chunks.get(chunk, 0)
                if seen:
                    self.stats["duplicate_chunks"] += 1
                self._chunks[chunk] = seen + 1
            self._events.extend(ForwardEvent(tag, t, r, mode, chunk) for t, r in pairs)
            self._cond.notify_all()
        if chunk is not None and not self.withhold_acks:
            conn.sendall(msgpack.packb({"ack": chunk}, use_bin_type=True))
            self.stats["acks"] += 1
        return True
