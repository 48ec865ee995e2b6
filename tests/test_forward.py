"""The Fluentd Forward shipper against a real Forward server on loopback (no mocks): wire
modes, at-least-once delivery through faults, handshake, TLS, spill, bad input, self-metrics.

Waits are bounded (``ForwardReceiver.wait_for``, ``ForwardSink.flush``); nothing asserts time.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fluent import asynchandler, asyncsender, handler, sender
from prometheus_client import CollectorRegistry

from rpcscope import ConfigError, schema
from rpcscope.exporters._ecs import iso_utc
from rpcscope.exporters._forward import ForwardSink
from rpcscope.testing import ForwardReceiver, sample_value, wait_until

FAST = {"flush_interval": 0.02, "connect_timeout": 2.0, "write_timeout": 2.0,
        "ack_timeout": 2.0, "backoff_base": 0.01, "backoff_max": 0.1}


def docs(n: int, start: int = 0, access: bool = True, **extra: Any) -> list[dict[str, Any]]:
    now = time.time_ns()
    return [{"@timestamp": iso_utc(now), "log.level": "info", "message": f"record {i}",
             "log.logger": schema.ACCESS_LOGGER if access else "app", "id": i, **extra}
            for i in range(start, start + n)]


def ids(receiver: ForwardReceiver) -> Counter[int]:
    return Counter(e.record["id"] for e in receiver.events if "id" in e.record)


@pytest.fixture
def receiver() -> Iterator[ForwardReceiver]:
    with ForwardReceiver() as r:
        yield r


@pytest.fixture
def make_sink() -> Iterator[Any]:
    sinks: list[ForwardSink] = []

    def make(servers: str, **kwargs: Any) -> ForwardSink:
        sink = ForwardSink(servers, **{**FAST, **kwargs})
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close(timeout=0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- wire -------------------------------------------------------------------------------------


def test_documents_arrive_as_packed_forward_with_nanosecond_event_time(receiver, make_sink):
    sink = make_sink(receiver.address)
    batch = docs(3) + docs(2, start=3, access=False)
    batch[0]["@timestamp"] = "2026-01-02T03:04:05.123456Z"
    batch[1]["@timestamp"] = "1800-01-01T00:00:00.000000Z"  # not an EventTime: now instead
    batch[2]["@timestamp"] = "garbage"
    before = time.time_ns()
    assert sink.write(batch) == 5
    assert sink.flush(10)
    events = receiver.wait_for(5)
    assert {e.mode for e in events} == {"PackedForward"}
    by_id = {e.record["id"]: e for e in events}
    assert by_id[0].time_ns == 1767323045_123456000
    assert by_id[1].time_ns >= before and by_id[2].time_ns >= before
    assert by_id[0].record == batch[0]  # the ECS document, unchanged
    assert {by_id[i].tag for i in range(3)} == {"rpcscope.access"}
    assert {by_id[i].tag for i in (3, 4)} == {"rpcscope.app"}
    assert all(e.chunk for e in events)  # ack mode: every request carried a chunk id
    stats = sink.stats()
    assert stats["accepted"] == stats["acked"] == 5
    assert stats["dropped"] == 0


def test_without_ack_mode_sends_no_chunk(receiver, make_sink):
    sink = make_sink(receiver.address, ack=False)
    sink.write(docs(5))
    assert sink.flush(10)
    events = receiver.wait_for(5)
    assert {e.chunk for e in events} == {None}
    assert receiver.stats["acks"] == 0


def test_custom_tags_and_gzip(receiver, make_sink):
    sink = make_sink(receiver.address, compress=True, access_tag="svc.access", app_tag="svc.app")
    sink.write(docs(50) + docs(50, start=50, access=False))
    assert sink.flush(10)
    events = receiver.wait_for(100)
    assert {e.mode for e in events} == {"CompressedPackedForward"}
    assert Counter(e.tag for e in events) == {"svc.access": 50, "svc.app": 50}


def test_batches_are_capped_near_batch_bytes(receiver, make_sink):
    sink = make_sink(receiver.address, batch_bytes=16 << 10)
    sink.write(docs(2000, blob="x" * 200))
    assert sink.flush(10)
    receiver.wait_for(2000)
    assert receiver.stats["requests"] >= (2000 * 200) // (16 << 10)


def test_receiver_decodes_every_mode_a_sender_may_use(receiver):
    """Message, Forward, PackedForward (bin and Fluentd's str32), CompressedPackedForward;
    EventTime, integer and float times; acks echo the chunk."""
    et = msgpack.ExtType(0, (5).to_bytes(4, "big") + (7).to_bytes(4, "big"))
    entries = msgpack.packb([et, {"m": "p"}]) + msgpack.packb([6, {"m": "p2"}])
    str32 = b"\xdb" + len(entries).to_bytes(4, "big") + entries
    requests = [
        msgpack.packb(["t.msg", et, {"m": "message"}, {"chunk": "c1"}]),
        msgpack.packb(["t.fwd", [[et, {"m": "f1"}], [3, {"m": "f2"}]], {"chunk": "c2"}]),
        msgpack.packb(["t.packed", entries, {"chunk": "c3", "size": 2}], use_bin_type=True),
        b"\x93" + msgpack.packb("t.str32") + str32 + msgpack.packb({"chunk": "c4"}),
        msgpack.packb(["t.gz", gzip.compress(entries), {"compressed": "gzip", "chunk": "c5"}],
                      use_bin_type=True),
        msgpack.packb(["t.float", 1.5, {"m": "float"}]),
    ]
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as conn:
        conn.sendall(b"".join(requests))
        unpacker = msgpack.Unpacker(raw=False)
        acks: list[str] = []
        while len(acks) < 5:
            unpacker.feed(conn.recv(4096))
            acks += [a["ack"] for a in unpacker]
    assert acks == ["c1", "c2", "c3", "c4", "c5"]
    events = receiver.wait_for(10)
    modes = {(e.tag, e.mode) for e in events}
    assert modes == {("t.msg", "Message"), ("t.fwd", "Forward"), ("t.packed", "PackedForward"),
                     ("t.str32", "PackedForward"), ("t.gz", "CompressedPackedForward"),
                     ("t.float", "Message")}
    assert [e.time_ns for e in events if e.tag == "t.packed"] == [5_000_000_007, 6_000_000_000]
    assert receiver.stats["float_times"] == 1


# -- interop: fluent-logger (a third-party sender) into our receiver ----------------------


def test_fluent_logger_senders_into_the_receiver(receiver):
    sync = sender.FluentSender("fl", port=receiver.port, nanosecond_precision=True)
    assert sync.emit("sync", {"n": 1})
    sync.close()
    async_ = asyncsender.FluentSender("fl", port=receiver.port, nanosecond_precision=True)
    async_.emit("async", {"n": 2})
    async_.close()
    log = logging.getLogger("test_forward.interop")
    fh = handler.FluentHandler("fl.handler", port=receiver.port)
    fh.setFormatter(handler.FluentRecordFormatter())
    log.addHandler(fh)
    try:
        log.warning("from FluentHandler")
    finally:
        log.removeHandler(fh)
        fh.close()
    ah = asynchandler.FluentHandler("fl.ahandler", port=receiver.port)
    ah.setFormatter(handler.FluentRecordFormatter())
    log.addHandler(ah)
    try:
        log.warning("from the async FluentHandler")
    finally:
        log.removeHandler(ah)
        ah.close()
    events = receiver.wait_for(4)
    assert {e.tag for e in events} == {"fl.sync", "fl.async", "fl.handler", "fl.ahandler"}
    assert {e.mode for e in events} == {"Message"}
    # nanosecond_precision=True senders send EventTime: sub-second part kept
    assert all(e.time_ns % 1_000_000_000 for e in events if e.tag in ("fl.sync", "fl.async"))


# -- delivery through faults --------------------------------------------------------------


def test_withheld_ack_resends_the_same_chunk(receiver, make_sink):
    receiver.withhold_acks = True
    sink = make_sink(receiver.address, ack_timeout=0.3)
    sink.write(docs(10))
    receiver.wait_for(10)  # stored but not acked: the sink must resend
    receiver.wait_for(20)
    receiver.withhold_acks = False
    assert sink.flush(10)
    chunks = Counter(e.chunk for e in receiver.events)
    assert len(chunks) == 1  # every resend carried the first chunk id
    # ... and the very same records and times: a content-derived document id (Fluentd's
    # elasticsearch_genid) gives a resent record the same id, so Elasticsearch keeps one.
    copies: dict[int, set[str]] = {}
    for e in receiver.events:
        copies.setdefault(e.record["id"], set()).add(repr((e.time_ns, e.record)))
    assert all(len(v) == 1 for v in copies.values())
    assert receiver.stats["duplicate_chunks"] >= 1
    assert sink.stats()["retried"] >= 10
    assert sink.stats()["acked"] == 10


def test_connection_closed_mid_request_and_slow_reads(receiver, make_sink):
    receiver.close_mid_request = 2
    receiver.read_delay, receiver.read_size = 0.002, 1024
    sink = make_sink(receiver.address)
    sink.write(docs(300, blob="y" * 300))
    assert sink.flush(20)
    assert set(ids(receiver)) == set(range(300))
    assert sink.stats()["retried"] > 0


def test_failover_to_the_next_server_and_unix_socket(tmp_path, make_sink):
    path = str(tmp_path / "fwd.sock")
    with ForwardReceiver(unix_path=path) as unix_receiver:
        sink = make_sink(f"127.0.0.1:{free_port()}, unix://{path}")
        sink.write(docs(5))
        assert sink.flush(10)
        assert set(ids(unix_receiver)) == set(range(5))


def test_ipv6_loopback(make_sink):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        receiver = ForwardReceiver(host="::1").start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        sink = make_sink(f"[::1]:{receiver.port}")
        sink.write(docs(3))
        assert sink.flush(10)
        assert set(ids(receiver)) == {0, 1, 2}
    finally:
        receiver.stop()


def test_loss_50000_records_across_three_receiver_restarts(receiver, make_sink):
    sink = make_sink(receiver.address, batch_records=500, ack_timeout=1.0)
    total, step = 50_000, 2_500
    restarts = 0
    for start in range(0, total, step):
        assert sink.write(docs(step, start=start)) == step
        if start and start % 12_500 == 0 and restarts < 3:
            if restarts == 1:
                # This time the server dies after storing a batch but before acking it (as a
                # Fluentd killed between its buffer write and the ack): it must come again.
                receiver.withhold_acks = True
                receiver.wait_for(receiver.event_count + 1)
            # Kill while batches are in flight (requests half read are neither stored nor
            # acked), then come back on the same port.
            receiver.stop()
            receiver.withhold_acks = False
            restarts += 1
            receiver.start()
    assert restarts == 3
    assert sink.flush(40), sink.stats()
    seen = ids(receiver)
    missing = set(range(total)) - set(seen)
    duplicates = sum(c - 1 for c in seen.values())
    print(f"\n50,000 records, 3 restarts: {len(seen)} unique, {duplicates} duplicates, "
          f"retried {sink.stats()['retried']}")
    assert not missing, f"{len(missing)} records lost"
    assert duplicates > 0  # the stored-but-unacked batch was sent again
    stats = sink.stats()
    assert stats["accepted"] == stats["acked"] == total
    assert stats["dropped"] == 0


def test_concurrent_writers(receiver, make_sink):
    sink = make_sink(receiver.address, batch_records=300)
    threads = [threading.Thread(target=lambda k=k: [sink.write(docs(500, start=k * 5000 + j))
                                                    for j in range(0, 5000, 500)])
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sink.flush(20)
    assert set(ids(receiver)) == set(range(20_000))
    assert sink.stats()["acked"] == 20_000, sink.stats()


def test_outage_spills_within_the_memory_bound_then_replays(receiver, make_sink, tmp_path):
    receiver.stop()
    bound = 128 << 10
    sink = make_sink(receiver.address, max_buffer_bytes=bound, batch_bytes=16 << 10,
                     spill_dir=str(tmp_path / "spill"))
    for start in range(0, 10_000, 500):
        assert sink.write(docs(500, start=start, pad="z" * 100)) == 500
        assert sink.stats()["queue_bytes"] <= bound
    assert sink.stats()["spilled"] > 0
    segments = list((tmp_path / "spill").glob("*.fwd"))
    assert segments
    assert all(p.stat().st_mode & 0o077 == 0 for p in segments)  # owner-only
    receiver.start()
    assert sink.flush(30), sink.stats()
    assert set(ids(receiver)) == set(range(10_000))
    stats = sink.stats()
    assert stats["replayed"] == stats["spilled"]
    assert stats["dropped"] == 0
    assert not list((tmp_path / "spill").glob("*.fwd"))  # acked segments are deleted


def test_spill_is_capped_and_segments_replay_in_record_order(receiver, make_sink, tmp_path):
    receiver.stop()
    cap = 1 << 16
    sink = make_sink(receiver.address, max_buffer_bytes=1 << 16, batch_bytes=4 << 10,
                     spill_max_bytes=cap, spill_dir=str(tmp_path / "spill"))
    for i in range(0, 3000, 100):
        sink.write(docs(100, start=i, pad="c" * 200))
    stats = sink.stats()
    assert stats["dropped_spill_full"] > 0
    assert stats["spill_bytes"] <= cap
    spilled_ids = stats["spilled"]
    receiver.start()
    assert sink.flush(20), sink.stats()
    # Every record arrived or was counted dropped (the spill was full): none vanished.
    assert len(set(ids(receiver))) + sink.stats()["dropped"] == 3000
    # Segments replay oldest first: the spilled records arrive in the order written.
    replayed = [e.record["id"] for e in receiver.events][-spilled_ids:]
    assert replayed == sorted(replayed)


def test_without_spill_overflow_drops_newest_and_counts(receiver, make_sink):
    receiver.stop()
    sink = make_sink(receiver.address, max_buffer_bytes=64 << 10, batch_bytes=8 << 10)
    accepted = sink.write(docs(5000, pad="q" * 100))
    stats = sink.stats()
    assert 0 < accepted < 5000
    assert stats["dropped_buffer_full"] == 5000 - accepted
    assert stats["queue_bytes"] <= 64 << 10
    receiver.start()
    assert sink.flush(20)
    assert set(ids(receiver)) == set(range(accepted))  # the oldest were kept


def test_refused_batch_is_split_and_the_poison_record_dead_lettered(receiver, make_sink,
                                                                     tmp_path):
    receiver.refuse = lambda tag, records: any(r.get("poison") for r in records)
    dead = tmp_path / "dead.jsonl"
    sink = make_sink(receiver.address, split_after=2, dead_letter_path=str(dead))
    batch = docs(64)
    batch[37]["poison"] = True
    sink.write(batch)
    sink.write(docs(8, start=64))  # later traffic the server accepts: the evidence
    assert sink.flush(20), sink.stats()
    assert set(ids(receiver)) == set(range(72)) - {37}
    assert sink.stats()["dead_lettered"] == 1
    assert dead.stat().st_mode & 0o077 == 0  # owner-only: records may hold personal data
    [line] = dead.read_text().splitlines()
    entry = json.loads(line)
    assert entry["record"]["id"] == 37
    assert entry["tag"] == "rpcscope.access"
    assert "no ack" in entry["reason"]


def test_oversized_request_is_split_below_the_server_limit(receiver, make_sink):
    receiver.max_request_bytes = 20_000
    sink = make_sink(receiver.address, batch_bytes=200 << 10, split_after=1)
    sink.write(docs(400, pad="p" * 200))
    assert sink.flush(20), sink.stats()
    assert set(ids(receiver)) == set(range(400))
    assert sink.stats()["dead_lettered"] == 0


def test_close_never_hangs_and_counts_what_it_could_not_send(make_sink):
    sink = make_sink(f"127.0.0.1:{free_port()}")
    sink.write(docs(100))
    closer = threading.Thread(target=sink.close, args=(0.3,))
    closer.start()
    closer.join(15)
    assert not closer.is_alive()
    assert sink.stats()["dropped_close_timeout"] == 100
    assert sink.write(docs(1)) == 0
    assert sink.stats()["dropped_closed"] == 1


def test_close_spills_and_the_next_sink_replays(receiver, tmp_path):
    spill = str(tmp_path / "spill")
    receiver.stop()
    first = ForwardSink(receiver.address, spill_dir=spill, **FAST)
    first.write(docs(200))
    first.close(0.3)
    assert first.stats()["spilled"] == 200
    receiver.start()
    second = ForwardSink(receiver.address, spill_dir=spill, **FAST)
    try:
        assert second.flush(10)  # replays the segment it adopted on start
        receiver.wait_for(200)
        assert set(ids(receiver)) == set(range(200))
        wait_until(lambda: second.stats()["replayed"] == 200, 10, message="acks processed")
    finally:
        second.close(2)


# -- security -------------------------------------------------------------------------------


def test_handshake_with_the_right_key_and_user(make_sink):
    with ForwardReceiver(shared_key="s3cret", users={"alice": "pw"}) as r:
        sink = make_sink(r.address, shared_key="s3cret", username="alice", password="pw")
        sink.write(docs(3))
        assert sink.flush(10)
        assert set(ids(r)) == {0, 1, 2}


@pytest.mark.parametrize(("server", "client", "message"), [
    ({"shared_key": "right"}, {"shared_key": "wrong"}, "refused the handshake"),
    ({"shared_key": "k", "users": {"alice": "pw"}},
     {"shared_key": "k", "username": "alice", "password": "nope"}, "username/password"),
    ({"shared_key": "k", "users": {"alice": "pw"}}, {"shared_key": "k"},
     "asks for a username and password"),
    ({"shared_key": "k"}, {}, "requires the shared-key handshake"),
])
def test_handshake_failures_fail_closed_with_a_clear_error(make_sink, server, client, message):
    with ForwardReceiver(**server) as r:
        sink = make_sink(r.address, **client)
        sink.write(docs(2))
        assert not sink.flush(1.0)
        assert message in (sink.last_error or "")
        assert r.events == []


def test_server_without_keepalive_gets_a_new_handshake_per_batch(make_sink):
    with ForwardReceiver(shared_key="k", keepalive=False) as r:
        sink = make_sink(r.address, shared_key="k", batch_records=10)
        sink.write(docs(50))
        assert sink.flush(10)
        assert set(ids(r)) == set(range(50))
        assert r.stats["connections"] >= 5  # one connection (and handshake) per batch


def test_close_during_a_long_ack_wait_keeps_its_deadline(receiver, make_sink, tmp_path):
    receiver.withhold_acks = True
    sink = make_sink(receiver.address, ack_timeout=60, spill_dir=str(tmp_path / "s"))
    sink.write(docs(20))
    receiver.wait_for(20)  # sent; the sink now waits up to 60 s for the ack
    closer = threading.Thread(target=sink.close, args=(0.2,))
    closer.start()
    closer.join(15)
    assert not closer.is_alive()
    stats = sink.stats()
    assert stats["spilled"] == 20  # the unacked batch went to disk, not lost
    assert stats["queue_bytes"] == 0


def test_a_server_that_does_not_know_the_key_is_refused(make_sink):
    with ForwardReceiver(shared_key="k") as r:
        r.forge_pong_key = b"not-the-key"
        sink = make_sink(r.address, shared_key="k")
        sink.write(docs(2))
        assert not sink.flush(1.0)
        assert "PONG digest is wrong" in (sink.last_error or "")
        assert r.stats["requests"] == 0  # not one record written to the impostor


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A test CA, a server certificate for localhost/127.0.0.1, one for another host, a client
    certificate, and an unrelated CA (openssl CLI)."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
            "-subj", f"/CN={ca}")
    for name, san in (("server", "DNS:localhost,IP:127.0.0.1"), ("wronghost", "DNS:elsewhere"),
                      ("client", "DNS:client")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {p.stem + p.suffix.replace(".", "_"): str(p) for p in d.iterdir()}


def test_tls_with_ca_client_certificate_and_handshake(pki, make_sink):
    with ForwardReceiver(tls_cert=pki["server_pem"], tls_key=pki["server_key"],
                         tls_client_ca=pki["ca_pem"], shared_key="k") as r:
        assert r.address.startswith("tls://")
        sink = make_sink(r.address, tls_ca=pki["ca_pem"], tls_cert=pki["client_pem"],
                         tls_key=pki["client_key"], shared_key="k")
        sink.write(docs(4))
        assert sink.flush(10)
        assert set(ids(r)) == {0, 1, 2, 3}


@pytest.mark.parametrize(("cert", "ca", "message"), [
    ("server", "other-ca", "CERTIFICATE_VERIFY_FAILED"),
    ("wronghost", "ca", "match"),
])
def test_tls_refuses_a_wrong_ca_or_host(pki, make_sink, cert, ca, message):
    with ForwardReceiver(tls_cert=pki[f"{cert}_pem"], tls_key=pki[f"{cert}_key"]) as r:
        sink = make_sink(r.address, tls_ca=pki[f"{ca}_pem"])
        sink.write(docs(1))
        assert not sink.flush(1.0)
        assert message in (sink.last_error or "")
        assert "fix: set the CA" in (sink.last_error or "")
        assert r.events == []
        # Insecure mode connects anyway, but only when asked for by name.
        insecure = make_sink(r.address, tls_insecure=True)
        insecure.write(docs(1, start=1))
        assert insecure.flush(10)
        assert set(ids(r)) == {1}


# -- bad input --------------------------------------------------------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")

    __repr__ = __str__


def test_bad_values_lose_a_field_never_the_record(receiver, make_sink):
    recursive: dict[str, Any] = {"a": 1}
    recursive["self"] = recursive
    batch = docs(6)
    batch[0]["obj"] = object()  # unserializable: becomes a string
    batch[1]["bad"] = Unprintable()  # not even a string: dropped and named
    batch[2]["message"] = "invalid \udcff utf-8 \ud800"
    batch[3]["labels"] = recursive
    batch[4]["big"] = 1 << 80
    batch[5]["message"] = "m" * (10 << 20)  # a 10 MB message
    sink = make_sink(receiver.address)
    assert sink.write(batch) == 6
    assert sink.flush(20)
    got = {e.record["id"]: e.record for e in receiver.wait_for(6)}
    assert got[0]["obj"].startswith("<object object")
    assert got[1]["rpcscope.dropped_fields"] == ["bad"]
    assert "\\udcff" in got[2]["message"]
    assert got[3]["labels"]["a"] == 1
    assert got[4]["big"] == str(1 << 80)
    assert got[5]["rpcscope.truncated_fields"] == ["message"]
    assert len(got[5]["message"]) < 2 << 20
    stats = sink.stats()
    assert stats["repaired"] >= 3  # surrogates, cycle, unprintable (msgpack str()s big ints)
    assert stats["truncated"] == 1
    assert stats["dropped"] == 0


@pytest.mark.parametrize("tag", ["x" * 10_000, "has space", "a..b", "", "日本", 5])
def test_huge_or_invalid_tags_are_config_errors(tag):
    with pytest.raises(ConfigError, match=r"access_tag.*fix:"):
        ForwardSink("127.0.0.1:24224", access_tag=tag)


@pytest.mark.parametrize(("option", "value"), [
    ("max_buffer_bytes", 10), ("batch_records", 0), ("batch_bytes", True),
    ("max_record_bytes", 100), ("ack_timeout", 0), ("flush_interval", "1s"),
    ("shared_key", ""), ("username", "u"),
])
def test_invalid_options_name_the_parameter_and_the_fix(option, value):
    with pytest.raises(ConfigError, match=rf"'{option}'.*fix:"):
        ForwardSink("127.0.0.1:24224", **{option: value})


@pytest.mark.parametrize(("servers", "message"), [
    ("host:0", "not 1-65535"), ("host:http", "not 1-65535"), ("::1:24224", "brackets"),
    ("[::1", "brackets"), ("unix://relative", "absolute path"), ("", "no server"),
    ("http://host/path", "not host:port"),
])
def test_invalid_server_strings(servers, message):
    with pytest.raises(ConfigError, match=message):
        ForwardSink(servers)


# -- self-metrics --------------------------------------------------------------------------------


def test_self_metrics_on_a_registry(receiver, make_sink):
    registry = CollectorRegistry()
    sink = make_sink(receiver.address)
    registry.register(sink)
    sink.write(docs(7))
    assert sink.flush(10)
    assert sample_value(registry, schema.FORWARD_RECORDS, {"outcome": "acked"}) == 7
    assert sample_value(registry, schema.FORWARD_DROPPED, {"reason": "buffer_full"}) == 0
    assert sample_value(registry, schema.FORWARD_SENT_BYTES) > 0
    assert sample_value(registry, schema.FORWARD_RECONNECTS) == 1
    assert sample_value(registry, schema.FORWARD_QUEUE_BYTES) == 0
    assert sample_value(registry, schema.FORWARD_SECONDS_SINCE_ACK) >= 0
    for name in (schema.FORWARD_RECORDS, schema.FORWARD_DROPPED, schema.FORWARD_SENT_BYTES):
        assert name in schema.HELP


def test_chunk_ids_are_base64_of_16_random_bytes(receiver, make_sink):
    sink = make_sink(receiver.address)
    sink.write(docs(1))
    assert sink.flush(10)
    [event] = receiver.wait_for(1)
    assert event.chunk is not None
    assert len(base64.b64decode(event.chunk)) == 16


def test_spill_dir_that_cannot_be_created_is_a_config_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="spill_dir"):
        ForwardSink("127.0.0.1:1", spill_dir=str(blocker / "sub"))
