"""Optional: let a real Fluentd with the pinned plugins parse and configure every entry file.

Runs only when RPCSCOPE_FLUENTD_CMD names a Fluentd command that has fluent-plugin-elasticsearch,
kubernetes_metadata_filter, parser-cri, concat and prometheus installed (e.g. a shell wrapper
around `docker run fluent/fluentd-kubernetes-daemonset:v1.19.3-debian-elasticsearch8-1.1
fluentd`). `--dry-run` builds every plugin and checks every parameter without starting inputs or
contacting Elasticsearch.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from fluentd_conf import CONFIG_DIR

CMD = os.environ.get("RPCSCOPE_FLUENTD_CMD", "")

pytestmark = [
    pytest.mark.fluentd,
    pytest.mark.skipif(
        not CMD,
        reason="RPCSCOPE_FLUENTD_CMD is not set: no Fluentd with the Elasticsearch, "
        "kubernetes_metadata, CRI, concat and Prometheus plugins to run --dry-run with",
    ),
]


def _env(tmp_path: Path) -> dict[str, str]:
    """Just enough environment for both entry files to configure, with state under tmp_path."""
    secret = tmp_path / "shared-key"
    secret.write_text("dry-run-shared-key\n")
    password = tmp_path / "es-password"
    password.write_text("dry-run-password\n")
    # Any readable PEM files will do for a dry run: TLS contexts are built at start, not here.
    cert = tmp_path / "tls.crt"
    key = tmp_path / "tls.key"
    cert.write_text("")
    key.write_text("")
    return {
        **os.environ,
        "FLUENT_STATE_PATH": str(tmp_path / "state"),
        "FLUENT_ELASTICSEARCH_HOSTS": "https://elasticsearch.invalid:9200",
        "FLUENT_ELASTICSEARCH_PASSWORD_FILE": str(password),
        "FLUENT_ELASTICSEARCH_CA_FILE": str(cert),
        "FLUENT_FORWARD_SHARED_KEY_FILE": str(secret),
        "FLUENT_FORWARD_TLS_CERT_PATH": str(cert),
        "FLUENT_FORWARD_TLS_KEY_PATH": str(key),
        "FLUENT_CONTAINER_TAIL_PATH": str(tmp_path / "containers" / "*.log"),
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
    }


@pytest.mark.parametrize("entry_file", ["daemonset.conf", "aggregator.conf"])
def test_fluentd_dry_run_accepts_the_config(tmp_path: Path, entry_file: str) -> None:
    result = subprocess.run(
        [*shlex.split(CMD), "--dry-run", "-c", str(CONFIG_DIR / entry_file)],
        env=_env(tmp_path),
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
