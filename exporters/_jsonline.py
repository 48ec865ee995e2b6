"""A fast JSON-lines encoder for successful call records (the common case of the access log).

Why by hand: building the ECS dict and running ``json.dumps`` costs more CPU per call than all of
rpcscope's metrics. Most of an access-log line is constant per (process, method) — service,
host, logger, rpc.service, rpc.method, grpc.type — so it is encoded once and cached; a call only
splices its timestamp, duration, counts, peer and ids between the cached pieces with one
f-string (a ``%``-template would rescan ~600 characters of static text per line: twice the
cost). Anything unusual
(a failed call with error fields) takes the general path (``call_document`` + ``encode_json``),
and a test asserts both paths decode to the same document.

Even so, this Python encoder was about half of all of rpcscope's extra instructions per call
(``bench/instructions.py``: ~38k per record, of which the trace part ~14k), so when a C compiler
was there at install time the same work runs in C (``rpcscope._speedups``, ~7k per record):
the deadline, the allowed metadata and this line for the common case. The Python code here stays
the reference: the C side hands every unusual case back to it, and tests/test_speedups.py
checks both write identical lines on generated records.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Final

from rpcscope import schema
from rpcscope.collector import _core
from rpcscope.collector._core import (
    HOSTNAME,
    CallRecord,
    MetadataPicker,
    MethodInfo,
    deadline_seconds,
    ignore_error,
    load_speedups,
    prepare_for_log,
    resolve_ids,
)
from rpcscope.exporters._ecs import NUMERIC_CODE, Identity, call_document, encode_json

_esc: Final = json.encoder.encode_basestring  # C-accelerated string escaping (no ASCII-forcing)
_NO_PEERS: Final[dict[str, str]] = {}


class CallLineEncoder:
    """Encodes call records to the same JSON ``call_document`` + ``encode_json`` would produce.

    :attr:`line` (what the log writer calls) is the C encoder of ``rpcscope._speedups`` when
    it was built, else :meth:`line_python`. The C one handles the common line itself and hands
    everything else back to :meth:`line_python` and to the cache-filling methods below, so
    both write the same bytes (tests/test_speedups.py compares them on generated records).
    """

    def __init__(self, identity: Identity, pick: MetadataPicker | None = None,
                 on_error: Callable[[str], None] | None = None, speedups: bool = True) -> None:
        self._identity = identity
        self._pick = pick if pick is not None else MetadataPicker(())
        self._on_error = on_error if on_error is not None else ignore_error
        # process.pid is part of the cached text: a forked child starts over (os.getpid() per
        # line would be a system call per line).
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget(ref))
        # The C encoder reads _static and _peers; they are cleared, never replaced.
        self._static: dict[int, tuple[MethodInfo, tuple[str, str, str, str]]] = {}
        self._peers: dict[str, dict[str, str]] = {}  # component -> peer -> fragment
        self._metadatas: dict[tuple[tuple[str, str], ...], str] = {}
        self._second = -1
        self._second_text = ""
        self.line: Callable[[CallRecord], str] = self.line_python
        c = load_speedups() if speedups else None
        if c is not None:
            self.line = c.LineEncoder(
                self, CallRecord, self._static, self._peers, _core._SPAN_IDS, _core._TRACE_IDS,
                _core.parse_traceparent, _core._traceparent_of, self._pick.allow, self._on_error,
            ).line

    @property
    def accelerated(self) -> bool:
        """Whether :attr:`line` is the C encoder's."""
        return self.line != self.line_python

    def line_python(self, record: CallRecord) -> str:
        """A call record as the writer hands it over (raw metadata, kept CallDetails), picked,
        resolved and encoded. Mutates the record: afterwards its deadline is resolved, and its
        metadata is what was logged, or (C encoder) still raw: picking it gives what was
        logged (picking is idempotent). The C encoder takes the logged pairs straight from
        the raw ones, sparing a tuple per call and the hashing of grpc's fresh strings."""
        prepare_for_log(record, self._pick, self._on_error)
        return self.encode(record)

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
        tail = {"grpc.type": info.grpc_type, "grpc.component": info.component}
        # The message prefix, escaped once, without its closing quote.
        message_prefix = _esc(f"{info.component} call {info.full_method} ")[:-1]
        pieces = (
            'Z","log.level":"info","message":' + message_prefix + "OK in ",
            'ms",' + _inner(head) + ',"event.outcome":"success","event.duration":',
            "," + _inner(method_part) + f',"rpc.grpc.status_code":{NUMERIC_CODE["OK"]},'
            '"grpc.code":"OK",' + _inner(tail) + ',"grpc.msgs_received":',
            ',"grpc.msgs_sent":',
        )
        self._static[id(info)] = (info, pieces)
        return pieces

    def _peer(self, component: str, peer: str) -> str:
        """The peer fragment; peers repeat per connection, so escaping is cached (bounded)."""
        peers = self._peers.setdefault(component, {})
        name = "client.address" if component == "server" else "server.address"
        fragment = f',"{name}":{_esc(peer)}'
        if len(peers) >= 4096:
            peers.clear()
        peers[peer] = fragment
        return fragment

    def encode(self, record: CallRecord) -> str:
        """A prepared record's line (see :meth:`line_python`)."""
        # Every line costs this once, with cold caches, so it is written flat: no helper
        # calls on the common path (cached template, peer and metadata fragments), one
        # f-string at the end (a ``%``-template would rescan the static text per line).
        if record.code != "OK":
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
            peer_part = self._peers.get(info.component, _NO_PEERS).get(peer)
            if peer_part is None:
                peer_part = self._peer(info.component, peer)
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

    def _metadata_piece(self, key: str, value: str) -> str:
        """One logged pair as JSON (the C encoder caches these per key)."""
        return f"{_esc(key)}:{_esc(value)}"

    def _metadata(self, metadata: tuple[tuple[str, str], ...]) -> str:
        """The metadata fragment; the same few values (user agents) repeat, so cache (bounded)."""
        fragment = self._metadatas.get(metadata)
        if fragment is None:
            inner = ",".join(self._metadata_piece(k, v) for k, v in metadata)
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
