"""The optional C line encoder (rpcscope._speedups) must write exactly what the Python one does.

The Python encoder (``CallLineEncoder.line_python``) is the reference; the C one handles the
common case itself and hands the rest back. Both run here over the same generated records, in
the same order (so their caches — templates, peers, metadata fragments, id blocks — are
exercised too), and must agree on every line, on what the record holds afterwards (picked
metadata, resolved deadline) and on the errors reported.
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import grpc
import pytest

from rpcscope import schema
from rpcscope.collector._core import CallRecord, MetadataPicker, MethodInfo, load_speedups
from rpcscope.collector._deferred import DeferredMetrics
from rpcscope.exporters._ecs import Identity, call_document
from rpcscope.exporters._jsonline import CallLineEncoder

if load_speedups() is None:
    if os.environ.get("RPCSCOPE_REQUIRE_SPEEDUPS") == "1":
        raise RuntimeError(
            "rpcscope._speedups is not built but RPCSCOPE_REQUIRE_SPEEDUPS=1 (as `make test` "
            "sets): install a C compiler and Python headers (apt-get install gcc python3-dev) "
            "and reinstall (`pip install -e .`)"
        )
    pytest.skip("rpcscope._speedups not built", allow_module_level=True)


class Metadatum(NamedTuple):
    """grpc's metadata pair type."""

    key: str
    value: Any


class NotATuplePair(tuple):  # type: ignore[type-arg]
    """A pair type that iterates differently: the C side must leave it to Python."""

    def __iter__(self) -> Any:
        return iter(("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"))


class SubRecord(CallRecord):
    """Not exactly a CallRecord: the C side (which reads slots in place) leaves it to Python."""

    __slots__ = ()


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class Unreadable:
    @property
    def deadline(self) -> float:
        raise RuntimeError("deadline unreadable")


_ALLOW = ("user-agent", "x-request-id", "authorization", "x-api-key", "x-bin", "x-num")
_VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_TRACEPARENTS = [
    _VALID,
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    "00-" + "0" * 32 + "-b7ad6b7169203331-01",  # zero trace id: invalid
    "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",  # zero span id: invalid
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case: invalid
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # a future version
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # 55 chars, other version
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",  # v00 with a suffix
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333ü-01",  # non-ASCII, 55 chars
    "garbage",
    "",
]


def _metadata(rng: random.Random) -> Any:
    pair: Callable[[str, Any], Any] = rng.choice([Metadatum, lambda k, v: (k, v)])
    pool = [
        pair("user-agent", rng.choice(["grpc-python/1.6", 'agent "q" \\ ünï', "🙂 agent"])),
        pair("x-request-id", f"r-{rng.randrange(5)}"),
        pair("authorization", "Bearer s3cret"),
        pair("x-api-key", "k"),
        pair("x-bin", b"\x00\x01"),
        pair("other", "o"),
        pair("traceparent", rng.choice(_TRACEPARENTS)),
    ]
    chosen = rng.sample(pool, rng.randrange(len(pool) + 1))
    if rng.random() < 0.1:  # an allowed key with a non-str value: logged as its repr
        chosen.append(pair("x-num", rng.choice([7, 1.5, None, BadRepr()])))
    if rng.random() < 0.05:
        chosen.append(NotATuplePair(("traceparent", "x")))
    if rng.random() < 0.03:
        chosen.append((b"traceparent", _VALID))  # a bytes key: not ours either
    return tuple(chosen) if rng.random() < 0.9 else list(chosen)


