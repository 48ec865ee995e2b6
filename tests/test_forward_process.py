"""The Fluentd shipper across process boundaries: a SIGKILLed process's spill is replayed by
the next one, a forked child ships its own records, and interpreter exit drains the queue."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from rpcscope.exporters._forward import ForwardSink
from rpcscope.testing import ForwardReceiver, wait_until

CHILD = str(Path(__file__).parent / "_forward_child.py")
FAST = {"flush_interval": 0.02, "connect_timeout": 1.0, "ack_timeout": 2.0,
        "backoff_base": 0.01, "backoff_max": 0.1}


def run_child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, CHILD, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_sigkilled_process_spill_is_replayed_by_the_next(tmp_path):
    spill = tmp_path / "spill"
    receiver = ForwardReceiver()
    receiver.start()
    receiver.stop()  # a port that is down while the first process runs
    child = subprocess.Popen([sys.executable, CHILD, "spill-then-wait", receiver.address,
                              str(spill)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        stats = json.loads(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    spilled = stats["spilled"]
    assert spilled > 0
    assert list(spill.glob("*.fwd"))
    receiver.start()
    sink = ForwardSink(receiver.address, spill_dir=str(spill), **FAST)
    try:
        sink.flush(1)  # starts the sender, which adopts the dead process's segments
        events = receiver.wait_for(spilled, timeout=20)
        counts = Counter(e.record["id"] for e in events)
        assert sum(counts.values()) == spilled and max(counts.values()) == 1
        wait_until(lambda: sink.stats()["replayed"] == spilled, 10, message="acks processed")
    finally:
        sink.close(2)
        receiver.stop()
    assert not list(spill.glob("*.fwd"))


def test_forked_child_records_arrive_once():
    with ForwardReceiver() as receiver:
        result = run_child("fork", receiver.address)
        assert result.returncode == 0, result.stderr
        stats = json.loads(result.stdout)
        assert stats["child_status"] == 0
        receiver.wait_for(30)
        counts = Counter(e.record["id"] for e in receiver.events)
        expected = {*range(10), *range(20, 30), *range(1000, 1010)}
        assert set(counts) == expected
        # The child did not resend the parent's records, nor the parent the child's.
        assert max(counts.values()) == 1


def test_records_emitted_just_before_exit_arrive():
    with ForwardReceiver() as receiver:
        result = run_child("exit", receiver.address)
        assert result.returncode == 0, result.stderr
        events = receiver.wait_for(1000, timeout=20)
        assert {e.record["id"] for e in events} == set(range(1000))


def test_prefork_workers_each_ship_their_own_records():
    with ForwardReceiver() as receiver:
        result = run_child("prefork", receiver.address)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["statuses"] == [0, 0, 0]
        events = receiver.wait_for(300, timeout=20)
        counts = Counter(e.record["id"] for e in events)
        assert set(counts) == {w * 1000 + i for w in range(3) for i in range(100)}
        assert max(counts.values()) == 1
