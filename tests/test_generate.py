"""``tools/generate.py``: the committed outputs are current, and any drift fails ``--check``.

Everything that modifies files runs on a temporary copy of the relevant parts of the checkout
(the tool works on the tree it lives in), never on the real tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("tools", "dashboards", "src", "alerts", "fluentd-config", "charts/rpcscope-stack",
          "docs", "examples/demo-values.yaml")
CHART_FILES = "charts/rpcscope-stack/files"


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "tools" / "generate.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the checkout's sources and generated files, regenerated so it starts clean.

    Regenerating first keeps these tests about the tool, not about whether a colleague's
    uncommitted fluentd-config edit has been mirrored yet (the real-tree test covers that).
    """
    for rel in COPIED:
        source = ROOT / rel
        if source.is_dir():
            shutil.copytree(
                source, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        elif source.is_file():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, tmp_path / rel)
    (tmp_path / "alerts").mkdir(exist_ok=True)
    (tmp_path / "fluentd-config").mkdir(exist_ok=True)
    assert run(tmp_path).returncode == 0
    assert run(tmp_path, "--check").returncode == 0
    return tmp_path


def test_check_passes_on_the_committed_tree() -> None:
    result = run(ROOT, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_hand_edit_of_a_generated_dashboard_fails_the_check(tree: Path) -> None:
    target = tree / "dashboards/generated/grpc_overview.json"
    target.write_text(target.read_text().replace('"refresh": "30s"', '"refresh": "5s"'))
    result = run(tree, "--check")
    assert result.returncode == 1
    assert "changed  dashboards/generated/grpc_overview.json" in result.stdout
    assert '-  "refresh": "5s"' in result.stdout  # the diff shows what differs
    assert '+  "refresh": "30s"' in result.stdout
    # --check wrote nothing; a normal run repairs the file.
    assert '"refresh": "5s"' in target.read_text()
    assert run(tree).returncode == 0
    assert run(tree, "--check").returncode == 0


def test_stale_chart_copy_of_a_dashboard_fails_the_check(tree: Path) -> None:
    copy = tree / CHART_FILES / "dashboards/grpc_method.json"
    copy.write_text(copy.read_text() + " ")
    result = run(tree, "--check")
    assert result.returncode == 1
    assert f"changed  {CHART_FILES}/dashboards/grpc_method.json" in result.stdout


def test_missing_and_extra_generated_files_fail_the_check_and_are_repaired(tree: Path) -> None:
    (tree / "dashboards/kibana/kibana_logs.ndjson").unlink()
    (tree / CHART_FILES / "dashboards/old_dashboard.json").write_text("{}")
    result = run(tree, "--check")
    assert result.returncode == 1
    assert "missing  dashboards/kibana/kibana_logs.ndjson" in result.stdout
    assert f"stale    {CHART_FILES}/dashboards/old_dashboard.json" in result.stdout
    assert run(tree).returncode == 0
    assert (tree / "dashboards/kibana/kibana_logs.ndjson").is_file()
    assert not (tree / CHART_FILES / "dashboards/old_dashboard.json").exists()


def test_changed_dashboard_source_is_drift_until_regenerated(tree: Path) -> None:
    source = tree / "dashboards/_common.py"
    source.write_text(source.read_text().replace('"rpcscope-logs"', '"rpcscope-logs-v2"'))
    result = run(tree, "--check")
    assert result.returncode == 1
    assert "dashboards/generated/logs.json" in result.stdout
    assert f"{CHART_FILES}/dashboards/logs.json" in result.stdout
    assert run(tree).returncode == 0
    assert '"uid": "rpcscope-logs-v2"' in (tree / CHART_FILES / "dashboards/logs.json").read_text()


def test_fluentd_config_is_mirrored_with_relative_paths_and_deletions(tree: Path) -> None:
    src = tree / "fluentd-config"
    (src / "conf.d").mkdir(exist_ok=True)
    (src / "conf.d" / "zz-extra.conf").write_text("<match extra.**>\n  @type null\n</match>\n")
    result = run(tree, "--check")
    assert result.returncode == 1
    assert f"missing  {CHART_FILES}/fluentd/conf.d/zz-extra.conf" in result.stdout
    assert run(tree).returncode == 0
    copy = tree / CHART_FILES / "fluentd/conf.d/zz-extra.conf"
    assert copy.read_bytes() == (src / "conf.d" / "zz-extra.conf").read_bytes()

    (src / "conf.d" / "zz-extra.conf").unlink()
    result = run(tree, "--check")
    assert result.returncode == 1
    assert f"stale    {CHART_FILES}/fluentd/conf.d/zz-extra.conf" in result.stdout
    assert run(tree).returncode == 0
    assert not copy.exists()


RULES = "groups:\n- name: g\n  rules:\n  - record: job:x:rate5m\n    expr: rate(x[5m])\n"
PROMTOOL_TEST = "rule_files: [../slo/grpc.yaml]\ntests: []\n"


def test_alert_rule_files_are_copied_flat_and_test_files_are_not(tree: Path) -> None:
    alerts = tree / "alerts"
    (alerts / "slo").mkdir()
    (alerts / "tests").mkdir(exist_ok=True)
    (alerts / "slo" / "grpc.yaml").write_text(RULES)
    (alerts / "stack.yml").write_text(RULES)
    (alerts / "tests" / "grpc_test.yaml").write_text(PROMTOOL_TEST)
    assert run(tree).returncode == 0
    rules = tree / CHART_FILES / "rules"
    names = {p.name for p in rules.iterdir()}
    # Beside alerts/generated/'s files (generated-*.yaml), exactly the two rule files.
    assert {n for n in names if not n.startswith("generated-")} == {"slo-grpc.yaml", "stack.yaml"}
    assert (rules / "slo-grpc.yaml").read_text() == RULES
    assert run(tree, "--check").returncode == 0


def test_rule_files_whose_flat_names_collide_are_refused(tree: Path) -> None:
    alerts = tree / "alerts"
    (alerts / "slo").mkdir()
    (alerts / "slo" / "grpc.yaml").write_text(RULES)
    (alerts / "slo-grpc.yaml").write_text(RULES)
    result = run(tree)
    assert result.returncode != 0
    assert "rename one" in result.stderr


def test_alert_sources_and_hand_edits_of_their_outputs_are_caught(tree: Path) -> None:
    """A changed SLO tier (alerts/slo_names.py) must reach the chart's SLO template, and a hand
    edit of a generated rule file (or of its chart copy) fails the check."""
    names = tree / "alerts" / "slo_names.py"
    names.write_text(names.read_text().replace('"1h", "5m", 14.4,', '"1h", "5m", 13.44,'))
    result = run(tree, "--check")
    assert result.returncode == 1
    assert "changed  charts/rpcscope-stack/templates/generated/_slo_rules.tpl" in result.stdout
    assert "13.44 * (1 - " in result.stdout
    assert run(tree).returncode == 0

    rules = tree / CHART_FILES / "rules" / "generated-fluentd.yaml"
    rules.write_text(rules.read_text().replace("for: 15m", "for: 1m"))
    result = run(tree, "--check")
    assert result.returncode == 1
    assert f"changed  {CHART_FILES}/rules/generated-fluentd.yaml" in result.stdout


def test_provision_copy_follows_the_charts_elasticsearch_bodies(tree: Path) -> None:
    """`rpcscope provision` sends the package's copy: an edit of the chart's body is drift in
    that copy until regenerated, and a hand edit of the copy fails the check."""
    body = tree / CHART_FILES / "elasticsearch/role-rpcscope_monitor.json"
    body.write_text(body.read_text().replace('"read_ilm"', '"read_ilm", "read_slm"'))
    copy = tree / "src/rpcscope/_provision_data/assets.json"
    result = run(tree, "--check")
    assert result.returncode == 1
    assert "changed  src/rpcscope/_provision_data/assets.json" in result.stdout
    assert run(tree).returncode == 0
    assert "read_slm" in copy.read_text()
    copy.write_text(copy.read_text().replace("read_slm", "manage"))
    assert "changed  src/rpcscope/_provision_data/assets.json" in run(tree, "--check").stdout