def _record_factory(rng: random.Random, infos: list[MethodInfo], number: int
                    ) -> Callable[[], CallRecord]:
    """A recipe for one random record; called twice to give each encoder its own copy."""
    info = rng.choice(infos)
    code = rng.choice(["OK"] * 8 + ["NotFound", "Unknown"])
    end = rng.choice([
        time.time_ns(),
        1_764_000_000_000_000_000 + rng.randrange(10**10),
        1_764_000_000_000_000_000,  # exactly on a second
        1_764_000_000_999_999_999,
    ])
    # Mostly the common case (the C side's); unusual values (which it hands back) now and then.
    duration = rng.choice([0, 1, 499, 500, 999_499, 999_500, rng.randrange(10**12)]
                          if rng.random() < 0.95 else [2**63, -1])
    msgs = rng.choice([0, 1, 3] if rng.random() < 0.95 else [10**20, True])
    peer = rng.choice([None, "", "ipv4:127.0.0.1:40000", "ipv6:[::1]:5050",
                       f"ipv4:10.0.0.{rng.randrange(3)}:1", 'unix:/tmp/"ü"'])
    deadline_kind = rng.randrange(4)
    deadline = rng.choice([0.1234567, 1e-7, 99_999_999.25, 1e9, float("nan"), float("inf"),
                           -0.0, -2.5, 30.0] if rng.random() < 0.95 else [5])
    details_deadline = rng.choice([end / 1e9 + 2.5, end / 1e9 - 1, 7, float("inf")])
    metadata = _metadata(rng) if rng.random() < 0.8 else rng.choice([None, ()])
    trace_kind = rng.randrange(6)
    incoming = rng.choice([None, rng.choice(_TRACEPARENTS), "raw"])
    call_number = rng.choice([number, number * 7, 0] if rng.random() < 0.95 else [2**70])
    ids4 = ("a" * 32, "b" * 16, rng.choice([None, "", "c" * 16]), "01")
    record_type = CallRecord if rng.random() < 0.97 else SubRecord

    def make() -> CallRecord:
        record = record_type(info, peer)
        record.code = code
        record.end_wall_ns = end
        record.duration_ns = duration
        record.msgs_in = msgs
        record.msgs_out = 1
        raw = list(metadata) if isinstance(metadata, list) else metadata
        record.metadata = raw
        if deadline_kind == 1:
            record.deadline = deadline
        elif deadline_kind == 2:
            record.call_details = SimpleNamespace(deadline=details_deadline)
        elif deadline_kind == 3:
            record.call_details = Unreadable()
        if trace_kind == 1:
            record.trace = ids4
        elif trace_kind >= 2:
            record.trace = (raw if incoming == "raw" else incoming, call_number)
        if code == "Unknown":
            record.error = RuntimeError("boom")
        return record

    return make


def _run(encoder: CallLineEncoder, record: CallRecord) -> tuple[str, Any]:
    try:
        return "ok", encoder.line(record)
    except Exception as exc:  # the writer drops such a record; both must drop the same ones
        return "raised", type(exc).__name__


@pytest.mark.parametrize("seed", range(4))
def test_c_and_python_write_the_same_lines(seed: int) -> None:
    rng = random.Random(seed)
    infos = [
        MethodInfo("server", "/pkg.V1/Get", "pkg.V1", "Get", "unary", None),
        MethodInfo("client", "/pkg.V1/Get", "pkg.V1", "Get", "unary", None),
        MethodInfo("server", '/p.ü/M"\\', "p.ü", 'M"\\', "bidi_stream", None),
        MethodInfo("server", "/p.🙂/Emoji", "p.🙂", "Emoji", "server_stream", None),
    ]
    identity = Identity("svc", "1.0", "prod")
    picker = MetadataPicker(_ALLOW)
    c_errors: list[str] = []
    py_errors: list[str] = []
    c_encoder = CallLineEncoder(identity, picker, c_errors.append)
    py_encoder = CallLineEncoder(identity, picker, py_errors.append, speedups=False)
    assert c_encoder.accelerated and not py_encoder.accelerated
    for number in range(1500):
        make = _record_factory(rng, infos, number)
        c_record, py_record = make(), make()
        c_out, py_out = _run(c_encoder, c_record), _run(py_encoder, py_record)
        assert c_out == py_out, (number, c_record.trace, c_record.metadata)
        # The C side leaves the metadata raw (it never builds the picked tuple); picking it
        # gives what was logged, which is what the Python side keeps.
        if c_out[0] == "ok" and c_record.metadata is not None:
            c_record.metadata = picker(c_record.metadata)
        for field in ("metadata", "deadline", "call_details"):
            c_value, py_value = getattr(c_record, field), getattr(py_record, field)
            if field == "deadline" and isinstance(py_value, float) and py_value != py_value:
                assert c_value != c_value  # both NaN
            else:
                assert c_value == py_value, field
        assert c_errors == py_errors
        if c_out[0] == "ok" and py_record.code == "OK" and py_record.msgs_in is not True:
            assert json.loads(c_out[1]) == call_document(py_record, identity)


