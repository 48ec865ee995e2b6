"""A fast JSON-lines encoder for successful call records (the common case of the access log).

Why by hand: building the ECS dict and running ``json.dumps`` costs more CPU per call than all of
rpcscope's metrics. Most of an access-log line is constant per (process, method) — service,
host, logger, rpc.service, rpc.method, grpc.type — so it is encoded once and cached; a call only
formats its timestamp, duration, code, counts, peer and ids into a template. Anything unusual
(a failed call with error fields) takes the general path (``call_document`` + ``encode_json``),
and a test asserts both paths decode to the same document.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any, Final

from rpcscope import schema
from rpcscope.collector._core import HOSTNAME, CallRecord, MethodInfo
from rpcscope.exporters._ecs import NUMERIC_CODE, Identity, call_document, encode_json

_esc: Final = json.encoder.encode_basestring  # C-accelerated string escaping (no ASCII-forcing)


class CallLineEncoder:
    """Encodes call records to the same JSON ``call_document`` + ``encode_json`` would produce."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self._pid = -1
        self._static: dict[int, tuple[MethodInfo, str]] = {}
        self._peers: dict[tuple[str, str], str] = {}
        self._metadatas: dict[tuple[tuple[str, str], ...], str] = {}
        self._second = -1
        self._second_text = ""

    def _template(self, info: MethodInfo) -> str:
        """The %-template of a successful call's line for this method, static text filled in."""
        pid = os.getpid()
        if pid != self._pid:  # forked: process.pid is part of the cached text
            self._pid = pid
            self._static = {}
        cached = self._static.get(id(info))
        if cached is not None and cached[0] is info:
            return cached[1]
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
        tail = {"grpc.type": info.grpc_type, "grpc.component": info.component}
        # The message prefix, escaped once, without its closing quote.
        message_prefix = _esc(f"{info.component} call {info.full_method} ")[:-1]
        template = (
            '{"@timestamp":"%s.%06dZ","log.level":"info","message":'
            + _pct(message_prefix) + 'OK in %.3fms",' + _pct(_inner(head))
            + ',"event.outcome":"success","event.duration":%d,' + _pct(_inner(method_part))
            + f',"rpc.grpc.status_code":{NUMERIC_CODE["OK"]},"grpc.code":"OK",'
            + _pct(_inner(tail)) + ',"grpc.msgs_received":%d,"grpc.msgs_sent":%d'
        )
        self._static[id(info)] = (info, template)
        return template

    def _peer(self, info: MethodInfo, peer: str) -> str:
        """The peer fragment; peers repeat per connection, so escaping is cached (bounded)."""
        key = (info.component, peer)
        fragment = self._peers.get(key)
        if fragment is None:
            name = "client.address" if info.component == "server" else "server.address"
            fragment = f',"{name}":{_esc(peer)}'
            if len(self._peers) >= 4096:
                self._peers.clear()
            self._peers[key] = fragment
        return fragment

    def encode(self, record: CallRecord) -> str:
        if record.code != "OK":
            return encode_json(call_document(record, self._identity))
        info = record.info
        second, nanos = divmod(record.end_wall_ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, tz=timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S"
            )
        duration = record.duration_ns
        line = self._template(info) % (
            self._second_text, nanos // 1000, duration / 1e6, duration,
            record.msgs_in, record.msgs_out,
        )
        if record.peer:
            line += self._peer(info, record.peer)
        if record.deadline is not None:
            line += f',"grpc.request.deadline_seconds":{round(record.deadline, 6)!r}'
        if record.trace_id:
            if record.parent_span_id:
                line += ',"trace.id":"%s","span.id":"%s","parent.id":"%s"' % (
                    record.trace_id, record.span_id, record.parent_span_id)
            else:
                line += ',"trace.id":"%s","span.id":"%s"' % (record.trace_id, record.span_id)
        if record.metadata:
            line += self._metadata(record.metadata)
        return line + "}"

    def _metadata(self, metadata: dict[str, str]) -> str:
        """The metadata fragment; the same few values (user agents) repeat, so cache (bounded)."""
        key = tuple(metadata.items())
        fragment = self._metadatas.get(key)
        if fragment is None:
            inner = ",".join(f"{_esc(k)}:{_esc(v)}" for k, v in key)
            fragment = f',"grpc.request.metadata":{{{inner}}}'
            if len(self._metadatas) >= 4096:
                self._metadatas.clear()
            self._metadatas[key] = fragment
        return fragment


def _pct(text: str) -> str:
    return text.replace("%", "%%")


def _inner(fields: dict[str, Any]) -> str:
    """``{"a":1,"b":2}`` → ``"a":1,"b":2`` (to splice into a template)."""
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)[1:-1]
