"""Grafana JSON pieces: panels of each kind, rows, a flowing grid layout, and the template variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """One panel: `kind` is a Grafana panel type; width and height in grid units."""

    kind: str
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    field_defaults: dict[str, Any] = field(default_factory=dict)
    instant: bool = False
    heatmap: bool = False
    table: bool = False


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def timeseries(title: str, description: str, unit: str, *queries: Query, stack: bool = False, **extra: Any) -> Panel:
    custom: dict[str, Any] = {"fillOpacity": 10, "showPoints": "never", "spanNulls": False}
    if stack:
        custom |= {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 40}
    defaults = {"custom": custom, **extra.pop("defaults", {})}
    options = {
        "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return Panel("timeseries", title, description, unit, queries, options=options, field_defaults=defaults, **extra)


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for color, value in steps]}


def stat(title: str, description: str, unit: str, query: Query, steps: dict[str, Any], width: int = 6) -> Panel:
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "background",
        "graphMode": "area",
        "textMode": "auto",
    }
    return Panel("stat", title, description, unit, (query,), width, 4, options, {"thresholds": steps})


def state_timeline(title: str, description: str, query: Query, width: int = 12) -> Panel:
    mappings = [
        {"type": "value", "options": {"0": {"text": "Down", "color": "red"}, "1": {"text": "Up", "color": "green"}}}
    ]
    defaults = {"mappings": mappings, "thresholds": thresholds(("red", None), ("green", 1))}
    options = {"showValue": "never", "mergeValues": True, "legend": {"showLegend": False}}
    return Panel("state-timeline", title, description, "none", (query,), width, 8, options, defaults)


def table(title: str, description: str, query: Query, width: int = 12) -> Panel:
    options = {"showHeader": True, "cellHeight": "sm"}
    return Panel("table", title, description, "none", (query,), width, 8, options, {}, instant=True, table=True)


def heatmap(title: str, description: str, unit: str, query: Query, width: int = 12) -> Panel:
    options = {
        "calculate": False,
        "yAxis": {"unit": unit, "axisPlacement": "left"},
        "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
        "cellGap": 1,
        "rowsFrame": {"layout": "auto"},
        "tooltip": {"mode": "single", "yHistogram": True},
        "legend": {"show": True},
    }
    return Panel("heatmap", title, description, "reqps", (query,), width, 8, options, {}, heatmap=True)


def _target(query: Query, ref: str, panel: Panel) -> dict[str, Any]:
    target: dict[str, Any] = {
        "datasource": DATASOURCE,
        "expr": query.expr,
        "legendFormat": query.legend or "__auto",
        "refId": ref,
        "range": not panel.instant,
        "instant": panel.instant,
    }
    if panel.heatmap:
        target["format"] = "heatmap"
        target["legendFormat"] = "{{le}}"
    if panel.table:
        target["format"] = "table"
    return target


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults = {"unit": panel.unit, **panel.field_defaults}
    result: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": panel.options,
        "targets": [_target(q, chr(ord("A") + i), panel) for i, q in enumerate(panel.queries)],
    }
    if panel.table:
        result["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}},
        ]
    return result


def layout(rows: tuple[Row, ...]) -> list[dict[str, Any]]:
    """Rows one under the other; panels of a row fill it left to right and wrap at the grid's width."""
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row in rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append(panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return panels


def datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def query_variable(
    name: str,
    label: str,
    definition: str,
    *,
    multi: bool = True,
    all_value: str | None = ".*",
    regex: str = "",
    sort: int = 1,
    current: str | None = None,
) -> dict[str, Any]:
    """A Prometheus query variable, refreshed on every time-range change; multi-select with All by default."""
    if current is not None:
        selected: dict[str, Any] = {"selected": True, "text": current, "value": current}
    elif multi:
        selected = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        selected = {}
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": definition,
        "query": {"query": definition, "refId": f"{name}-variable"},
        "refresh": 2,
        "regex": regex,
        "sort": sort,
        "multi": multi,
        "includeAll": multi,
        "allValue": all_value if multi else None,
        "current": selected,
        "options": [],
        "hide": 0,
    }
