#!/usr/bin/env python3
"""Write every generated artifact of rpcscope, or check that the committed ones are current.

    python tools/generate.py           # (re)write all generated files
    python tools/generate.py --check   # exit 1 and show what differs if any is stale

Generated files are outputs, never edited by hand: CI runs ``--check`` so a source change that
was not regenerated (or a hand edit of an output) fails the build, as kube-prometheus-stack's
``hack/sync_*`` scripts do for its rules and dashboards.

Design: the tool owns a set of *output directories* outright. Each generator is one function
that receives a :class:`Tree` (read access to sources) and returns one :class:`Output`: a
directory and the exact set of files it must contain. Writing makes the directory match
(creating, updating, deleting stale files); checking reports any difference. Generators run in
order and a later one reads an earlier one's planned output through the tree, so the chart
copies are compared against what *should* be generated, not against possibly stale files.

To add a generator (say alert rules built from Python into ``alerts/generated/``), write one
``def alert_rules(tree: Tree) -> Output`` and put it in :data:`GENERATORS` before
:func:`chart_rules`, which then mirrors its files into the chart like hand-written rules.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder

ROOT = Path(__file__).resolve().parent.parent

DASHBOARDS_DIR = "dashboards"
GRAFANA_OUT = "dashboards/generated"
KIBANA_OUT = "dashboards/kibana"
CHART_FILES = "charts/rpcscope-stack/files"
FLUENTD_SRC = "fluentd-config"
ALERTS_SRC = "alerts"

#: Never mirrored: interpreter caches are not configuration.
IGNORED_PARTS = frozenset({"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"})
IGNORED_SUFFIXES = frozenset({".pyc", ".pyo"})


@dataclass(frozen=True)
class Output:
    """A directory this tool owns outright, and the files (relative path -> bytes) it holds."""

    directory: str
    files: Mapping[str, bytes]


@dataclass
class Tree:
    """Source files on disk, overlaid with the outputs planned so far in this run."""

    root: Path
    planned: list[Output] = field(default_factory=list)

    def _planned_dirs(self) -> list[PurePosixPath]:
        return [PurePosixPath(out.directory) for out in self.planned]

    def files(self, directory: str) -> dict[str, bytes]:
        """Every file under ``directory`` (relative path -> content), recursively."""
        base = PurePosixPath(directory)
        found: dict[str, bytes] = {}
        disk = self.root / directory
        if disk.is_dir():
            for path in sorted(disk.rglob("*")):
                rel = PurePosixPath(path.relative_to(self.root).as_posix())
                if not path.is_file() or _ignored(rel):
                    continue
                if any(_is_within(rel, d) for d in self._planned_dirs()):
                    continue  # replaced by the planned content below
                found[rel.relative_to(base).as_posix()] = path.read_bytes()
        for out in self.planned:
            out_dir = PurePosixPath(out.directory)
            for name, content in out.files.items():
                full = out_dir / name
                if _is_within(full, base):
                    found[full.relative_to(base).as_posix()] = content
        return dict(sorted(found.items()))


def _is_within(path: PurePosixPath, directory: PurePosixPath) -> bool:
    return path == directory or directory in path.parents


def _ignored(rel: PurePosixPath) -> bool:
    return bool(IGNORED_PARTS.intersection(rel.parts)) or rel.suffix in IGNORED_SUFFIXES


# --- generators -----------------------------------------------------------------------------


def _source_modules(attribute: str) -> Iterator[tuple[str, ModuleType]]:
    """Modules ``dashboards/<name>.py`` (not ``_private``) that define ``attribute``."""
    for path in sorted((ROOT / DASHBOARDS_DIR).glob("*.py")):
        if path.stem.startswith("_"):
            continue
        module = importlib.import_module(f"{DASHBOARDS_DIR}.{path.stem}")
        if hasattr(module, attribute):
            yield path.stem, module


def grafana_dashboards(tree: Tree) -> Output:
    """``dashboards/<name>.py:build_dashboard()`` -> ``dashboards/generated/<name>.json``."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    files = {
        f"{name}.json": (encoder.encode(module.build_dashboard()) + "\n").encode()
        for name, module in _source_modules("build_dashboard")
    }
    return Output(GRAFANA_OUT, files)


def kibana_saved_objects(tree: Tree) -> Output:
    """``dashboards/<name>.py:build_saved_objects()`` -> ``dashboards/kibana/<name>.ndjson``."""
    files = {}
    for name, module in _source_modules("build_saved_objects"):
        objects: list[dict[str, Any]] = module.build_saved_objects()
        lines = [json.dumps(obj, sort_keys=True, separators=(",", ":")) for obj in objects]
        files[f"{name}.ndjson"] = ("\n".join(lines) + "\n").encode()
    return Output(KIBANA_OUT, files)


def _mirror(tree: Tree, source: str, target: str, keep: Callable[[str], bool]) -> Output:
    return Output(target, {rel: data for rel, data in tree.files(source).items() if keep(rel)})


def chart_dashboards(tree: Tree) -> Output:
    return _mirror(
        tree, GRAFANA_OUT, f"{CHART_FILES}/dashboards", lambda rel: rel.endswith(".json")
    )