def test_most_generated_lines_take_the_c_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the test above: if the C side delegated everything, it would agree trivially."""
    rng = random.Random(7)
    infos = [MethodInfo("server", "/pkg.V1/Get", "pkg.V1", "Get", "unary", None)]
    encoder = CallLineEncoder(Identity("svc", None, None), MetadataPicker(_ALLOW))
    delegated = 0
    original = encoder.line_python

    def counting(record: CallRecord) -> str:
        nonlocal delegated
        delegated += 1
        return original(record)

    monkeypatch.setattr(encoder, "line_python", counting)
    for number in range(500):
        _run(encoder, _record_factory(rng, infos, number)())
    assert 50 < delegated < 300  # both paths well exercised


def test_c_lines_do_not_leak() -> None:
    """Every reference the C side takes per line is given back: 20,000 lines (every C path:
    deadline from CallDetails, logged and redacted metadata, a caller's traceparent, fresh
    ids, a new second every other line) leave no memory behind, and the shared objects they
    use (method info, cached template and peer fragment) keep their reference counts. A leak
    of one object per line would be about a megabyte here; a reference leaked on a shared
    object shows in its count."""
    encoder = CallLineEncoder(Identity("svc", None, None), MetadataPicker(_ALLOW))
    info = MethodInfo("server", "/pkg.V1/Get", "pkg.V1", "Get", "unary", None)

    def lines(count: int, first: int) -> None:
        for number in range(first, first + count):
            record = CallRecord(info, "ipv4:127.0.0.1:1")
            record.end_wall_ns = 1_764_000_000_123_456_789 + number // 2 * 10**9
            record.duration_ns = 12_345
            raw = (Metadatum("user-agent", "ua"), Metadatum("traceparent", _VALID),
                   Metadatum("authorization", "x"), Metadatum("other", 7))
            record.metadata = raw
            record.trace = (raw if number % 2 else None, number)
            record.call_details = SimpleNamespace(deadline=1_764_000_030.0)
            encoder.line(record)

    lines(2_000, 0)  # caches and id blocks warm
    template = encoder._static[id(info)][1]
    shared = (info, template, *template, encoder._peers["server"]["ipv4:127.0.0.1:1"])
    counts = [sys.getrefcount(o) for o in shared]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        lines(20_000, 2_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024
    assert [sys.getrefcount(o) for o in shared] == counts


def test_pure_python_switch(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """RPCSCOPE_PURE_PYTHON=1 turns all three C parts off (to compare, or to rule it out): the
    line encoder, the metrics fold and the server request path of a Scope built after it."""
    import rpcscope
    from rpcscope import _speedups  # type: ignore[attr-defined]

    def c_parts() -> list[bool]:
        scope = rpcscope.Scope(service="s", access_log=str(tmp_path / "log.jsonl"))
        assert scope._log_pipe is not None and scope._log_pipe._lines is not None
        assert scope._metrics is not None and scope._metrics.deferred is not None
        sync, aio = scope.server_interceptors()[0], scope.aio_server_interceptors()[0]
        scope.close()
        return [scope._log_pipe._lines.accelerated, scope._metrics.deferred._folder is not None,
                *(isinstance(getattr(i._start, "__self__", None), _speedups.ServerPath)
                  for i in (sync, aio))]

    assert c_parts() == [True] * 4
    monkeypatch.setenv("RPCSCOPE_PURE_PYTHON", "1")
    assert c_parts() == [False] * 4


# -- the metrics fold -------------------------------------------------------------------------

_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]  # an int among floats


def _deferred(folder: bool) -> tuple[DeferredMetrics, list[list[CallRecord]], list[str]]:
    forwarded: list[list[CallRecord]] = []
    errors: list[str] = []
    deferred = DeferredMetrics(None, _BOUNDS, exemplars=True, interval=3600)
    if not folder:
        deferred._folder = None
    deferred.forward = forwarded.append
    deferred.log_components = frozenset({"server"})
    deferred.on_error = errors.append
    return deferred, forwarded, errors


def _fold_items(rng: random.Random, count: int) -> list[Callable[[DeferredMetrics], Any]]:
    """Recipes for pending items (each called once per DeferredMetrics: their own objects)."""
    recipes: list[Callable[[DeferredMetrics], Any]] = []
    for number in range(count):
        kind = rng.random()
        method = rng.randrange(3)
        component = rng.choice(["server", "client"])
        code = rng.choice(["OK"] * 5 + ["NotFound", "Unavailable", "NoSuchCode"])
        duration = rng.choice([0, 1, 5_000_000, 10_000_000, 10_000_001, 10**9, 10**10,
                               rng.randrange(2 * 10**10)])
        msgs: Any = rng.choice([0, 1, 7])
        trace = rng.choice([None, (None, number), ("a" * 32, "b" * 16, None, "01")])
        # Now and then one oddity, which the C fold leaves to the Python loop (which counts
        # an error for some of them: a None code, a str message count, no aggregate).
        odd = rng.random()
        if odd < 0.005:
            code = None
        elif odd < 0.01:
            duration = rng.choice([2**60, 1.5])
        elif odd < 0.015:
            msgs = rng.choice([True, 2**70, "x"])
        odd = rng.random() if odd >= 0.015 else 0.5

        def recipe(d: DeferredMetrics, kind: float = kind, method: int = method,
                   component: str = component, code: Any = code, duration: Any = duration,
                   msgs: Any = msgs, trace: Any = trace, odd: float = odd,
                   number: int = number) -> Any:
            aggs = d._test_aggs  # type: ignore[attr-defined]
            agg = aggs[(component, method)]
            if kind < 0.3:
                return agg  # a call started
            info = MethodInfo(component, f"/s.S/M{method}", "s.S", f"M{method}", "unary",
                              agg if odd > 0.005 else None)
            record = (CallRecord if odd < 0.995 else SubRecord)(info)
            record.code, record.duration_ns = code, duration
            record.msgs_in, record.msgs_out = msgs, 1
            record.trace, record.end_wall_ns = trace, 1_764_000_000_123_456_789 + number
            return record
        recipes.append(recipe)
    return recipes


def _setup(d: DeferredMetrics) -> DeferredMetrics:
    d._test_aggs = {(c, m): d.for_method(c, ("unary", "s.S", f"M{m}"))  # type: ignore[attr-defined]
                    for c in ("server", "client") for m in range(3)}
    return d


@pytest.mark.parametrize("seed", range(3))
def test_c_and_python_fold_the_same(seed: int) -> None:
    """Counts, sums, exemplars, the records forwarded to the log and the errors counted are
    the same whether the C fold or the Python loop ran, batch after batch."""
    rng = random.Random(seed)
    c_side, py_side = _deferred(True), _deferred(False)
    folder, in_c = c_side[0]._folder, [0, 0]
    assert folder is not None

    class Counting:  # how many items the C fold took, of how many it was offered
        def fold(self, pending: Any, n: int, *rest: Any) -> int:
            done: int = folder.fold(pending, n, *rest)
            in_c[0] += done
            in_c[1] += n
            return done

    c_side[0]._folder = Counting()
    _setup(c_side[0])
    _setup(py_side[0])
    for _ in range(30):
        recipes = _fold_items(rng, rng.randrange(1, 120))
        for d, _, _ in (c_side, py_side):
            d.pending.extend(recipe(d) for recipe in recipes)
            d.drain()
            assert not d.pending
    for (c, m), c_agg in c_side[0]._test_aggs.items():  # type: ignore[attr-defined]
        py_agg = py_side[0]._test_aggs[(c, m)]  # type: ignore[attr-defined]
        assert c_agg.counts == py_agg.counts
        assert c_agg.sum == py_agg.sum
        assert c_agg.exemplars == py_agg.exemplars
    assert c_side[2] == py_side[2] and c_side[2]  # some odd items did fail, on both sides
    assert in_c[0] > in_c[1] / 2  # most took the C path (it stops at an odd item per batch)
    assert [[r.end_wall_ns for r in batch] for batch in c_side[1]] == \
        [[r.end_wall_ns for r in batch] for batch in py_side[1]]


def test_a_failing_c_fold_is_counted_and_the_loop_folds_the_rest() -> None:
    class Raising:
        def fold(self, *args: Any) -> int:
            raise MemoryError

    d, _, errors = _deferred(True)
    _setup(d)
    d._folder = Raising()
    agg = d._test_aggs[("server", 0)]  # type: ignore[attr-defined]
    d.pending.extend([agg, agg])
    d.drain()
    assert errors == ["metrics"] and agg.counts[0] == 2


def test_bounds_c_cannot_compare_exactly_leave_the_fold_to_python() -> None:
    d = DeferredMetrics(None, [0.1, 2**60], exemplars=False, interval=3600)
    assert d._folder is None
    agg = d.for_method("server", ("unary", "s.S", "M"))
    record = CallRecord(MethodInfo("server", "/s.S/M", "s.S", "M", "unary", agg))
    record.duration_ns = 10**9
    d.pending.extend([agg, record])
    d.drain()
    assert agg.counts[0] == 1 and agg.counts[-2] == 1  # started; in the (0.1, 2**60] bucket


# -- the server request path ------------------------------------------------------------------

_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
_MD = (Metadatum("user-agent", "ua/1"), Metadatum("traceparent", _TRACEPARENT))
_VOLATILE = ("start_ns", "duration_ns", "end_wall_ns", "trace", "ids_token")


@pytest.fixture(autouse=True)
def _own_trace_context() -> Any:
    """Starts without a finish leave this thread's trace ids set: undo that for later tests."""
    from rpcscope.collector._core import CURRENT_IDS

    token = CURRENT_IDS.set(None)
    yield
    CURRENT_IDS.reset(token)


