"""Optional: let a real Fluentd with the pinned plugins parse and configure every entry file.

Runs only when RPCSCOPE_FLUENTD_CMD names a Fluentd command (plus RPCSCOPE_FLUENTD_PLUGIN_DIRS
for plugin source checkouts; fluentd_run.py says how) that has fluent-plugin-elasticsearch,
kubernetes_metadata_filter, parser-cri, concat and prometheus. `--dry-run` builds every plugin
and checks every parameter without starting inputs or contacting Elasticsearch; the forward
input does load its TLS key pair, so the test makes a real one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from fluentd_conf import CONFIG_DIR
from fluentd_run import CMD, SKIP_REASON, fluentd_argv, make_pki

pytestmark = [pytest.mark.fluentd, pytest.mark.skipif(not CMD, reason=SKIP_REASON)]


def _env(tmp_path: Path) -> dict[str, str]:
    """Just enough environment for both entry files to configure, with state under tmp_path."""
    pki = make_pki(tmp_path / "pki")
    secret = tmp_path / "shared-key"
    secret.write_text("dry-run-shared-key\n")
    password = tmp_path / "es-password"
    password.write_text("dry-run-password\n")
    return {
        **os.environ,
        "FLUENT_STATE_PATH": str(tmp_path / "state"),
        "FLUENT_ELASTICSEARCH_HOSTS": "https://elasticsearch.invalid:9200",
        "FLUENT_ELASTICSEARCH_PASSWORD_FILE": str(password),
        "FLUENT_ELASTICSEARCH_CA_FILE": str(pki.ca),
        "FLUENT_FORWARD_SHARED_KEY_FILE": str(secret),
        "FLUENT_FORWARD_TLS_CERT_PATH": str(pki.cert),
        "FLUENT_FORWARD_TLS_KEY_PATH": str(pki.key),
        "FLUENT_CONTAINER_TAIL_PATH": str(tmp_path / "containers" / "*.log"),
    }


@pytest.mark.parametrize("entry_file", ["daemonset.conf", "aggregator.conf"])
def test_fluentd_dry_run_accepts_the_config(tmp_path: Path, entry_file: str) -> None:
    result = subprocess.run(
        fluentd_argv("--dry-run", "-c", str(CONFIG_DIR / entry_file), "--disable-shared-socket"),
        env=_env(tmp_path),
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    # Fluentd 1.x warns about "@" parameters it does not know (e.g. a record_transformer key
    # "@timestamp") and says a later version rejects them.
    assert "system reserved prefix" not in output, output[-8000:]