def chart_kibana(tree: Tree) -> Output:
    return _mirror(tree, KIBANA_OUT, f"{CHART_FILES}/kibana", lambda rel: rel.endswith(".ndjson"))


def chart_fluentd(tree: Tree) -> Output:
    """Every file of ``fluentd-config/``, same relative paths: one source of truth for both."""
    return _mirror(tree, FLUENTD_SRC, f"{CHART_FILES}/fluentd", lambda rel: True)


def _is_rule_file(rel: str, content: bytes) -> bool:
    """A Prometheus rule file has top-level ``groups``; promtool unit tests beside the rules
    (``rule_files:``/``tests:``) and other YAML are not copied into the chart."""
    if PurePosixPath(rel).suffix not in {".yaml", ".yml"}:
        return False
    try:
        document = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise SystemExit(f"{ALERTS_SRC}/{rel}: not valid YAML: {exc}") from exc
    return isinstance(document, dict) and "groups" in document


ALERTS_OUT = "alerts/generated"
CHART_GENERATED_TEMPLATES = "charts/rpcscope-stack/templates/generated"


def alert_rules(tree: Tree) -> Output:
    """``alerts/stack.py:build_rules()`` -> ``alerts/generated/<file>.yaml`` (the fixed alerts)."""
    module = importlib.import_module("alerts.stack")
    header = f"# {_marker('alerts/stack.py')}\n"
    files = {
        f"{name}.yaml": (header + yaml.safe_dump(doc, sort_keys=False, width=100)).encode()
        for name, doc in module.build_rules().items()
    }
    return Output(ALERTS_OUT, files)


def chart_slo_template(tree: Tree) -> Output:
    """``alerts/slo.py:build_template()`` -> the chart's ``templates/generated/_slo_rules.tpl``:
    the rules of one SLO, rendered by Helm once per ``alerting.slos`` entry."""
    module = importlib.import_module("alerts.slo")
    return Output(CHART_GENERATED_TEMPLATES, {"_slo_rules.tpl": module.build_template().encode()})


def _marker(source: str) -> str:
    common = importlib.import_module(f"{DASHBOARDS_DIR}._common")
    return str(common.generated_marker(source))


def chart_rules(tree: Tree) -> Output:
    """Rule files under ``alerts/`` -> ``files/rules/``, flattened (``slo/grpc.yml`` ->
    ``slo-grpc.yaml``): ConfigMap keys cannot hold ``/``, and the chart loads one glob,
    ``files/rules/*.yaml``."""
    files: dict[str, bytes] = {}
    origin: dict[str, str] = {}
    for rel, content in tree.files(ALERTS_SRC).items():
        if not _is_rule_file(rel, content):
            continue
        flat = "-".join(PurePosixPath(rel).with_suffix(".yaml").parts)
        if flat in files:
            raise SystemExit(
                f"{ALERTS_SRC}/{rel} and {ALERTS_SRC}/{origin[flat]} both map to "
                f"{CHART_FILES}/rules/{flat}; rename one"
            )
        files[flat], origin[flat] = content, rel
    return Output(f"{CHART_FILES}/rules", files)


PROVISION_OUT = "src/rpcscope/_provision_data"
CHART_ES_FILES = f"{CHART_FILES}/elasticsearch"


def provision_data(tree: Tree) -> Output:
    """The chart's ``files/elasticsearch/*.json`` and ``files/kibana/*.ndjson`` ->
    ``src/rpcscope/_provision_data/assets.json``: what ``rpcscope provision`` sends, as package
    data (an installed wheel has no chart), with a ``generated_by`` key as its marker."""
    bundle: dict[str, Any] = {
        "generated_by": f"Generated by tools/generate.py from {CHART_ES_FILES}/ and "
                        f"{CHART_FILES}/kibana/; do not edit.",
        "elasticsearch": {},
        "kibana": {},
    }
    for rel, content in tree.files(CHART_ES_FILES).items():
        if rel.endswith(".json"):
            bundle["elasticsearch"][rel] = json.loads(content)
    for rel, content in tree.files(f"{CHART_FILES}/kibana").items():
        if rel.endswith(".ndjson"):
            bundle["kibana"][rel] = [json.loads(line) for line in content.splitlines() if line]
    text = json.dumps(bundle, indent=1, ensure_ascii=False) + "\n"
    return Output(PROVISION_OUT, {"assets.json": text.encode()})


DEMO_OUT = "src/rpcscope/_demo"
DEMO_VALUES = "examples/demo-values.yaml"
CHART_DIR = "charts/rpcscope-stack"


