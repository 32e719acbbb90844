"""Every claim of the README's compatibility table (tests/support/compatibility.py) holds in the code, and the
README holds the table as generated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime.cli import cli, route
from runtime.config import ServeConfig
from runtime.download import aibrix as aibrix_download
from runtime.download.credentials import _ENV, CONFIG_KEYS
from runtime.download.env import DownloaderEnv
from runtime.server.app import ROUTES
from runtime.settings import declared_settings
from tests.support.compatibility import ROWS, markdown
from tests.support.rewrite import load_spec

README = Path(__file__).resolve().parents[2] / "README.md"
DOWNLOADER_SAMPLES = {"DOWNLOADER_NUM_THREADS": "4", "DOWNLOADER_ALLOW_FILE_SUFFIX": "json",
                      "DOWNLOADER_FORCE_DOWNLOAD": "1", "DOWNLOADER_PART_CHUNKSIZE": "8388608"}  # fmt: skip


def options_of(command: str) -> set[str]:
    found: set[str] = set()
    for param in cli.commands[command].params:  # type: ignore[attr-defined]
        found.update(param.opts)
        found.update(param.secondary_opts)
    return found


def body_fields(method: str, path: str) -> set[str]:
    body = load_spec()["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
    schemas = load_spec()["components"]["schemas"]
    while "$ref" in body:
        body = schemas[body["$ref"].rsplit("/", 1)[-1]]
    return set(body.get("properties", {}))


def holds(check: tuple[Any, ...]) -> bool:
    """Whether a row's check holds; a list as the last element means every item of it."""
    kind, *rest = check
    if rest and isinstance(rest[-1], list) and kind not in ("args",):
        return all(holds((kind, *rest[:-1], item)) for item in rest[-1])
    if kind == "option":
        return rest[1] in options_of(rest[0])
    if kind == "program":
        return route(rest[0], [])[0][:1] == [rest[1]]
    if kind == "args":
        return route("airuntime", list(rest[0]))[0][0] == rest[1]
    if kind == "setting-env":
        return any(rest[0] in setting.env for _, _, setting in declared_settings(ServeConfig))
    if kind == "downloader-env":  # the variable changes what DownloaderEnv reads
        return DownloaderEnv.read({rest[0]: DOWNLOADER_SAMPLES[rest[0]]}) != DownloaderEnv()
    if kind == "credential-env":
        return any(rest[0] in names for table in _ENV.values() for names in table.values())
    if kind == "route":
        return any(r.method == rest[0] and r.path == rest[1] for r in ROUTES)  # type: ignore[attr-defined]
    if kind == "field":
        return rest[2] in body_fields(rest[0], rest[1])
    if kind == "config-key":
        return rest[0] in CONFIG_KEYS
    if kind == "extra-key":
        return rest[0] in (*aibrix_download.CONFIG_KEYS, *aibrix_download.TUNING_KEYS)
    return kind == "ignored"


@pytest.mark.parametrize("row", ROWS, ids=[f"{row[0]}-{row[2][:40]}" for row in ROWS])
def test_each_compatibility_claim_holds(row: tuple[str, str, str, str, tuple[Any, ...]]) -> None:
    assert holds(row[4]), f"{row[2]}: {row[4]} does not hold"


def test_readme_holds_the_compatibility_table() -> None:
    expected = markdown()
    assert expected in README.read_text(encoding="utf-8"), "README compatibility table is stale; paste:\n" + expected


def test_variables_our_code_never_reads_are_said_to_be_ignored() -> None:
    """An `ignored` row must name something nothing reads: if code starts reading it, the row must change."""
    runtime_text = "\n".join(p.read_text() for p in (README.parent / "runtime").rglob("*.py"))
    for _, _, _, _, check in ROWS:
        if check[0] == "ignored" and not check[1].startswith("/"):
            assert check[1] not in runtime_text, check[1]
