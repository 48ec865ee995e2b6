"""Child process for tests/test_forward_process.py: one scenario per argv[1]."""

from __future__ import annotations

import json
import os
import sys
import time

from rpcscope import schema
from rpcscope.exporters._ecs import iso_utc
from rpcscope.exporters._forward import ForwardSink


def docs(n: int, start: int) -> list[dict[str, object]]:
    return [{"@timestamp": iso_utc(time.time_ns()), "log.logger": schema.ACCESS_LOGGER,
             "message": f"record {i}", "id": i, "pad": "s" * 200} for i in range(start, start + n)]


def main() -> None:
    scenario, address = sys.argv[1], sys.argv[2]
    fast = {"flush_interval": 0.02, "connect_timeout": 1.0, "ack_timeout": 2.0,
            "backoff_base": 0.01, "backoff_max": 0.1}
    if scenario == "spill-then-wait":
        sink = ForwardSink(address, spill_dir=sys.argv[3], max_buffer_bytes=64 << 10,
                           batch_bytes=8 << 10, **fast)
        accepted = sink.write(docs(3000, 0))
        print(json.dumps({"accepted": accepted, **sink.stats()}), flush=True)
        time.sleep(600)  # SIGKILLed by the test
    elif scenario == "fork":
        sink = ForwardSink(address, **fast)
        sink.write(docs(10, 0))
        assert sink.flush(10)
        pid = os.fork()
        if pid == 0:
            sink.write(docs(10, 1000))
            sys.exit(0)  # atexit drains the child's own queue over its own connection
        sink.write(docs(10, 20))
        _, status = os.waitpid(pid, 0)
        sink.close(10)
        print(json.dumps({"child_status": status, **sink.stats()}), flush=True)
    elif scenario == "prefork":
        # gunicorn --preload style: built in the parent, which never writes; workers do.
        sink = ForwardSink(address, **fast)
        children = []
        for worker in range(3):
            pid = os.fork()
            if pid == 0:
                sink.write(docs(100, worker * 1000))
                sys.exit(0)
            children.append(pid)
        statuses = [os.waitpid(pid, 0)[1] for pid in children]
        print(json.dumps({"statuses": statuses}), flush=True)
    elif scenario == "exit":
        sink = ForwardSink(address, **fast)
        sink.write(docs(1000, 0))
        # No close(): the interpreter exits at once, and atexit must deliver the records.


if __name__ == "__main__":
    main()
