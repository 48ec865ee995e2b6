"""Kibana saved objects for rpcscope's logs: a data view, an errors search, a dashboard.

Written as a Kibana 8.x saved-objects export (NDJSON, one object per line) so the chart can
import it with ``POST /api/saved_objects/_import?overwrite=true``. Format notes, from Kibana's
import/export documentation and its dashboard reference handling:

- ``coreMigrationVersion`` / ``typeMigrationVersion`` say which format the object is in; Kibana
  runs every migration newer than that on import. We write the 8.0.0 format of each type and
  declare it, so any Kibana >= 8.8 (the first to read ``typeMigrationVersion``) upgrades it.
- References replace embedded ids: a search names its data view through
  ``indexRefName``; a dashboard panel names its saved object through ``panelRefName`` and a
  reference called ``<panelIndex>:<panelRefName>``.
- Ids are fixed strings, so re-importing overwrites instead of duplicating.

The visualization is an aggregation-based ("legacy") bar chart rather than Lens: its
``visState`` is a small documented structure whose omitted ``params`` Kibana fills from the
visualization type's defaults, where Lens state is large and undocumented.
"""

from __future__ import annotations

import json
from typing import Any, Final

from dashboards import _common as c
from rpcscope import schema

SOURCE = "dashboards/kibana_logs.py"

CORE_MIGRATION_VERSION: Final = "8.8.0"
TYPE_MIGRATION_VERSION: Final = "8.0.0"

DATA_VIEW_ID: Final = "rpcscope-logs"
ERRORS_SEARCH_ID: Final = "rpcscope-errors"
ERRORS_BY_CODE_VIS_ID: Final = "rpcscope-errors-by-status-code"
DASHBOARD_ID: Final = "rpcscope-logs-overview"

LEVEL_FIELD: Final = "log.level"
STATUS_CODE_FIELD: Final = "rpc.grpc.status_code"
#: Columns of the errors search, all from the access-log record (rpcscope.schema).
ERROR_COLUMNS: Final = (
    "service.name",
    "rpc.service",
    "rpc.method",
    "grpc.code",
    "log.level",
    "message",
    "trace.id",
)
#: An error is a record logged at error level or above, or an RPC that did not end OK (code 0).
ERRORS_KQL: Final = (
    f"{LEVEL_FIELD} : (error or critical or fatal) "
    f"or ({STATUS_CODE_FIELD} : * and not {STATUS_CODE_FIELD} : 0)"
)
INDEX_REF: Final = "kibanaSavedObjectMeta.searchSourceJSON.index"


def _compact(value: object) -> str:
    """Kibana stores nested state (searchSourceJSON, visState, panelsJSON) as JSON strings."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _object(
    type_: str, id_: str, attributes: dict[str, Any], references: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "type": type_,
        "id": id_,
        "attributes": attributes,
        "references": references,
        "managed": False,
        "coreMigrationVersion": CORE_MIGRATION_VERSION,
        "typeMigrationVersion": TYPE_MIGRATION_VERSION,
    }


def _search_source(query: str) -> dict[str, Any]:
    return {
        "kibanaSavedObjectMeta": {
            "searchSourceJSON": _compact(
                {
                    "query": {"query": query, "language": "kuery"},
                    "filter": [],
                    "indexRefName": INDEX_REF,
                }
            )
        }
    }


def _data_view_ref() -> list[dict[str, str]]:
    return [{"name": INDEX_REF, "type": "index-pattern", "id": DATA_VIEW_ID}]


def data_view() -> dict[str, Any]:
    return _object(
        "index-pattern",
        DATA_VIEW_ID,
        {
            "title": c.LOGS_INDEX_PATTERN,
            "name": "rpcscope logs",
            "timeFieldName": c.LOGS_TIME_FIELD,
        },
        [],
    )


def errors_search() -> dict[str, Any]:
    return _object(
        "search",
        ERRORS_SEARCH_ID,
        {
            "title": "rpcscope errors",
            "description": (
                "Records at error level or of RPCs that did not end OK. "
                + c.generated_marker(SOURCE)
            ),
            "columns": list(ERROR_COLUMNS),
            "sort": [[c.LOGS_TIME_FIELD, "desc"]],
            "grid": {},
            "hideChart": False,
            "isTextBasedQuery": False,
            "timeRestore": False,
            **_search_source(ERRORS_KQL),
        },
        _data_view_ref(),
    )


def errors_by_code() -> dict[str, Any]:
    title = "rpcscope errors by gRPC status code"
    vis_state = {
        "title": title,
        "type": "histogram",
        "aggs": [
            {"id": "1", "enabled": True, "type": "count", "params": {}, "schema": "metric"},
            {
                "id": "2",
                "enabled": True,
                "type": "date_histogram",
                "params": {
                    "field": c.LOGS_TIME_FIELD,
                    "interval": "auto",
                    "min_doc_count": 1,
                    "extended_bounds": {},
                },
                "schema": "segment",
            },
            {
                "id": "3",
                "enabled": True,
                "type": "terms",
                "params": {
                    "field": STATUS_CODE_FIELD,
                    "size": len(schema.CODES),
                    "order": "desc",
                    "orderBy": "1",
                    "otherBucket": False,
                    "missingBucket": False,
                },
                "schema": "group",
            },
        ],
        "params": {"type": "histogram", "addTooltip": True, "addLegend": True},
    }
    return _object(
        "visualization",
        ERRORS_BY_CODE_VIS_ID,
        {
            "title": title,
            "description": c.generated_marker(SOURCE),
            "uiStateJSON": "{}",
            "version": 1,
            "visState": _compact(vis_state),
            **_search_source(f"{STATUS_CODE_FIELD} : * and not {STATUS_CODE_FIELD} : 0"),
        },
        _data_view_ref(),
    )


def dashboard(panels: list[tuple[dict[str, Any], int]]) -> dict[str, Any]:
    """A dashboard showing each ``(saved object, height)`` full width, top to bottom."""
    panels_json = []
    references = []
    y = 0
    for index, (obj, height) in enumerate(panels, start=1):
        panel_index = str(index)
        ref_name = f"panel_{panel_index}"
        panels_json.append(
            {
                "version": TYPE_MIGRATION_VERSION,
                "type": obj["type"],
                "gridData": {"x": 0, "y": y, "w": 48, "h": height, "i": panel_index},
                "panelIndex": panel_index,
                "embeddableConfig": {"enhancements": {}},
                "panelRefName": ref_name,
            }
        )
        references.append(
            {"name": f"{panel_index}:{ref_name}", "type": obj["type"], "id": obj["id"]}
        )
        y += height
    return _object(
        "dashboard",
        DASHBOARD_ID,
        {
            "title": "rpcscope logs",
            "description": "gRPC errors across services. " + c.generated_marker(SOURCE),
            "panelsJSON": _compact(panels_json),
            "optionsJSON": _compact(
                {"useMargins": True, "syncColors": False, "hidePanelTitles": False}
            ),
            "timeRestore": False,
            "version": 1,
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": _compact(
                    {"query": {"query": "", "language": "kuery"}, "filter": []}
                )
            },
        },
        references,
    )


def build_saved_objects() -> list[dict[str, Any]]:
    """Referenced objects first, so a line-by-line reader never meets a dangling reference."""
    search = errors_search()
    vis = errors_by_code()
    return [data_view(), search, vis, dashboard([(vis, 15), (search, 20)])]