def demo_stack(tree: Tree) -> Output:
    """The chart rendered with ``examples/demo-values.yaml`` -> ``src/rpcscope/_demo/``: the
    Prometheus rules, Prometheus' global settings and the Alertmanager configuration that
    ``rpcscope demo`` runs a real Prometheus and Alertmanager on (package data, so an installed
    rpcscope has them without Helm). Rendered from the chart as planned in this run."""
    import tempfile

    import helm_python  # the Helm SDK in a wheel; only this generator needs it

    header = (f"# Generated by tools/generate.py from {CHART_DIR} with {DEMO_VALUES}; "
              "do not edit.\n").encode()
    values = yaml.safe_load((tree.root / DEMO_VALUES).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "rpcscope-stack"
        for rel, content in tree.files(CHART_DIR).items():
            path = chart / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        loaded = helm_python.Chart.load(str(chart))
        loaded.validate_schema(values)
        rendered = loaded.render(values, name="rpcscope", namespace="rpcscope-demo",
                                 is_install=True, is_upgrade=False)
    configmaps: dict[str, dict[str, str]] = {}
    for template, text in rendered.items():
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                configmaps[doc["metadata"]["name"]] = doc.get("data") or {}

    def data(suffix: str, key: str | None = None) -> dict[str, str]:
        found = [d for name, d in configmaps.items() if name.endswith(suffix)
                 and (key is None or key in d)]
        if len(found) != 1:
            raise SystemExit(f"demo_stack: expected one ConfigMap *{suffix}, found {len(found)}")
        return found[0]

    files: dict[str, bytes] = {}
    for name, text in data("-prometheus-rules").items():
        files[f"rules/{name}"] = header + text.encode()
    prometheus = yaml.safe_load(data("-prometheus", "prometheus.yml")["prometheus.yml"])
    files["prometheus-global.yml"] = header + yaml.safe_dump(
        {"global": prometheus["global"]}, sort_keys=False).encode()
    files["alertmanager.yml"] = header + data(
        "-alertmanager", "alertmanager.yml")["alertmanager.yml"].encode()
    return Output(DEMO_OUT, files)


#: Run in this order; a generator may read any earlier one's output through the tree.
GENERATORS: tuple[Callable[[Tree], Output], ...] = (
    grafana_dashboards,
    kibana_saved_objects,
    chart_dashboards,
    chart_kibana,
    provision_data,
    chart_fluentd,
    alert_rules,
    chart_slo_template,
    chart_rules,
    demo_stack,
)


# --- plan, check, write ---------------------------------------------------------------------


def plan(root: Path = ROOT) -> list[Output]:
    tree = Tree(root)
    for generator in GENERATORS:
        tree.planned.append(generator(tree))
    return tree.planned


@dataclass(frozen=True)
class Difference:
    kind: str  # "missing" | "changed" | "stale"
    path: str
    detail: str = ""


def differences(outputs: list[Output], root: Path = ROOT) -> list[Difference]:
    found: list[Difference] = []
    for out in outputs:
        directory = root / out.directory
        present = {
            p.relative_to(directory).as_posix(): p
            for p in (directory.rglob("*") if directory.is_dir() else [])
            if p.is_file()
        }
        for name, content in sorted(out.files.items()):
            rel = f"{out.directory}/{name}"
            if name not in present:
                found.append(Difference("missing", rel))
            elif (current := present[name].read_bytes()) != content:
                found.append(Difference("changed", rel, _diff(rel, current, content)))
        for name in sorted(set(present) - set(out.files)):
            found.append(Difference("stale", f"{out.directory}/{name}"))
    return found


def _diff(rel: str, current: bytes, wanted: bytes, limit: int = 30) -> str:
    try:
        lines = list(
            difflib.unified_diff(
                current.decode().splitlines(),
                wanted.decode().splitlines(),
                f"{rel} (on disk)",
                f"{rel} (generated)",
                lineterm="",
                n=1,
            )
        )
    except UnicodeDecodeError:
        return "    (binary content differs)"
    more = f"\n    ... {len(lines) - limit} more diff lines" if len(lines) > limit else ""
    return "\n".join("    " + line for line in lines[:limit]) + more


def write(outputs: list[Output], root: Path = ROOT) -> list[Difference]:
    changes = differences(outputs, root)
    for change in changes:
        path = root / change.path
        if change.kind == "stale":
            path.unlink()
            continue
        out = next(o for o in outputs if change.path.startswith(o.directory + "/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(out.files[change.path[len(out.directory) + 1 :]])
    for out in outputs:  # directories emptied by deletions
        directory = root / out.directory
        if directory.is_dir():
            for sub in sorted(directory.rglob("*"), reverse=True):
                if sub.is_dir() and not any(sub.iterdir()):
                    sub.rmdir()
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any output is stale"
    )
    args = parser.parse_args(argv)
    # Import the sources of *this* checkout (also a temporary copy of it), not an installed one.
    for path in (ROOT / "src", ROOT):
        sys.path.insert(0, str(path))
    outputs = plan()
    if args.check:
        stale = differences(outputs)
        if not stale:
            print(f"generated files are up to date ({sum(len(o.files) for o in outputs)} files)")
            return 0
        print(f"{len(stale)} generated file(s) out of date; run: python tools/generate.py")
        for d in stale:
            print(f"  {d.kind:8} {d.path}")
            if d.detail:
                print(d.detail)
        return 1
    verbs = {"missing": "created", "changed": "updated", "stale": "deleted"}
    for d in write(outputs):
        print(f"  {verbs[d.kind]:8} {d.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