class _Call:
    def __init__(self, peer: Any = b"ipv4:127.0.0.1:5000") -> None:
        self._peer = peer

    def peer(self) -> Any:
        return self._peer


class _SyncContext:
    """grpc's sync context as the request path reads it: ``_rpc_event`` and ``_state``."""

    def __init__(self, peer: Any = b"ipv4:127.0.0.1:5000", metadata: Any = _MD) -> None:
        self._rpc_event = SimpleNamespace(invocation_metadata=metadata, call=_Call(peer),
                                          call_details=SimpleNamespace(deadline=None))
        self._state = SimpleNamespace(code=None, client=None)

    def code(self) -> Any:
        return self._state.code

    def details(self) -> Any:
        return "details"

    def is_active(self) -> bool:
        return self._state.client is None

    def time_remaining(self) -> Any:
        return None


class _AioContext:
    """grpc.aio's context: public methods only; the metadata comes from the interceptor."""

    def __init__(self) -> None:
        self.status: Any = None
        self.is_cancelled: Any = False

    def peer(self) -> str:
        return "ipv4:127.0.0.1:6000"

    def time_remaining(self) -> float:
        return 4.5

    def code(self) -> Any:
        return self.status

    def details(self) -> Any:
        return "details"

    def cancelled(self) -> Any:
        return self.is_cancelled


