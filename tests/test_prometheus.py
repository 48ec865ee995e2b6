"""A real Prometheus scrapes rpcscope's /metrics and PromQL sees exactly the calls we made."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _svc
import grpc
import pytest
from _procs import prometheus, query, wait_until

import rpcscope


@pytest.mark.slow
def test_prometheus_scrapes_exact_call_counts(tmp_path: Path) -> None:
    scope = rpcscope.Scope(service="prom-test", access_log="off")
    server = grpc.server(ThreadPoolExecutor(4), interceptors=scope.server_interceptors())
    server.add_generic_rpc_handlers((_svc.sync_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    metrics = scope.serve_metrics(port=0, addr="127.0.0.1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = channel.unary_unary(_svc.path("Unary"))
            for _ in range(7):
                unary(b"ok")
            for _ in range(3):
                with pytest.raises(grpc.RpcError):
                    unary(b"abort:NOT_FOUND")
            assert len(list(channel.unary_stream(_svc.path("ServerStream"))(b"ok"))) == 3

        with prometheus(tmp_path, [f"127.0.0.1:{metrics.port}"]) as prom:
            def handled() -> dict[str, float]:
                rows = query(prom, 'sum by (grpc_code) (grpc_server_handled_total'
                                   '{grpc_service="test.v1.Echo",grpc_method="Unary"})')
                return {r["metric"]["grpc_code"]: float(r["value"][1]) for r in rows}

            got = wait_until(lambda: handled().get("NotFound") and handled(), 30,
                             "Unary series in Prometheus")
            assert got == {"OK": 7.0, "NotFound": 3.0}

            streams = query(prom, 'grpc_server_msg_sent_total{grpc_type="server_stream"}')
            assert [float(r["value"][1]) for r in streams] == [3.0]
            # The Go-style query dashboards run works unchanged.
            ratio = query(prom, 'sum(grpc_server_handled_total{grpc_code!="OK"}) / '
                                'sum(grpc_server_started_total)')
            assert float(ratio[0]["value"][1]) == pytest.approx(3 / 11)
    finally:
        metrics.close()
        server.stop(None)
        scope.close()
