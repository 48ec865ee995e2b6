"""The example shop and its load generator, against real grpcio servers on port 0.

No rpcscope middleware here: these tests pin down what the demo and the middleware tests rely on —
each RPC kind answers, injected faults produce exactly the configured status codes, and the load
generator sends what its profile says and reports every call's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2

from rpcscope.example_shop import loadgen, server, shop_pb2, shop_pb2_grpc
from rpcscope.example_shop.server import Fault

OK = grpc.StatusCode.OK


@pytest.fixture
def start_sync() -> Iterator[object]:
    """Start sync shops on port 0; stopped at teardown."""
    started: list[grpc.Server] = []

    def start(faults: dict[str, Fault] | None = None, seed: int | None = None) -> str:
        srv, port = server.serve(port=0, faults=faults, seed=seed)
        started.append(srv)
        return f"127.0.0.1:{port}"

    yield start
    for srv in started:
        srv.stop(None).wait()


def _code_of(method: str, call: Any) -> grpc.StatusCode:
    """Run a started call to its end and return its status code."""
    try:
        if method in ("ListProducts", "Chat"):
            list(call)  # a response stream must be read to reach its status
        else:
            call.result()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return OK


def _all_kinds(stub: shop_pb2_grpc.ShopStub, timeout: float | None = None) -> dict[str, Any]:
    """Start one call of each kind; return the call objects by method."""
    updates = [shop_pb2.InventoryUpdate(sku="SKU-0001", delta=1)]
    messages = [shop_pb2.ChatMessage(text="a"), shop_pb2.ChatMessage(text="b")]
    return {
        "GetProduct": stub.GetProduct.future(
            shop_pb2.GetProductRequest(sku="SKU-0001"), timeout=timeout
        ),
        "ListProducts": stub.ListProducts(shop_pb2.ListProductsRequest(), timeout=timeout),
        "UploadInventory": stub.UploadInventory.future(iter(updates), timeout=timeout),
        "Chat": stub.Chat(iter(messages), timeout=timeout),
    }


# --- the service ---------------------------------------------------------------------------


def test_methods_match_the_proto() -> None:
    assert server.SERVICE_NAME == "shop.v1.Shop"
    assert server.METHODS == ("GetProduct", "ListProducts", "UploadInventory", "Chat")
    kinds = {m.name: (m.client_streaming, m.server_streaming) for m in server.SERVICE.methods}
    assert kinds == {
        "GetProduct": (False, False),
        "ListProducts": (False, True),
        "UploadInventory": (True, False),
        "Chat": (True, True),
    }


def test_each_kind_answers_without_faults(start_sync) -> None:
    with grpc.insecure_channel(start_sync()) as channel:
        stub = shop_pb2_grpc.ShopStub(channel)
        product = stub.GetProduct(shop_pb2.GetProductRequest(sku="SKU-0007"))
        assert (product.sku, product.name) == ("SKU-0007", "Product 7")

        games = list(stub.ListProducts(shop_pb2.ListProductsRequest(category="games", page_size=3)))
        assert len(games) == 3
        assert {p.category for p in games} == {"games"}
        assert len(list(stub.ListProducts(shop_pb2.ListProductsRequest()))) == (
            server.DEFAULT_PAGE_SIZE
        )

        summary = stub.UploadInventory(
            iter(
                [
                    shop_pb2.InventoryUpdate(sku="SKU-0007", delta=5),
                    shop_pb2.InventoryUpdate(sku="SKU-NONE", delta=1),
                ]
            )
        )
        assert (summary.accepted, summary.rejected) == (1, 1)
        assert (
            stub.GetProduct(shop_pb2.GetProductRequest(sku="SKU-0007")).stock == product.stock + 5
        )

        replies = list(stub.Chat(iter([shop_pb2.ChatMessage(text=t) for t in ("hi", "bye")])))
        assert [r.text for r in replies] == ["re: hi", "re: bye"]


def test_bad_input_gives_client_fault_codes(start_sync) -> None:
    with grpc.insecure_channel(start_sync()) as channel:
        stub = shop_pb2_grpc.ShopStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetProduct(shop_pb2.GetProductRequest(sku="SKU-NONE"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        before = stub.GetProduct(shop_pb2.GetProductRequest(sku="SKU-0002")).stock
        updates = [
            shop_pb2.InventoryUpdate(sku="SKU-0002", delta=3),
            shop_pb2.InventoryUpdate(sku="SKU-0003", delta=-1_000_000),
        ]
        with pytest.raises(grpc.RpcError) as negative:
            stub.UploadInventory(iter(updates))
        assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # all-or-nothing: the valid first update was not applied either
        assert stub.GetProduct(shop_pb2.GetProductRequest(sku="SKU-0002")).stock == before


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL]
)
def test_injected_error_codes_sync(start_sync, code: grpc.StatusCode) -> None:
    faults = {m: Fault(errors={code: 1.0}) for m in server.METHODS}
    with grpc.insecure_channel(start_sync(faults)) as channel:
        calls = _all_kinds(shop_pb2_grpc.ShopStub(channel))
        assert {m: _code_of(m, c) for m, c in calls.items()} == dict.fromkeys(server.METHODS, code)


def test_injected_crash_is_unknown_sync(start_sync) -> None:
    faults = {m: Fault(crash=1.0) for m in server.METHODS}
    with grpc.insecure_channel(start_sync(faults)) as channel:
        calls = _all_kinds(shop_pb2_grpc.ShopStub(channel))
        codes = {m: _code_of(m, c) for m, c in calls.items()}
    assert codes == dict.fromkeys(server.METHODS, grpc.StatusCode.UNKNOWN)


def test_failing_stream_sends_messages_first(start_sync) -> None:
    faults = {"ListProducts": Fault(errors={grpc.StatusCode.INTERNAL: 1.0})}
    with grpc.insecure_channel(start_sync(faults)) as channel:
        stream = shop_pb2_grpc.ShopStub(channel).ListProducts(
            shop_pb2.ListProductsRequest(page_size=10)
        )
        received = []
        with pytest.raises(grpc.RpcError) as failed:
            for product in stream:
                received.append(product)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert len(received) == 5  # half the page, then the error


def test_injected_latency_makes_deadlines_expire(start_sync) -> None:
    faults = {m: Fault(latency=0.5) for m in server.METHODS}
    with grpc.insecure_channel(start_sync(faults)) as channel:
        calls = _all_kinds(shop_pb2_grpc.ShopStub(channel), timeout=0.05)
        codes = {m: _code_of(m, c) for m, c in calls.items()}
    assert codes == dict.fromkeys(server.METHODS, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_seeded_faults_repeat(start_sync) -> None:
    faults = {"GetProduct": Fault(errors={grpc.StatusCode.UNAVAILABLE: 0.5})}

    def codes(seed: int) -> list[grpc.StatusCode]:
        with grpc.insecure_channel(start_sync(faults, seed=seed)) as channel:
            stub = shop_pb2_grpc.ShopStub(channel)
            request = shop_pb2.GetProductRequest(sku="SKU-0001")
            return [_code_of("GetProduct", stub.GetProduct.future(request)) for _ in range(30)]

    first = codes(7)
    assert first == codes(7)
    assert set(first) == {OK, grpc.StatusCode.UNAVAILABLE}


@pytest.mark.parametrize(
    "outcome",
    [
        (Fault(), None, OK),
        (Fault(errors={grpc.StatusCode.PERMISSION_DENIED: 1.0}), None, "PERMISSION_DENIED"),
        (Fault(crash=1.0), None, "UNKNOWN"),
        (Fault(latency=0.5), 0.05, "DEADLINE_EXCEEDED"),
    ],
    ids=["ok", "abort", "crash", "deadline"],
)
def test_aio_servicer_outcomes(outcome: tuple[Fault, float | None, object]) -> None:
    fault, timeout, expected = outcome
    expected_code = OK if expected is OK else grpc.StatusCode[str(expected)]

    async def messages() -> AsyncIterator[shop_pb2.ChatMessage]:
        for text in ("a", "b"):
            yield shop_pb2.ChatMessage(text=text)

    async def run() -> dict[str, grpc.StatusCode]:
        faults = dict.fromkeys(server.METHODS, fault)
        aserver, port = await server.serve_aio(port=0, faults=faults)
        codes = {}
        raises = contextlib.nullcontext() if expected is OK else pytest.raises(grpc.RpcError)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = shop_pb2_grpc.ShopStub(channel)
                update = shop_pb2.InventoryUpdate(sku="SKU-0001", delta=1)
                unary = [
                    (
                        "GetProduct",
                        stub.GetProduct(
                            shop_pb2.GetProductRequest(sku="SKU-0001"), timeout=timeout
                        ),
                    ),
                    ("UploadInventory", stub.UploadInventory(iter([update]), timeout=timeout)),
                ]
                streams = [
                    (
                        "ListProducts",
                        stub.ListProducts(shop_pb2.ListProductsRequest(), timeout=timeout),
                    ),
                    ("Chat", stub.Chat(messages(), timeout=timeout)),
                ]
                for name, call in unary:
                    with raises:
                        await call
                    codes[name] = await call.code()
                for name, call in streams:
                    with raises:
                        async for _ in call:
                            pass
                    codes[name] = await call.code()
        finally:
            await aserver.stop(None)
        return codes

    assert asyncio.run(run()) == dict.fromkeys(server.METHODS, expected_code)


# --- the checked-in stubs ---------------------------------------------------------------------

SHOP_DIR = Path(server.__file__).parent
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "shop.pb"
    argv = ["protoc", f"-I{SHOP_DIR}", f"--descriptor_set_out={out}", str(SHOP_DIR / "shop.proto")]
    assert protoc.main(argv) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in fresh.message_type:  # gencode drops json_name; so does the comparison
        for field in message.field:
            field.ClearField("json_name")
    checked_in = descriptor_pb2.FileDescriptorProto.FromString(shop_pb2.DESCRIPTOR.serialized_pb)
    assert fresh == checked_in, "shop.proto changed: run examples/shop/regen.sh"


def _lower_bound(package: str) -> tuple[int, ...]:
    found = re.search(rf'"{package}>=([0-9.]+)', PYPROJECT.read_text())
    assert found, f"no {package}>= bound in pyproject.toml"
    return tuple(int(part) for part in found.group(1).split("."))


def test_stubs_load_on_the_oldest_supported_grpcio() -> None:
    # The generated module refuses (or warns) on a grpcio older than the generator.
    generated = tuple(int(p) for p in shop_pb2_grpc.GRPC_GENERATED_VERSION.split("."))
    assert generated <= _lower_bound("grpcio")
    # protoc >= 27 also pins the protobuf runtime; it must not exceed our protobuf bound.
    pin = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+)",
        (SHOP_DIR / "shop_pb2.py").read_text(),
    )
    if pin:
        assert tuple(int(v) for v in pin.groups()) <= _lower_bound("protobuf")


# --- fault configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"errors": {grpc.StatusCode.NOT_FOUND: 1.5}},
        {"errors": {grpc.StatusCode.OK: 0.1}},
        {"errors": {grpc.StatusCode.INTERNAL: 0.7}, "crash": 0.4},
        {"crash": -0.1},
        {"latency": -1.0},
        {"jitter": float("inf")},
        {"tail": 2.0},
    ],
)
def test_invalid_faults_fail_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Fault(**kwargs)  # type: ignore[arg-type]


def test_faults_for_unknown_methods_are_rejected() -> None:
    with pytest.raises(ValueError, match="GetPrdouct"):
        server.ShopServicer({"GetPrdouct": Fault()})


def test_parse_fault_accepts_any_code_spelling() -> None:
    method, fault = server.parse_fault(
        "GetProduct:not_found=0.1,Unavailable=0.2,DEADLINE-EXCEEDED=0.05,crash=0.01,latency=0.02"
    )
    assert method == "GetProduct"
    assert dict(fault.errors) == {
        grpc.StatusCode.NOT_FOUND: 0.1,
        grpc.StatusCode.UNAVAILABLE: 0.2,
        grpc.StatusCode.DEADLINE_EXCEEDED: 0.05,
    }
    assert (fault.crash, fault.latency) == (0.01, 0.02)
    assert server.parse_fault("Chat:canceled=0.5")[1].errors == {grpc.StatusCode.CANCELLED: 0.5}
    assert server.parse_fault("Chat:")[1] == Fault()


@pytest.mark.parametrize(
    "spec", ["GetProduct", "Nope:crash=0.1", "Chat:bogus=0.1", "Chat:crash=lots", "Chat:crash"]
)
def test_parse_fault_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        server.parse_fault(spec)


def test_parse_faults_overrides_per_method() -> None:
    faults = server.parse_faults(["Chat:"], base=server.DEMO_FAULTS)
    assert faults["Chat"] == Fault()
    assert faults["GetProduct"] == server.DEMO_FAULTS["GetProduct"]


# --- the load generator --------------------------------------------------------------------


def _total(codes: dict[str, dict[str, int]]) -> int:
    return sum(sum(by_code.values()) for by_code in codes.values())


def test_loadgen_sends_max_calls_and_reports_every_outcome(start_sync) -> None:
    profile = loadgen.Profile(
        weights={"GetProduct": 1, "Chat": 1, "ListProducts": 0},
        rate=0,
        concurrency=3,
        duration=60,
        max_calls=40,
        deadline_ratio=0,
        cancel_ratio=0,
        bad_input_ratio=0,
        seed=3,
    )
    with grpc.insecure_channel(start_sync()) as channel:
        result = loadgen.LoadGenerator(channel, profile).run()
    assert result.total == 40
    assert set(result.sent) == {"GetProduct", "Chat"}  # weight 0 and unlisted: never called
    assert result.codes == {m: {"OK": n} for m, n in result.sent.items()}


def test_loadgen_twists_produce_their_codes(start_sync) -> None:
    """Short deadlines expire and cancellations cancel, when the server is slow enough."""
    target = start_sync({m: Fault(latency=0.3) for m in server.METHODS})
    profile = loadgen.Profile(
        rate=0,
        concurrency=8,
        duration=60,
        max_calls=24,
        deadline_ratio=0.5,
        short_deadline=0.02,
        cancel_ratio=0.5,
        cancel_after=0.02,
        bad_input_ratio=0,  # an empty ListProducts stream would finish before any deadline
        seed=5,
    )
    with grpc.insecure_channel(target) as channel:
        result = loadgen.LoadGenerator(channel, profile).run()
    expired = {m: c.get("DeadlineExceeded", 0) for m, c in result.codes.items()}
    cancelled = {m: c.get("Canceled", 0) for m, c in result.codes.items()}
    assert sum(result.deadlines.values()) + sum(result.cancels.values()) == 24
    assert {m: n for m, n in expired.items() if n} == result.deadlines
    assert {m: n for m, n in cancelled.items() if n} == result.cancels


def test_loadgen_bad_input_gets_client_fault_codes(start_sync) -> None:
    profile = loadgen.Profile(
        weights={"GetProduct": 1, "UploadInventory": 1},
        rate=0,
        max_calls=20,
        deadline_ratio=0,
        cancel_ratio=0,
        bad_input_ratio=1.0,
        seed=1,
    )
    with grpc.insecure_channel(start_sync()) as channel:
        result = loadgen.LoadGenerator(channel, profile).run()
    assert set(result.codes.get("GetProduct", {})) <= {"NotFound"}
    assert set(result.codes.get("UploadInventory", {})) <= {"InvalidArgument"}
    assert _total(result.codes) == 20


def test_loadgen_counts_injected_server_faults(start_sync) -> None:
    faults = {"GetProduct": Fault(errors={grpc.StatusCode.UNAVAILABLE: 1.0})}
    profile = loadgen.Profile(
        weights={"GetProduct": 1},
        rate=0,
        max_calls=10,
        deadline_ratio=0,
        cancel_ratio=0,
        bad_input_ratio=0,
    )
    with grpc.insecure_channel(start_sync(faults)) as channel:
        result = loadgen.LoadGenerator(channel, profile).run()
    assert result.codes == {"GetProduct": {"Unavailable": 10}}


def test_loadgen_stops_at_duration(start_sync) -> None:
    # No max_calls: only the duration ends this run (a hang here is the failure).
    profile = loadgen.Profile(rate=100, concurrency=2, duration=0.5, seed=2)
    with grpc.insecure_channel(start_sync()) as channel:
        result = loadgen.LoadGenerator(channel, profile).run()
    assert result.total > 0
    assert _total(result.codes) == result.total


def test_loadgen_stop_ends_a_long_run(start_sync) -> None:
    profile = loadgen.Profile(rate=50, concurrency=2, duration=3600, seed=2)
    with grpc.insecure_channel(start_sync()) as channel:
        generator = loadgen.LoadGenerator(channel, profile)
        results: list[loadgen.LoadResult] = []
        runner = threading.Thread(target=lambda: results.append(generator.run()))
        runner.start()
        while generator.progress()[0] < 5:
            runner.join(0.01)
        generator.stop()
        runner.join(30)
    assert not runner.is_alive()
    assert results[0].total >= 5
    assert _total(results[0].codes) == results[0].total


def test_aio_loadgen_matches_profile() -> None:
    profile = loadgen.Profile(
        rate=0,
        concurrency=4,
        duration=60,
        max_calls=30,
        deadline_ratio=0.2,
        short_deadline=0.02,
        cancel_ratio=0.2,
        cancel_after=0.02,
        bad_input_ratio=0,
        seed=11,
    )

    async def run() -> loadgen.LoadResult:
        faults = {m: Fault(latency=0.2) for m in server.METHODS}
        aserver, port = await server.serve_aio(port=0, faults=faults)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await loadgen.AsyncLoadGenerator(channel, profile).run()
        finally:
            await aserver.stop(None)

    result = asyncio.run(run())
    assert result.total == 30
    assert _total(result.codes) == 30
    assert set(result.sent) <= set(server.METHODS)
    cancelled = sum(c.get("Canceled", 0) for c in result.codes.values())
    assert cancelled == sum(result.cancels.values()) > 0
    # aio reports some expired streaming deadlines as INTERNAL (a grpcio quirk): count both.
    expired = sum(
        c.get("DeadlineExceeded", 0) + c.get("Internal", 0) for c in result.codes.values()
    )
    assert expired == sum(result.deadlines.values()) > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights": {"Nope": 1}},
        {"weights": {"GetProduct": 0}},
        {"weights": {"GetProduct": -1}},
        {"rate": -1},
        {"concurrency": 0},
        {"duration": 0},
        {"duration": float("inf")},
        {"max_calls": 0},
        {"deadline_ratio": 0.7, "cancel_ratio": 0.7},
        {"cancel_ratio": 1.5},
        {"short_deadline": 0},
        {"stream_length": 0},
    ],
)
def test_invalid_profiles_fail_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        loadgen.Profile(**kwargs)  # type: ignore[arg-type]


def test_parse_weights() -> None:
    assert loadgen.parse_weights("GetProduct=6, Chat=0.5") == {"GetProduct": 6.0, "Chat": 0.5}
    for bad in ("GetProduct", "GetProduct=x"):
        with pytest.raises(ValueError):
            loadgen.parse_weights(bad)


def test_loadgen_cli_against_a_running_shop(start_sync, capsys: pytest.CaptureFixture[str]) -> None:
    target = start_sync()
    argv = ["--target", target, "--duration", "30", "--max-calls", "12", "--rate", "0", "--json"]
    assert loadgen.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(report["sent"].values()) == 12
    assert _total(report["codes"]) == 12
