"""Deferred telemetry: what a user sees must not depend on when the batches run.

The request path only appends to a queue (see collector/_batcher.py). These tests pin the
promises that make that invisible: a scrape is exact at the moment it is read (in-flight calls
included), the background thread delivers metrics and logs without any scrape or flush, a starved
thread never loses a call, and lazily formatted trace ids are the same for every reader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _svc
import grpc
from _calls import labels
from prometheus_client import CollectorRegistry

import rpcscope
from rpcscope import schema
from rpcscope.collector._batcher import Batcher
from rpcscope.collector._core import CallRecord, ErrorCounter, MethodInfo, Pipeline
from rpcscope.collector._metrics import AggregateMetrics
from rpcscope.testing import CaptureSink, sample_value, wait_until


def test_scrape_sees_in_flight_and_finished_calls_at_once(
        make_scope: Callable[..., rpcscope.Scope], serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel]) -> None:
    scope = make_scope()
    unary = sync_channel(serve_sync(scope.server_interceptors())).unary_unary(_svc.path("Unary"))
    future = unary.future(b"sleep:1.0")
    # started is appended when the call begins; a scrape folds it in: 1 in flight, 0 handled.
    wait_until(lambda: sample_value(scope.registry, schema.SERVER_STARTED, labels("Unary")) == 1)
    assert sample_value(scope.registry, schema.SERVER_HANDLED, labels("Unary", grpc_code="OK")) \
        in (None, 0)
    assert future.result(timeout=5) == b"reply:sleep:1.0"
    assert unary(b"ok") == b"reply:ok"
    # No waiting: the very next read is exact.
    assert sample_value(scope.registry, schema.SERVER_HANDLED,
                        labels("Unary", grpc_code="OK")) == 2


def test_background_thread_delivers_without_scrape_or_flush(
        make_scope: Callable[..., rpcscope.Scope], sink: CaptureSink,
        serve_sync: Callable[..., int], sync_channel: Callable[..., grpc.Channel]) -> None:
    scope = make_scope()
    unary = sync_channel(serve_sync(scope.server_interceptors())).unary_unary(_svc.path("Unary"))
    for _ in range(5):
        unary(b"ok")
    # Nobody scrapes or flushes: the batcher's thread alone must hand the calls on.
    wait_until(lambda: len(sink.access_logs("server")) == 5, message="5 access logs")
    assert scope.stats()["logs"]["delivered"] == 5


class _ListSink:
    """A batcher consumer that keeps what it is handed."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.lost_items: list[Any] = []

    def consume(self, batch: Any) -> None:
        self.items.extend(batch)

    def lost(self, batch: Any) -> None:
        self.lost_items.extend(batch)

    def flush(self, timeout: float) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


def test_starved_thread_never_loses_a_call() -> None:
    """Past max_pending the producer folds the queue in itself: bounded memory, exact counts."""
    registry = CollectorRegistry()
    errors = ErrorCounter()
    batcher = Batcher(errors.record, interval=3600, max_pending=10)
    metrics = AggregateMetrics((0.1, 1.0), False, batcher.fold, errors.record)
    registry.register(metrics)
    batcher.add_fold(metrics.fold)
    consumer = _ListSink()
    batcher.add_consumer(consumer)
    agg = metrics.for_method("server", ("unary", "pkg.S", "M"))
    info = MethodInfo("server", "/pkg.S/M", "pkg.S", "M", "unary", agg)
    batcher.kick()  # start the thread now; with a 1 h interval it never folds by itself
    pipe = Pipeline(batcher, None, errors)
    for i in range(95):
        batcher.pending.append(agg)
        record = CallRecord(info)
        record.duration_ns = 50_000_000
        record.code = "OK" if i % 5 else "NotFound"
        pipe.submit(record)
        assert len(batcher.pending) <= 11
    handled = {code: registry.get_sample_value(
        schema.SERVER_HANDLED, {"grpc_type": "unary", "grpc_service": "pkg.S",
                                "grpc_method": "M", "grpc_code": code})
        for code in ("OK", "NotFound")}
    assert handled == {"OK": 76, "NotFound": 19}
    labels_ = {"grpc_type": "unary", "grpc_service": "pkg.S", "grpc_method": "M"}
    assert registry.get_sample_value(schema.SERVER_STARTED, labels_) == 95
    assert registry.get_sample_value(schema.SERVER_HANDLING_SECONDS + "_bucket",
                                     {**labels_, "le": "0.1"}) == 95
    batcher.close(timeout=5)
    assert sum(isinstance(item, CallRecord) for item in consumer.items) == 95
    assert errors.count == 0


