"""Every value is documented, the README table matches values.yaml, and the strict schema
covers every value (so a documented value can never be refused, nor a typo accepted)."""

from __future__ import annotations

import json
from typing import Any

import yaml
from chart_render import CHART_DIR
from values_doc import README, generated_readme, parse

VALUES_TEXT = (CHART_DIR / "values.yaml").read_text()


def test_every_value_has_a_doc_comment() -> None:
    documented, undocumented = parse(VALUES_TEXT)
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
    assert len(documented) > 50


def test_parser_notices_a_missing_comment() -> None:
    broken = VALUES_TEXT.replace(
        "  # -- How long to keep samples (`--storage.tsdb.retention.time`).\n", ""
    )
    assert broken != VALUES_TEXT
    assert parse(broken)[1] == ["prometheus.retention"]


def test_readme_values_table_is_current() -> None:
    readme = README.read_text()
    assert readme == generated_readme(readme, VALUES_TEXT), (
        "README values table is stale: run `python tests/chart/values_doc.py --write`"
    )


def _schema_node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node = schema
    for key in path:
        props = node.get("properties", {})
        if key not in props:
            return None
        node = props[key]
    return node


def test_schema_declares_every_value_and_forbids_unknown_keys() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    documented, _ = parse(VALUES_TEXT)
    missing = [v.name for v in documented if _schema_node(schema, v.path) is None]
    assert not missing, f"values not in values.schema.json: {missing}"

    def walk(node: dict[str, Any], where: str) -> list[str]:
        loose = []
        if node.get("type") == "object" and "properties" in node:
            if node.get("additionalProperties") is not False:
                loose.append(where or "<root>")
            for key, sub in node["properties"].items():
                loose += walk(sub, f"{where}.{key}" if where else key)
        return loose

    assert walk(schema, "") == []


def test_defaults_in_readme_are_the_real_defaults() -> None:
    values = yaml.safe_load(VALUES_TEXT)
    for v in parse(VALUES_TEXT)[0]:
        node: Any = values
        for key in v.path:
            node = node[key]
        assert node == v.default, v.name
