"""Kibana's saved objects for the app logs (docker/kibana/app-logs-dashboard.ndjson) against the catalog.

Kibana itself only runs in the compose stack, so these checks stand in for an import: the file
parses, every reference resolves inside it, and every field a visualisation reads exists in the
mapping the catalog gives the `tributary-app-logs-*` indices.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tributary.catalog import APP_LOGS
from tributary.settings import REPO_ROOT

NDJSON = REPO_ROOT / "docker" / "kibana" / "app-logs-dashboard.ndjson"
LOGS = APP_LOGS.indices["logs"]
PANEL_VISUALISATIONS = 5
# A KQL term `field : value`; the queries here only compare keyword fields.
KQL_FIELD = re.compile(r"([A-Za-z_][\w.]*)\s*:")


def load_objects() -> list[dict[str, Any]]:
    lines = [line for line in NDJSON.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


OBJECTS = load_objects()
BY_KEY = {(o["type"], o["id"]): o for o in OBJECTS}
VISUALISATIONS = [o for o in OBJECTS if o["type"] == "visualization"]
[DATA_VIEW] = [o for o in OBJECTS if o["type"] == "index-pattern"]
[DASHBOARD] = [o for o in OBJECTS if o["type"] == "dashboard"]


def mapped_fields() -> dict[str, str]:
    """Field name -> type of the catalog's mapping, multi-fields (`user_agent.raw`) included."""
    fields = {}
    for name, spec in LOGS.mappings["properties"].items():
        fields[name] = spec["type"]
        for sub, sub_spec in (spec.get("fields") or {}).items():
            fields[f"{name}.{sub}"] = sub_spec["type"]
    return fields


def vis_state(obj: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(obj["attributes"]["visState"])
    return state


def used_fields(state: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, where) for every field an aggregation or a KQL filter of the visualisation reads."""
    for agg in state["aggs"]:
        params = agg.get("params") or {}
        if "field" in params:
            yield params["field"], f"agg {agg['id']} ({agg['type']})"
        for flt in params.get("filters") or []:
            for field in KQL_FIELD.findall(flt["input"]["query"]):
                yield field, f"agg {agg['id']} filter {flt['input']['query']!r}"


def test_the_file_has_unique_objects_of_kibana_types() -> None:
    assert len(BY_KEY) == len(OBJECTS) == 1 + PANEL_VISUALISATIONS + 1
    for obj in OBJECTS:
        assert set(obj) >= {"id", "type", "attributes", "references"}, obj["id"]
        assert obj["attributes"]["title"], obj["id"]


def test_every_reference_resolves_to_an_object_in_the_file() -> None:
    for obj in OBJECTS:
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in BY_KEY, f"{obj['type']} {obj['id']}: dangling reference {ref}"


def test_the_data_view_is_the_catalogs_index_pattern_and_time_field() -> None:
    attributes = DATA_VIEW["attributes"]
    assert attributes["title"] == LOGS.pattern == "tributary-app-logs-*"
    assert attributes["timeFieldName"] == "timestamp"
    assert mapped_fields()[attributes["timeFieldName"]] == "date"


@pytest.mark.parametrize("obj", VISUALISATIONS, ids=[o["id"] for o in VISUALISATIONS])
def test_each_visualisation_reads_only_mapped_fields_of_the_data_view(obj: dict[str, Any]) -> None:
    state = vis_state(obj)
    assert state["title"] == obj["attributes"]["title"]
    search_source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
    [index_ref] = [r for r in obj["references"] if r["name"] == search_source["indexRefName"]]
    assert (index_ref["type"], index_ref["id"]) == ("index-pattern", DATA_VIEW["id"])

    mapping = mapped_fields()
    fields = list(used_fields(state))
    assert fields, "a visualisation of the app logs reads at least one field"
    unknown = [(field, where) for field, where in fields if field not in mapping]
    assert not unknown, f"not in the catalog's mapping of {LOGS.pattern}: {unknown}"
    # Terms need an aggregatable field: keyword, numbers, ip (not analysed text).
    for agg in state["aggs"]:
        if agg["type"] == "terms":
            assert mapping[agg["params"]["field"]] != "text", agg
        if agg["type"] == "date_histogram":
            assert agg["params"]["field"] == DATA_VIEW["attributes"]["timeFieldName"], agg


def test_the_visualisations_cover_the_five_views() -> None:
    kinds = {o["id"]: vis_state(o)["type"] for o in VISUALISATIONS}
    assert kinds == {
        "tributary-app-logs-requests": "line",
        "tributary-app-logs-error-rate": "area",
        "tributary-app-logs-top-endpoints": "horizontal_bar",
        "tributary-app-logs-user-agents": "pie",
        "tributary-app-logs-heatmap": "heatmap",
    }
    error_rate = vis_state(BY_KEY[("visualization", "tributary-app-logs-error-rate")])
    assert error_rate["params"]["valueAxes"][0]["scale"]["mode"] == "percentage"  # shares, not counts
    heatmap_fields = [
        a["params"].get("field") for a in vis_state(BY_KEY[("visualization", "tributary-app-logs-heatmap")])["aggs"]
    ]
    assert {"hour_of_day", "weekday"} <= set(heatmap_fields)


def test_the_dashboard_shows_every_visualisation_once() -> None:
    panels = json.loads(DASHBOARD["attributes"]["panelsJSON"])
    assert len(panels) == PANEL_VISUALISATIONS
    refs = {r["name"]: r for r in DASHBOARD["references"]}
    shown = [refs[panel["panelRefName"]] for panel in panels]  # a KeyError is a dangling panel
    assert sorted(r["id"] for r in shown) == sorted(o["id"] for o in VISUALISATIONS)
    assert {r["type"] for r in shown} == {"visualization"}
    assert len({panel["panelIndex"] for panel in panels}) == PANEL_VISUALISATIONS
    for panel in panels:
        grid = panel["gridData"]
        assert grid["i"] == panel["panelIndex"] and 0 <= grid["x"] <= grid["x"] + grid["w"] <= 48, panel  # 48 columns
    attributes = DASHBOARD["attributes"]
    assert (attributes["timeRestore"], attributes["timeFrom"], attributes["timeTo"]) == (True, "now-1h", "now")
