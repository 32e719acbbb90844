"""Load, end to end: `bench/load.py` for 20 s (200 scrapers, 4 downloads in flight, LoRA churn, /health probes)
against the sidecar it starts (`python -m runtime`, or `AIRUNTIME_BIN`), then its JSON report is checked: no
error in any class, every class exercised, RSS growth within the bound, LoRA loads idempotent, scrapes coalesced.

About 40 s on 2 cores; it needs no external peer (the engine stand-in and the file server are started by the bench).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOAD = REPO_ROOT / "bench" / "load.py"
DURATION_S = 20
MAX_RSS_GROWTH_MIB = 64

pytestmark = pytest.mark.e2e


def run_load(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    output = tmp_path / "load.json"
    command = [sys.executable, str(LOAD), "--duration", str(DURATION_S), "--settle", "3"]
    command += ["--max-rss-growth-mib", str(MAX_RSS_GROWTH_MIB), "--work-dir", str(tmp_path), "--output", str(output)]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the bench stops its peers, sidecar and scrapers before it exits
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate(timeout=10)
        pytest.fail(f"bench/load.py did not finish within 180 s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    done = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    assert output.is_file(), f"no report written (exit {proc.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return done, json.loads(output.read_text())


def test_load_no_errors_bounded_memory(tmp_path: Path) -> None:
    done, report = run_load(tmp_path)
    assert done.returncode == 0, (
        f"exit {done.returncode}: {report.get('problems')}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    assert report["passed"] is True and report["problems"] == []
    assert report["meta"]["airuntime_bin"] == os.environ.get("AIRUNTIME_BIN")

    classes = report["classes"]
    minimum_ok = {"scrape": 1000, "health": DURATION_S * 5, "download": 4, "lora": 30}
    for name, minimum in minimum_ok.items():
        summary = classes[name]
        assert summary["errors"] == 0, f"{name}: {summary['errors_by_kind']}"
        assert summary["ok"] >= minimum, f"{name}: only {summary['ok']} succeeded (expected >= {minimum})"
        assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert classes["scrape"]["checked_bodies"] > 0
    assert classes["download"]["mib_verified"] > 0
    assert set(classes["lora"]["ops"]) == {"load", "list", "unload"}

    sidecar = report["sidecar"]
    assert sidecar["rss_growth_mib"] <= MAX_RSS_GROWTH_MIB, sidecar
    assert sidecar["rss_before_mib"] <= sidecar["rss_peak_mib"]
    assert sidecar["cpu_s"] > 0
    assert not any("error" in key or "failures" in key for key in sidecar["own_metrics_delta"]), sidecar

    engine = report["engine"]
    # concurrent identical loads reach the engine once per cycle; every load is undone
    assert engine["lora_loads"] == engine["lora_cycles"] == engine["lora_unloads"] > 0
    assert engine["adapters_left"] == []
    # concurrent scrapes share engine scrapes
    assert 0 < engine["scrapes"] < classes["scrape"]["count"] / 5
