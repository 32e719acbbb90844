"""`airuntime download`: one download on uvloop with a progress display; one readable line on failure.

Options combine in one order: a flag given on the command line > `--download-extra-config` (AIBrix's JSON) >
`DOWNLOADER_*` variables > defaults; `--config` (Kthena's JSON) holds credentials and endpoints.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import orjson

from runtime.download import aibrix
from runtime.download.cli_args import CliDownload
from runtime.download.env import DownloaderEnv
from runtime.download.progress_view import human_bytes, show_progress
from runtime.download.service import DownloadRequest, PreparedDownload, execute, prepare
from runtime.download.transfer import DownloadResult, FileFilter, Progress
from runtime.errors import SidecarError
from runtime.fields import split_list


def _json_object(raw: str | None, option: str) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise click.UsageError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise click.UsageError(f"{option} must be a JSON object")
    return value


def build_request(asked: CliDownload, env: DownloaderEnv) -> DownloadRequest:
    try:
        options = aibrix.from_extra_config(_json_object(asked.extra_config_json, "--download-extra-config"), env)
    except SidecarError as exc:
        raise click.UsageError(f"--download-extra-config: {exc.message}") from None
    config = {**options.config, **(_json_object(asked.config_json, "--config") or {})}
    transfer = options.transfer
    if asked.max_workers is not None:
        transfer = replace(transfer, max_workers=asked.max_workers)
    if asked.part_size_mib is not None:
        transfer = replace(transfer, part_size=asked.part_size_mib * 1024 * 1024)
    if asked.force:
        transfer = replace(transfer, force=True)
    suffixes = split_list(asked.allow_suffix) if asked.allow_suffix is not None else options.file_filter.allow_suffixes
    root = Path(asked.local_dir) / asked.model_name if asked.model_name else Path(asked.local_dir)
    return DownloadRequest(
        source=asked.source,
        local_dir=root,
        revision=asked.revision,
        config=config,
        file_filter=FileFilter(suffixes, asked.allow_patterns, asked.ignore_patterns),
        transfer=transfer,
    )


def run_cli_download(asked: CliDownload) -> Path:
    """Download, show progress, end with one summary line on stderr; returns the target directory."""
    request = build_request(asked, DownloaderEnv.read(os.environ))
    try:
        prepared = prepare(request)
    except SidecarError as exc:
        raise click.UsageError(exc.message) from None
    try:
        result = _run(_download_with_progress(prepared, asked.quiet))
    except SidecarError as exc:
        raise click.ClickException(exc.message) from None
    waited = (
        f"; waited {result.waited_for_lock:.0f}s for another download into it" if result.waited_for_lock >= 1 else ""
    )
    click.echo(
        f"airuntime: {prepared.describe()} -> {request.local_dir}: {len(result.files)} file(s) complete "
        f"({result.downloaded} downloaded, {result.skipped} already there), "
        f"{human_bytes(result.bytes_fetched)} in {result.seconds:.1f}s{waited}",
        err=True,
    )
    return request.local_dir


async def _download_with_progress(prepared: PreparedDownload, quiet: bool) -> DownloadResult:
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