def _server_path(aio: bool, **options: Any) -> tuple[Any, Any, MethodInfo, list[str], Any]:
    """A scope's ServerPath whose Python fallbacks are recorded: (path, pipe, info, calls,
    Python finisher)."""
    import rpcscope
    from rpcscope import _speedups  # type: ignore[attr-defined]
    from rpcscope.collector import _core, _server
    from rpcscope.testing import CaptureSink

    options.setdefault("access_log", CaptureSink())
    scope = rpcscope.Scope(service="s", trace=True, log_metadata=("user-agent",), **options)
    pipe = scope._server_pipe
    if pipe.tracing is not None:
        pipe.tracing.next_check = time.monotonic() + 3600  # no provider check in this test
    info = scope._server_table.lookup("/t.v1.T/M", "unary")
    assert info is not None
    # No batch thread: these tests read and clear the pending queue themselves.
    pipe._deferred.thread = threading.current_thread()
    calls: list[str] = []
    finisher = _server._finisher(pipe, aio)

    def start(*args: Any) -> Any:
        calls.append("start")
        return pipe.start_server(*args)

    def finish(*args: Any) -> Any:
        calls.append("finish")
        return finisher(*args)

    from rpcscope.collector._deferred import DeferredMetrics as Deferred
    from rpcscope.collector._trace import Tracing

    path = _speedups.ServerPath(
        pipe, CallRecord, MethodInfo, _core.deque, Deferred, Tracing, _core.CURRENT_IDS,
        _core.next_call_number, start, finish, aio, grpc.StatusCode.OK, "cancelled")
    return path, pipe, info, calls, finisher