def test_lazily_formatted_ids_agree_for_every_reader(
        make_scope: Callable[..., rpcscope.Scope], sink: CaptureSink,
        serve_sync: Callable[..., int], sync_channel: Callable[..., grpc.Channel]) -> None:
    """An invalid traceparent starts a new trace; the handler, the access log and the exemplar
    must all name the same one, though each formats it at a different time and thread."""
    seen: list[tuple[str, str] | None] = []

    def handler(request: bytes, context: Any) -> bytes:
        seen.append(rpcscope.current_trace_ids())
        return request

    scope = make_scope()
    port = serve_sync(scope.server_interceptors(), handlers=[grpc.method_handlers_generic_handler(
        "t.v1.T", {"M": grpc.unary_unary_rpc_method_handler(handler)})])
    call = sync_channel(port).unary_unary("/t.v1.T/M")
    for header in ("garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", None):
        call(b"x", metadata=() if header is None else (("traceparent", header),))
    scope.flush()
    docs = sink.access_logs("server")
    assert len(docs) == 3 and all(ids is not None for ids in seen)
    assert [(d["trace.id"], d["span.id"]) for d in docs] == seen
    assert "parent.id" not in docs[0]  # an invalid header is not a parent
    assert len({d["trace.id"] for d in docs}) == 3


def test_resolving_ids_is_deterministic() -> None:
    """Resolving is deterministic, so any thread may resolve the same ids any number of
    times; distinct call numbers give distinct, valid ids."""
    from rpcscope.collector._ids import parse_traceparent, resolve_ids

    results = {resolve_ids(("not-a-traceparent", 7)) for _ in range(3)}
    assert len(results) == 1
    ids = {resolve_ids((None, n)) for n in range(1, 2001)}
    assert len({i[0] for i in ids}) == len({i[1] for i in ids}) == 2000
    for trace_id, span_id, parent, flags in ids:
        assert parent is None and flags == "01"
        assert parse_traceparent(f"00-{trace_id}-{span_id}-01") is not None  # valid W3C ids


def test_ids_do_not_depend_on_the_order_or_thread_that_resolves_them() -> None:
    """Ids come from one digest per block of call numbers, and the last block is cached: a
    call resolved out of order, or on another thread between two of ours, still gets the
    ids it gets in order."""
    import random
    import threading

    from rpcscope.collector._ids import resolve_ids

    numbers = list(range(1, 400))
    in_order = [resolve_ids((None, n)) for n in numbers]
    shuffled = numbers[:]
    random.Random(7).shuffle(shuffled)
    by_number = {n: resolve_ids((None, n)) for n in shuffled}
    assert [by_number[n] for n in numbers] == in_order
    seen: list[Any] = []
    worker = threading.Thread(target=lambda: seen.extend(
        resolve_ids((None, n)) for n in reversed(numbers)))
    worker.start()
    mine = [resolve_ids((None, n)) for n in numbers]
    worker.join()
    assert mine == in_order and seen[::-1] == in_order


def _child_ids(queue: Any) -> None:
    from rpcscope.collector._ids import resolve_ids

    queue.put(resolve_ids((None, 1)))


def test_a_forked_child_draws_different_ids_for_the_same_call_number() -> None:
    """A forked child continues its parent's call numbers (pre-fork servers such as gunicorn's
    workers): a fresh key per process keeps their ids apart."""
    import multiprocessing

    from rpcscope.collector._ids import resolve_ids

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_child_ids, args=(queue,)) for _ in range(2)]
    for child in children:
        child.start()
    seen = [queue.get(timeout=30) for _ in children]
    for child in children:
        child.join(30)
    ours = resolve_ids((None, 1))
    assert len({ours[0], *(ids[0] for ids in seen)}) == 3
    assert len({ours[1], *(ids[1] for ids in seen)}) == 3


def test_aio_calls_log_their_own_metadata_and_trace(
        make_scope: Callable[..., rpcscope.Scope], sink: CaptureSink) -> None:
    """On grpc.aio the interceptor hands the metadata grpc already built to the handler's task
    (not re-read from the context): 40 concurrent calls, async and sync handlers, must each log
    their own x-request-id and continue their own traceparent."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from _calls import aio_server

    async def aecho(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(0.01)  # keep calls overlapping
        return request

    def secho(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler("t.v1.T", {
        "A": grpc.unary_unary_rpc_method_handler(aecho),
        "S": grpc.unary_unary_rpc_method_handler(secho)})
    scope = make_scope()

    def header(i: int) -> str:
        return f"00-{i + 1:032x}-{i + 1:016x}-01"

    async def run() -> None:
        with ThreadPoolExecutor(4) as pool:
            async with aio_server(scope.aio_server_interceptors(), handlers=(handler,),
                                  thread_pool=pool) as port, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await asyncio.gather(*(
                    channel.unary_unary("/t.v1.T/" + ("A" if i % 2 else "S"))(
                        b"x", metadata=(("x-request-id", f"req-{i}"), ("traceparent", header(i))))
                    for i in range(40)))

    asyncio.run(run())
    scope.flush()
    docs = sink.access_logs("server")
    assert len(docs) == 40
    for doc in docs:
        i = int(doc["grpc.request.metadata"]["x-request-id"].removeprefix("req-"))
        assert doc["rpc.method"] == ("A" if i % 2 else "S")
        assert (doc["trace.id"], doc["parent.id"]) == (f"{i + 1:032x}", f"{i + 1:016x}")
