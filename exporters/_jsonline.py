"""A fast JSON-lines encoder for successful call records (the common case of the access log).

Why by hand: building the ECS dict and running ``json.dumps`` costs more CPU per call than all of
rpcscope's metrics (docs/performance.md). Most of an access-log line is constant per (process,
method): service, host, logger, rpc.service, rpc.method, grpc.type. So it is encoded once and
cached, and a call only splices its timestamp, duration, counts, peer and ids between the cached
pieces with one f-string. Anything unusual (a failed call with error fields) takes the general
path (``call_document`` + ``encode_json``), and tests assert both paths decode to the same
document.
"""

from __future__ import annotations

import json
import os
import weakref
from datetime import datetime, timezone
from typing import Any, Final

from rpcscope import schema
from rpcscope.collector._core import CallRecord, MethodInfo
from rpcscope.collector._ids import resolve_ids
from rpcscope.exporters._ecs import (
    HOSTNAME,
    NUMERIC_CODE,
    Identity,
    call_document,
    deadline_seconds,
    encode_json,
)

_esc: Final = json.encoder.encode_basestring  # C-accelerated string escaping (no ASCII-forcing)
_NO_PEERS: Final[dict[str, str]] = {}


class CallLineEncoder:
    """Encodes prepared call records (see ``prepare_for_log``) to the same JSON that
    ``call_document`` + ``encode_json`` would produce, caching what repeats."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        # process.pid is part of the cached text: a forked child starts over (os.getpid() per
        # line would be a system call per line).
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget(ref))
        self._static: dict[int, tuple[MethodInfo, tuple[str, str, str, str]]] = {}
        self._peers: dict[str, dict[str, str]] = {}  # side -> peer -> fragment
        self._metadatas: dict[tuple[tuple[str, str], ...], str] = {}
        self._second = -1
        self._second_text = ""

    def _timestamp_prefix(self, second: int) -> str:
        """The line's start up to the second: ``{"@timestamp":"2026-11-26T14:00:00.``."""
        return '{"@timestamp":"' + datetime.fromtimestamp(
            second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")

    def _template(self, info: MethodInfo) -> tuple[str, str, str, str]:
        """The static pieces of a successful call's line for this method, in order: before the
        duration in ms, before the duration in ns, before msgs_received, before msgs_sent."""
        cached = self._static.get(id(info))
        if cached is not None and cached[0] is info:
            return cached[1]
        pid = os.getpid()
        ident = self._identity
        head: dict[str, Any] = {
            "ecs.version": schema.ECS_VERSION,
            "log.logger": schema.ACCESS_LOGGER,
            "service.name": ident.name,
        }
        if ident.version:
            head["service.version"] = ident.version
        if ident.environment:
            head["service.environment"] = ident.environment
        head["host.name"] = HOSTNAME
        head["process.pid"] = pid
        head["event.kind"] = "event"
        method_part = {"rpc.system": "grpc", "rpc.service": info.service, "rpc.method": info.method}
        tail = {"grpc.type": info.grpc_type, schema.FIELD_SIDE: info.side}
        # The message prefix, escaped once, without its closing quote.
        message_prefix = _esc(f"{info.side} call {info.full_method} ")[:-1]
        pieces = (
            'Z","log.level":"info","message":' + message_prefix + "OK in ",
            'ms",' + _inner(head) + ',"event.outcome":"success","event.duration":',
            "," + _inner(method_part) + f',"rpc.grpc.status_code":{NUMERIC_CODE["OK"]},'
            '"grpc.code":"OK",' + _inner(tail) + ',"grpc.msgs_received":',
            ',"grpc.msgs_sent":',
        )
        self._static[id(info)] = (info, pieces)
        return pieces

    def _peer(self, side: str, peer: str) -> str:
        """The peer fragment; peers repeat per connection, so escaping is cached (bounded)."""
        peers = self._peers.setdefault(side, {})
        name = "client.address" if side == "server" else "server.address"
        fragment = f',"{name}":{_esc(peer)}'
        if len(peers) >= 4096:
            peers.clear()
        peers[peer] = fragment
        return fragment

    def encode(self, record: CallRecord) -> str:
        """A prepared record's line."""
        # Every line costs this once, with cold caches, so it is written flat: no helper
        # calls on the common path (cached template, peer and metadata fragments), one
        # f-string at the end (a ``%``-template would rescan the static text per line).
        if record.code != "OK" or record.path is not None:
            return encode_json(call_document(record, self._identity))
        info = record.info
        cached = self._static.get(id(info))
        p1, p2, p3, p4 = (
            cached[1] if cached is not None and cached[0] is info else self._template(info)
        )
        second, nanos = divmod(record.end_wall_ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._second_text = self._timestamp_prefix(second)
        duration = record.duration_ns
        us = (duration + 500) // 1000  # ms with 3 decimals by integer maths: float :.3f is slower
        peer = record.peer
        if peer:
            if isinstance(peer, bytes):  # not prepared: decode as prepare_for_log does
                peer = peer.decode("utf-8", "replace")
            peer_part = self._peers.get(info.side, _NO_PEERS).get(peer)
            if peer_part is None:
                peer_part = self._peer(info.side, peer)
        else:
            peer_part = ""
        deadline = record.deadline
        if deadline is not None:
            deadline = deadline_seconds(deadline)
        # "%.6f" is round(deadline, 6) as a JSON number (what call_document holds), cheaper.
        deadline_part = "" if deadline is None else (
            ',"grpc.request.deadline_seconds":%.6f' % deadline)
        trace = record.trace
        if trace is None:
            trace_part = ""
        else:
            trace_id, span_id, parent_id, _ = resolve_ids(trace)
            trace_part = (
                f',"trace.id":"{trace_id}","span.id":"{span_id}","parent.id":"{parent_id}"'
                if parent_id else f',"trace.id":"{trace_id}","span.id":"{span_id}"'
            )
        metadata = record.metadata
        metadata_part = "" if not metadata else (
            self._metadatas.get(metadata) or self._metadata(metadata))
        # Zero padding as str(10**k + n)[1:]: a format spec (:06d) costs more per value.
        return (
            f"{self._second_text}{str(1_000_000 + nanos // 1000)[1:]}{p1}{us // 1000}."
            f"{str(1000 + us % 1000)[1:]}{p2}{duration}{p3}{record.msgs_in}{p4}{record.msgs_out}"
            f"{peer_part}{deadline_part}{trace_part}{metadata_part}}}"
        )

    def _metadata(self, metadata: tuple[tuple[str, str], ...]) -> str:
        """The metadata fragment; the same few values (user agents) repeat, so cache (bounded)."""
        fragment = self._metadatas.get(metadata)
        if fragment is None:
            inner = ",".join(f"{_esc(k)}:{_esc(v)}" for k, v in metadata)
            fragment = f',"grpc.request.metadata":{{{inner}}}'
            if len(self._metadatas) >= 4096:
                self._metadatas.clear()
            self._metadatas[metadata] = fragment
        return fragment


def _inner(fields: dict[str, Any]) -> str:
    """``{"a":1,"b":2}`` → ``"a":1,"b":2`` (to splice into a template)."""
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)[1:-1]


def _forget(ref: weakref.ref[CallLineEncoder]) -> None:
    encoder = ref()
    if encoder is not None:
        encoder._static.clear()