def _slots(record: CallRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in CallRecord.__slots__
            if name not in _VOLATILE}


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
@pytest.mark.parametrize("log", [True, False], ids=["log", "metrics-only"])
def test_c_request_path_makes_the_records_python_makes(aio: bool, log: bool) -> None:
    from rpcscope.collector._core import CURRENT_IDS

    path, pipe, info, calls, finisher = _server_path(
        aio, **({} if log else {"access_log": "off"}))
    pending = pipe._deferred.pending
    context: Any = _AioContext() if aio else _SyncContext()
    args = (info, context, _MD, True) if aio else (info, context)
    records, opened = [], []
    for start, finish in ((path.start, path.finish), (pipe.start_server, finisher)):
        pending.clear()
        record = start(*args)
        opened.append(_slots(record))
        assert CURRENT_IDS.get() is record.trace
        assert list(pending) == [info.metrics]  # "started"
        record.msgs_in = 1
        finish(record, context, None, True)
        assert list(pending) == [info.metrics, record]
        assert CURRENT_IDS.get() is None or aio  # reset (aio: the task's context dies)
        CURRENT_IDS.set(None)
        # One clock for both paths (C reads CPython's clocks directly on Linux).
        assert 0 <= record.duration_ns < 10**9
        assert abs(record.end_wall_ns - time.time_ns()) < 10**10
        assert record.trace is not None and record.trace[0] == _MD
        records.append(record)
    assert calls == []  # the C path took both calls
    mixed = path.start(*args)  # started in C, finished in Python
    finisher(mixed, context, None, True)
    assert 0 <= mixed.duration_ns < 10**9
    CURRENT_IDS.set(None)
    c, py = records
    assert opened[0] == opened[1]
    assert type(c) is CallRecord and _slots(c) == _slots(py)
    assert c.msgs_out == 1 and c.code == "OK"
    assert (c.peer is None) is (not log) and (c.metadata == _MD) is log


def test_unusual_calls_go_to_python_untouched() -> None:
    """Each surprise hands the whole start or finish to the Python reference, with nothing
    changed before: the pending queue holds only what Python put there."""
    path, pipe, info, calls, _ = _server_path(False)
    deferred = pipe._deferred

    def started(context: Any) -> list[str]:
        calls.clear()
        deferred.pending.clear()
        record = path.start(info, context)
        assert list(deferred.pending) == [info.metrics] and type(record) is CallRecord
        return list(calls)

    assert started(_SyncContext()) == []
    assert started(_AioContext()) == ["start"]  # no _rpc_event: the public methods
    assert started(_SyncContext(peer="not bytes")) == ["start"]
    pipe.tracing.next_check = 0.0  # the once-a-second provider check
    assert started(_SyncContext()) == ["start"]
    pipe.tracing.next_check = time.monotonic() + 3600
    pipe.tracing.tracer = object()  # an OTel tracer (span mode)
    assert started(_SyncContext()) == ["start"]
    pipe.tracing.tracer = None

    def finished(context: Any, error: Any = None, **slots: Any) -> list[str]:
        record = path.start(info, _SyncContext())
        for name, value in slots.items():
            setattr(record, name, value)
        calls.clear()
        deferred.pending.clear()
        path.finish(record, context, error, True)
        assert list(deferred.pending) == [record]
        return list(calls)

    ok = _SyncContext()
    assert finished(ok) == []
    assert finished(ok, ValueError("boom")) == ["finish"]
    assert finished(ok, otel_span=object()) == ["finish"]  # Python ends the span
    not_found = _SyncContext()
    not_found._state.code = grpc.StatusCode.NOT_FOUND
    assert finished(not_found) == ["finish"]
    cancelled = _SyncContext()
    cancelled._state.client = "cancelled"
    assert finished(cancelled) == ["finish"]
    assert finished(_AioContext()) == ["finish"]  # no _state: the public methods

    class Queue(deque[Any]):
        """Not exactly a deque: C leaves the queue to Python."""

    deferred.pending = Queue()
    calls.clear()
    path.start(info, _SyncContext())
    assert calls == ["start"] and len(deferred.pending) == 1


