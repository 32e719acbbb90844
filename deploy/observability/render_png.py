"""Draw the dashboard's main panels from a real Prometheus into one PNG (Grafana itself does not run here).

    python -m deploy.observability.render_png --prometheus http://127.0.0.1:9090 --minutes 15 --out dashboard.png

The queries are the dashboard's own (read from the generated JSON, every variable set to All), so the picture
shows what the dashboard shows. Needs matplotlib (a dev dependency), not part of the sidecar.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MAIN_PANELS = (
    "Engine up by pod",
    "Finished requests by reason",
    "Token throughput",
    "Time to first token",
    "Inter-token latency",
    "End-to-end latency",
    "Time to first token heatmap ($engine)",
    "TTFT SLO attainment (≤ $ttft_slo s)",
    "Running and waiting requests",
    "KV cache usage",
    "Prefix cache hit ratio",
    "Scrape errors by reason",
    "LoRA adapters by state",
    "Download throughput",
    "Sidecar memory",
)
COLUMNS = 3


@dataclass
class Series:
    legend: str
    times: list[float]
    values: list[float]


def all_selected(expr: str, rate_interval: str, engine: str, ttft_slo: str) -> str:
    values = {
        "$__rate_interval": rate_interval,
        "$job": ".+",
        "$namespace": ".*",
        "$pod": ".*",
        "$model_name": ".*",
        "$engine": engine,
        "$ttft_slo": ttft_slo,
    }
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


def legend(template: str, labels: dict[str, str]) -> str:
    text = template if template != "__auto" else " ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    while "{{" in text and "}}" in text:  # labels the series does not have
        text = text[: text.index("{{")] + text[text.index("}}") + 2 :]
    return " ".join(text.split()) or "value"


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def panel_series(prometheus: str, panel: dict[str, Any], window: tuple[float, float, float], args: Any) -> list[Series]:
    found = []
    for target in panel["targets"]:
        expr = all_selected(target["expr"], args.rate_interval, args.engine, args.ttft_slo)
        for item in query_range(prometheus, expr, *window):
            points = [(float(t), float(v)) for t, v in item["values"]]
            found.append(
                Series(
                    legend(target.get("legendFormat", ""), item["metric"]),
                    [p[0] for p in points],
                    [p[1] for p in points],
                )
            )
    return found


def draw(panels: list[tuple[dict[str, Any], list[Series]]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from datetime import datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = (len(panels) + COLUMNS - 1) // COLUMNS
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(6.2 * COLUMNS, 3.1 * rows), squeeze=False)
    for index, (panel, series) in enumerate(panels):
        ax = axes[index // COLUMNS][index % COLUMNS]
        ax.set_title(panel["title"].replace("$engine", "vllm").replace("$ttft_slo", "1.0"), fontsize=10, loc="left")
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        if panel["type"] == "heatmap":
            _heatmap(ax, series)
        else:
            for item in series[:8]:
                ax.plot([datetime.fromtimestamp(t) for t in item.times], item.values, label=item.legend, linewidth=1.2)
            if series:
                ax.legend(fontsize=6.5, loc="upper left", frameon=False)
        ax.set_ylabel(
            {"percentunit": "fraction", "s": "seconds", "Bps": "bytes/s", "reqps": "req/s"}.get(unit, unit), fontsize=8
        )
        defaults = panel["fieldConfig"]["defaults"]
        if panel["type"] == "state-timeline":
            ax.set_ylim(-0.05, 1.1)
        elif "max" in defaults:
            ax.set_ylim(defaults.get("min", 0), defaults["max"] * 1.05)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
    for index in range(len(panels), rows * COLUMNS):
        axes[index // COLUMNS][index % COLUMNS].axis("off")
    figure.suptitle(title, fontsize=12, x=0.01, ha="left")
    figure.tight_layout()
    figure.savefig(out, dpi=80)
    plt.close(figure)


def _heatmap(ax: Any, series: list[Series]) -> None:
    """Cumulative `le` rates -> requests/s per bucket over time, one row per bucket (as Grafana's heatmap)."""
    from datetime import datetime

    import matplotlib.dates as mdates

    if not series:
        return
    ordered = sorted(series, key=lambda s: float("inf") if s.legend == "+Inf" else float(s.legend))
    times = ordered[0].times
    by_bucket = []
    previous = [0.0] * len(times)
    for item in ordered:
        values = dict(zip(item.times, item.values, strict=True))
        current = [values.get(t, 0.0) for t in times]
        by_bucket.append([max(c - p, 0.0) for c, p in zip(current, previous, strict=True)])
        previous = current
    used = [i for i, row in enumerate(by_bucket) if any(row)] or [0]
    low, high = max(min(used) - 1, 0), min(max(used) + 2, len(ordered))
    start, end = (mdates.date2num(datetime.fromtimestamp(t)) for t in (times[0], times[-1]))  # type: ignore[no-untyped-call]
    ax.imshow(
        by_bucket[low:high],
        aspect="auto",
        origin="lower",
        cmap="Oranges",
        interpolation="nearest",
        extent=(start, end, -0.5, high - low - 0.5),
    )
    ax.set_yticks(range(high - low), [f"≤{s.legend}" for s in ordered[low:high]])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True, help="base URL of the Prometheus to read")
    parser.add_argument("--dashboard", type=Path, default=HERE / "dashboard.json")
    parser.add_argument("--out", type=Path, default=HERE / "dashboard.png")
    parser.add_argument("--minutes", type=float, default=15.0, help="time range ending now (default 15)")
    parser.add_argument("--end", type=float, default=None, help="end of the range, Unix seconds (default now)")
    parser.add_argument("--rate-interval", default="30s", help="what $__rate_interval stands for (default 30s)")
    parser.add_argument("--engine", default="vllm", help="engine shown by the heatmap (default vllm)")
    parser.add_argument("--ttft-slo", default="1.0", help="TTFT SLO bound, a bucket bound (default 1.0)")
    return parser.parse_args(argv)


def render(args: argparse.Namespace) -> dict[str, int]:
    """Draw the PNG; returns the number of series each main panel got."""
    board = json.loads(args.dashboard.read_text(encoding="utf-8"))
    by_title = {panel["title"]: panel for panel in board["panels"] if panel["type"] != "row"}
    end = args.end if args.end is not None else time.time()
    start = end - args.minutes * 60
    window = (start, end, max((end - start) / 300, 1.0))
    drawn = [(by_title[title], panel_series(args.prometheus, by_title[title], window, args)) for title in MAIN_PANELS]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(end))
    draw(drawn, args.out, f"{board['title']} — real vLLM 0.32 (CPU) behind airuntime, {args.minutes:g} min to {when}")
    return {panel["title"]: len(series) for panel, series in drawn}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        counts = render(args)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        print(f"render_png: error: {exc}", file=sys.stderr)
        return 1
    empty = [title for title, count in counts.items() if count == 0]
    print(f"wrote {args.out} ({len(counts)} panels{'; empty: ' + ', '.join(empty) if empty else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
