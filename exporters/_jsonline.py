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
        self._static: dict[int, tuple[MethodInfo, tuple[str, str, str, str]]] = {}
        self._second = -1
        self._second_text = ""

    def _statics(self, info: MethodInfo) -> tuple[str, str, str, str]:
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
        method_part = {
            "rpc.system": "grpc",
            "rpc.service": info.service,
            "rpc.method": info.method,
        }
        tail = {"grpc.type": info.grpc_type, "grpc.component": info.component}
        # The message prefix, escaped once, without its closing quote.
        message_prefix = _esc(f"{info.component} call {info.full_method} ")[:-1]
        statics = (message_prefix, _inner(head), _inner(method_part), _inner(tail))
        self._static[id(info)] = (info, statics)
        return statics

    def encode(self, record: CallRecord) -> str:
        if record.code != "OK":
            return encode_json(call_document(record, self._identity))
        info = record.info
        message_prefix, head, method_part, tail = self._statics(info)
        wall = record.end_wall_ns
        second, nanos = divmod(wall, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, tz=timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S"
            )
        duration = record.duration_ns
        parts = [
            f'{{"@timestamp":"{self._second_text}.{nanos // 1000:06d}Z","log.level":"info",'
            f'"message":{message_prefix}OK in {duration / 1e6:.3f}ms",{head},'
            f'"event.outcome":"success","event.duration":{duration},{method_part},'
            f'"rpc.grpc.status_code":{NUMERIC_CODE["OK"]},"grpc.code":"OK",{tail},'
            f'"grpc.msgs_received":{record.msgs_in},"grpc.msgs_sent":{record.msgs_out}'
        ]
        if record.peer:
            key = "client.address" if info.component == "server" else "server.address"
            parts.append(f',"{key}":{_esc(record.peer)}')
        if record.deadline is not None:
            parts.append(f',"grpc.request.deadline_seconds":{round(record.deadline, 6)!r}')
        if record.trace_id:
            parts.append(f',"trace.id":"{record.trace_id}","span.id":"{record.span_id}"')
            if record.parent_span_id:
                parts.append(f',"parent.id":"{record.parent_span_id}"')
        if record.metadata:
            inner = ",".join(f"{_esc(k)}:{_esc(v)}" for k, v in record.metadata.items())
            parts.append(f',"grpc.request.metadata":{{{inner}}}')
        parts.append("}")
        return "".join(parts)


def _inner(fields: dict[str, Any]) -> str:
    """``{"a":1,"b":2}`` → ``"a":1,"b":2`` (to splice into a template)."""
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)[1:-1]
