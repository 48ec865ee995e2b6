"""The README's "Instrument a service" program runs as written.

It is the first code a user copies, so it is executed verbatim in a fresh interpreter (the
environment the suite runs in, with no test fixtures around it), and what it prints is checked
against what the README says it prints.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"


def _snippet() -> str:
    """The first ```python block under "## Instrument a service" (before the next heading)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Instrument a service\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert match, "README.md: no ```python block under '## Instrument a service'"
    return match.group(1)


def test_readme_instrument_snippet_runs_as_written(tmp_path: Path) -> None:
    program = tmp_path / "instrument.py"
    program.write_text(_snippet(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RPCSCOPE_", "OTEL_", "PYTHON"))}
    done = subprocess.run([sys.executable, str(program)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr

    # Everything on stdout is the scope's ECS JSON: the access log and the app's log records.
    docs: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    calls = {d["grpc.component"]: d for d in docs if d.get("log.logger") == "rpcscope.access"}
    assert set(calls) == {"server", "client"}, done.stdout
    for side, doc in calls.items():
        assert doc["rpc.service"] == "shop.v1.Shop", side
        assert doc["rpc.method"] == "GetProduct", side
        assert doc["grpc.code"] == "OK", side
        assert doc["service.name"] == "shop", side
    # The client interceptor sent its trace context; the server's line continues it.
    assert calls["server"]["trace.id"] == calls["client"]["trace.id"]
    assert calls["server"]["parent.id"] == calls["client"]["span.id"]
    # logging_handler(): the application's own record went to the same sink.
    app = [d for d in docs if d.get("log.logger") == "shop"]
    assert [d["message"] for d in app] == ["Product 1 in stock: 100"]
    assert app[0]["log.level"] == "warning"