def test_unusual_aio_finishes_go_to_python() -> None:
    path, _, info, calls, _ = _server_path(True)
    for change, fallback in ((None, False), ("status", True), ("cancelled", True),
                             ("code raises", True)):
        context = _AioContext()
        if change == "status":
            context.status = grpc.StatusCode.INTERNAL
        elif change == "cancelled":
            context.is_cancelled = True
        elif change == "code raises":
            context.code = None  # type: ignore[assignment]  # not callable: code() raises
        record = path.start(info, context, _MD, True)
        calls.clear()
        path.finish(record, context, None, True)
        assert calls == (["finish"] if fallback else []), change
        if change == "cancelled":
            assert record.code in ("Canceled", "DeadlineExceeded")


def test_c_request_path_does_not_leak() -> None:
    """20,000 calls through the C start and finish leave nothing behind, and the objects every
    call shares (method info, metadata, context) keep their reference counts."""
    path, pipe, info, _, _ = _server_path(False)
    pending = pipe._deferred.pending
    metadata = (Metadatum("user-agent", "ua/2"), Metadatum("traceparent", _TRACEPARENT))
    context = _SyncContext(metadata=metadata)
    shared = (info, info.metrics, metadata, context._rpc_event.call_details, context._state)

    def calls(n: int) -> None:
        for _ in range(n):
            record = path.start(info, context)
            path.finish(record, context, None, True)
            pending.clear()

    calls(2000)
    gc.collect()
    before = [sys.getrefcount(o) for o in shared]
    tracemalloc.start()
    snapshot = tracemalloc.take_snapshot()
    calls(20_000)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(snapshot, "filename"))
    tracemalloc.stop()
    gc.collect()
    assert grown < 64_000
    assert [sys.getrefcount(o) for o in shared] == before


def test_c_finish_starts_the_batch_thread() -> None:
    path, pipe, info, calls, _ = _server_path(False)
    deferred = pipe._deferred
    deferred.thread = None
    context = _SyncContext()
    path.finish(path.start(info, context), context, None, True)
    assert calls == [] and isinstance(deferred.thread, threading.Thread)
    assert deferred.thread.is_alive()




@pytest.mark.parametrize("limit", [10, 10.5], ids=["int", "float"])
def test_c_finish_folds_in_itself_when_the_batch_thread_is_starved(limit: float) -> None:
    """Past max_pending the C finish folds the queue in itself, as Pipeline.finish does: bounded
    memory, exact counts. A limit C cannot compare (a float) is left to kick(), which checks."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    path, pipe, info, calls, _ = _server_path(False, access_log="off", registry=registry)
    deferred = pipe._deferred
    deferred.max_pending = limit  # the batch thread (this one, see _server_path) never drains
    sizes = []
    for _ in range(95):
        context = _SyncContext()
        path.finish(path.start(info, context), context, None, True)
        sizes.append(len(deferred.pending))
    # Two items per call ("started", then the record); folded in once more than 10 wait.
    assert max(sizes) == 10 and sizes[:6] == [2, 4, 6, 8, 10, 0]
    assert calls == []  # every call took the C path
    deferred.drain()
    labels = {"grpc_type": "unary", "grpc_service": "t.v1.T", "grpc_method": "M"}
    assert registry.get_sample_value(schema.SERVER_STARTED, labels) == 95
    assert registry.get_sample_value(schema.SERVER_HANDLED, {**labels, "grpc_code": "OK"}) == 95
