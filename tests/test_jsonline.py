"""The fast access-log encoder must write exactly the document the general path builds."""

from __future__ import annotations

import json
import time

import pytest

from rpcscope.collector._core import CallRecord, MethodInfo
from rpcscope.exporters._ecs import Identity, call_document
from rpcscope.exporters._jsonline import CallLineEncoder


def _record(component: str = "server", **fields: object) -> CallRecord:
    info = MethodInfo(component, '/pkg.V1/Get"%d\\', 'pkg.V1', 'Get"%d\\', "unary", None)
    record = CallRecord(info)
    record.end_wall_ns = time.time_ns()
    record.duration_ns = 1_234_567
    record.msgs_in = record.msgs_out = 1
    for key, value in fields.items():
        if key == "ids":
            trace_id, span_id, *parent = value  # type: ignore[misc]
            record.trace = (trace_id, span_id, parent[0] if parent else None, "01")
        elif key == "lazy":  # the request path's form: (metadata, header or None; random bits)
            record.trace = (value, 0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210_0000_1111_2222_3333)
        else:
            setattr(record, key, value)
    return record


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"peer": "ipv6:[::1]:5050", "deadline": 0.1234567},
        {"deadline": 1e-7},
        {"deadline": 99_999_999.25},
        {"deadline": 1e9},  # "no deadline" as grpc reports it: not logged
        {"lazy": (("user-agent", "x"), ("traceparent", f"00-{'a' * 32}-{'b' * 16}-01"))},
        {"lazy": (("traceparent", "garbage"),)},
        {"lazy": f"00-{'a' * 32}-{'b' * 16}-01"},
        {"lazy": None},
        {"ids": ("a" * 32, "b" * 16)},
        {"ids": ("a" * 32, "b" * 16, "c" * 16)},
        {"metadata": (("user-agent", 'agent "quoted" \\ ünï %s'), ("x-request-id", "r-1"))},
        {"code": "NotFound", "details": "no such sku"},
        {"code": "Unknown", "error": RuntimeError("boom")},
    ],
)
@pytest.mark.parametrize("component", ["server", "client"])
def test_fast_line_equals_general_document(fields: dict[str, object], component: str) -> None:
    identity = Identity("svc %s", "1.0", None)
    record = _record(component, **fields)
    encoder = CallLineEncoder(identity)
    # Twice: the second call takes the cached template, peer and metadata fragments.
    for _ in range(2):
        assert json.loads(encoder.encode(record)) == call_document(record, identity)
