"""`airuntime download`: one download on uvloop with a progress display; one readable line on failure."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
import orjson

from runtime.download.backends.base import DownloadError
from runtime.download.progress_view import human_bytes, show_progress
from runtime.download.service import DownloadRequest, execute, prepare
from runtime.download.transfer import DownloadResult, FileFilter, Progress, TransferSettings

AIBRIX_KEYS = {"ak": "access_key", "sk": "secret_key", "endpoint": "endpoint", "region": "region"}


def _json_object(raw: str | None, option: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise click.UsageError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise click.UsageError(f"{option} must be a JSON object")
    return value


def run_cli_download(
    *,
    uri: str,
    local_dir: str,
    model_name: str | None,
    revision: str | None,
    allow_suffix: str,
    allow_patterns: tuple[str, ...],
    ignore_patterns: tuple[str, ...],
    max_workers: int,
    part_size: int,
    config_json: str | None,
    extra_config_json: str | None,
    force: bool,
    quiet: bool,
) -> None:
    config = _json_object(config_json, "--config")
    for theirs, value in _json_object(extra_config_json, "--download-extra-config").items():
        config.setdefault(AIBRIX_KEYS.get(theirs, theirs), value)
    root = Path(local_dir) / model_name if model_name else Path(local_dir)
    request = DownloadRequest(
        source=uri,
        local_dir=root,
        revision=revision,
        config=config,
        file_filter=FileFilter(
            allow_suffixes=tuple(part.strip() for part in allow_suffix.split(",") if part.strip()),
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
        ),
        transfer=TransferSettings(max_workers=max_workers, part_size=part_size, force=force),
    )
    try:
        prepared = prepare(request)
    except DownloadError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        result = _run(_download_with_progress(prepared, quiet))
    except DownloadError as exc:
        raise click.ClickException(str(exc)) from None
    waited = (
        f"; waited {result.waited_for_lock:.0f}s for another download into it" if result.waited_for_lock >= 1 else ""
    )
    click.echo(
        f"airuntime: {prepared.describe()} -> {root}: {len(result.files)} file(s) complete "
        f"({result.downloaded} downloaded, {result.skipped} already there), "
        f"{human_bytes(result.bytes_fetched)} in {result.seconds:.1f}s{waited}",
        err=True,
    )


async def _download_with_progress(prepared: Any, quiet: bool) -> DownloadResult:
    progress = Progress()
    display = asyncio.ensure_future(show_progress(progress, quiet))
    try:
        return await execute(prepared, progress)
    finally:
        display.cancel()
        await asyncio.gather(display, return_exceptions=True)


def _run(coroutine: Any) -> DownloadResult:
    import uvloop

    result: DownloadResult = uvloop.run(coroutine)
    return result
