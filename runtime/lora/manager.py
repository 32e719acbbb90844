"""The LoRA adapter lifecycle: download, load, unload, list, and a desired set kept loaded across engine restarts.

Every load request (API or `--lora-adapters` file) adds the adapter to the desired set; unloading removes it. A
reconcile loop compares the set with what the engine reports (`GET /v1/models`) and loads again whatever the
engine lost — after an engine restart, for instance — with exponential backoff. Operations on one adapter name are
serialised by one lock per name; different names run in parallel. Downloaded files are reused (the downloader's
manifest), so a reload never fetches an adapter twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.download.layout import meta_dir
from runtime.download.manifest import MANIFEST_NAME
from runtime.download.service import DownloadRequest, execute, prepare
from runtime.download.transfer import TransferSettings
from runtime.download.uri import parse_source
from runtime.engine.identity import UNKNOWN, EngineIdentity
from runtime.errors import DownloadError, EngineError, LoraError, SidecarError, SourceError
from runtime.lora.engine_api import EngineLoraApi
from runtime.metrics.self_metrics import SidecarMetrics

log = logging.getLogger("airuntime.lora")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
STATES = ("downloading", "loading", "loaded", "failed", "unloading")
MAX_BACKOFF = 60.0


@dataclass
class AdapterRecord:
    name: str
    path: str
    source: str | None = None  # where it was downloaded from (described: no credentials)
    download: DownloadRequest | None = None  # how to fetch it again (holds credentials: never shown)
    state: str = "loading"
    last_error: str | None = None
    from_file: bool = False
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    loaded_at: float | None = None
    failures: int = 0
    retry_at: float = 0.0

    def set_state(self, state: str, error: str | None = None) -> None:
        self.state = state
        self.last_error = error
        self.updated_at = time.time()

    def public(self, engine_loaded: bool | None) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "path": self.path,
            "state": self.state,
            "engine_loaded": engine_loaded,
            "managed": True,
            "from_file": self.from_file,
            "last_error": self.last_error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "loaded_at": self.loaded_at,
        }


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise LoraError("missing required field 'lora_name'")
    if not NAME_RE.fullmatch(name):
        raise LoraError(f"lora_name {name!r} must be 1-128 letters, digits, '.', '_' or '-' (no path characters)")
    return name


def exists(path: Path, kind: str = "dir") -> bool:
    """Whether `path` is a directory (or a file): False, not an exception, for a name too long or a folder that
    cannot be read."""
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except OSError:
        return False


def check_adapter_dir(path: Path) -> None:
    if not exists(path):
        raise LoraError(f"adapter path {path} is not a directory on the sidecar's volume")
    if not exists(path / "adapter_config.json", "file"):
        raise LoraError(f"adapter path {path} has no adapter_config.json: not a PEFT LoRA adapter")


class LoraManager:
    def __init__(
        self, identity: EngineIdentity, api: EngineLoraApi, metrics: SidecarMetrics, adapters_dir: str
    ) -> None:
        self._identity, self._api, self._metrics = identity, api, metrics
        self._adapters_dir = Path(adapters_dir)
        self._records: dict[str, AdapterRecord] = {}  # the desired set: adapters loaded through the sidecar
        self._locks: dict[str, asyncio.Lock] = {}  # one per adapter name: its operations run one at a time
        self._background: set[asyncio.Task[Any]] = set()
        self._starting: set[str] = set()  # names whose background load has not taken its lock yet
        self._update_gauges()

    # -- operations ------------------------------------------------------------------------------------------
    def prepare_load(
        self,
        name: str,
        *,
        source: str | None = None,
        lora_path: str | None = None,
        lora_path_or_source: str | None = None,
        output_dir: str | None = None,
        config: dict[str, Any] | None = None,
        max_workers: int = 8,
    ) -> tuple[Path, DownloadRequest | None]:
        """Validate a load request before anything runs: (local path, download to do first or None).

        `lora_path_or_source` (AIBrix's `lora_path`) is a directory when one exists there, else a source to download
        into ADAPTERS_DIR/NAME (a Hugging Face repo id, s3://..., ms://...)."""
        check_name(name)
        if self._identity.engine != UNKNOWN:
            self._api.check_supported(self._identity.engine)  # 501 at once for engines without a load API
        if lora_path_or_source is not None:
            source, lora_path = self._path_or_source(lora_path_or_source)
        if not source and not lora_path:
            raise LoraError("give 'source' (to download the adapter) or 'lora_path' (an adapter on disk)")
        path = Path(lora_path or output_dir or self._adapters_dir / name)
        if not path.is_absolute():
            path = self._adapters_dir / path
        download = None
        if source:
            download = DownloadRequest(
                source=source, local_dir=path, config=config or {}, transfer=TransferSettings(max_workers=max_workers)
            )
            prepare(download)  # a malformed source or config is a 400 now, not after the engine is asked
        return path, download

    def _path_or_source(self, value: str) -> tuple[str | None, str | None]:
        """(source, None) when `value` names no local directory but parses as a download source, else (None,
        value): a missing directory is then reported as such."""
        local = Path(value) if Path(value).is_absolute() else self._adapters_dir / value
        if exists(local) or value.startswith(("/", "./", "../")):
            return None, value
        try:
            parse_source(value)
        except SourceError:
            return None, value
        return value, None

    async def load(
        self,
        name: str,
        path: Path,
        download: DownloadRequest | None,
        *,
        inplace: bool = False,
        auth: str | None = None,
        from_file: bool = False,
    ) -> tuple[AdapterRecord, bool]:
        """Download (if asked) and load; returns (record, changed). Idempotent for the same name and path."""
        async with self._lock(name):
            engine = self._identity.engine
            self._api.check_supported(engine)
            existing = self._records.get(name)
            if existing is not None and existing.state == "loaded" and not inplace:
                if Path(existing.path) == path:
                    if await self._engine_has(existing, engine, auth):
                        return existing, False
                else:
                    raise LoraError(
                        f"adapter {name!r} is loaded from {existing.path}; unload it first or set load_inplace",
                        409,
                        "conflict",
                    )
            record = existing or AdapterRecord(name=name, path=str(path))
            record.path, record.from_file = str(path), from_file or record.from_file
            if download is not None:
                record.source, record.download = prepare(download).describe(), download
            self._records[name] = record
            try:
                await self._bring_up(record, engine, inplace, auth, "load")
            except SidecarError as exc:
                if existing is None and exc.status < 500 and not from_file:
                    self._forget(record)  # the caller's mistake: nothing to keep loaded (an engine outage is retried)
                raise
            return record, True

    async def unload(self, name: str, auth: str | None = None) -> AdapterRecord | None:
        check_name(name)
        async with self._lock(name):
            engine = self._identity.engine
            self._api.check_supported(engine)
            record = self._records.get(name)
            if record is not None:
                record.set_state("unloading")
                self._update_gauges()
            started = time.perf_counter()
            try:
                await self._api.unload(engine, name, auth)
            except EngineError as exc:
                self._count("unload", "error", started)
                if record is not None and exc.status == 404:
                    self._records.pop(name, None)  # the engine had lost it already: nothing left to keep loaded
                    self._update_gauges()
                elif record is not None:
                    record.set_state("failed", str(exc))
                    self._update_gauges()
                raise
            self._count("unload", "ok", started)
            self._records.pop(name, None)
            self._update_gauges()
            return record

    async def unload_idempotent(self, name: str, auth: str | None = None) -> str:
        """Unload; an engine that no longer has the adapter is success too (AIBrix's unload). Returns the message."""
        try:
            await self.unload(name, auth)
        except EngineError as exc:
            if exc.status != 404:
                raise
            return f"adapter {name!r} was not loaded"
        return f"adapter {name!r} unloaded"

    async def unload_and_remove(self, name: str, auth: str | None = None) -> str:
        """AIBrix's unload with cleanup_local: unload (idempotently), then delete ADAPTERS_DIR/NAME, both under the
        name's lock so a load of the same name waits for the folder to be gone. Only there: never a path a caller
        named elsewhere."""
        message = await self.unload_idempotent(name, auth)
        async with self._lock(name):
            folder = self._adapters_dir / name
            if exists(folder) and not folder.is_symlink() and name not in self._records:
                await asyncio.to_thread(shutil.rmtree, folder, True)
        return message

    async def engine_models(self, auth: str | None = None) -> tuple[int, Any]:
        """The engine's `GET /v1/models` answer (status, document), for AIBrix's controller."""
        return await self._api.models(auth)

    def record(self, name: str) -> AdapterRecord | None:
        return self._records.get(name)

    def busy(self, name: str) -> bool:
        return self._lock(name).locked() or name in self._starting

    def load_in_background(self, name: str, path: Path, download: DownloadRequest | None, **kwargs: Any) -> None:
        async def run() -> None:
            try:
                await self.load(name, path, download, **kwargs)
            except SidecarError as exc:
                log.warning("adapter load failed", extra={"fields": {"adapter": name, "error": str(exc)}})
            finally:
                self._starting.discard(name)

        self._starting.add(name)
        self.spawn(run())

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background until it ends or `stop()` cancels it."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def listing(self, auth: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Every adapter we manage, reconciled with the engine's own list, plus adapters only the engine has."""
        engine_error = None
        loaded: dict[str, Any] | None = None
        try:
            loaded = dict(await self._api.loaded(self._identity.engine, auth))
        except EngineError as exc:
            engine_error = str(exc)
        entries = [
            record.public(None if loaded is None else name in loaded) for name, record in sorted(self._records.items())
        ]
        for name, adapter in sorted((loaded or {}).items()):
            if name not in self._records:
                entries.append(
                    {"name": name, "source": None, "path": adapter.path, "state": "loaded", "engine_loaded": True}
                    | {"managed": False, "from_file": False, "last_error": None}
                )
        return entries, engine_error

    # -- desired state ---------------------------------------------------------------------------------------
    async def reconcile_once(self) -> None:
        """Load again every desired adapter the engine does not have (after a restart), honouring backoff."""
        if not self._records:
            return
        engine = self._identity.engine
        try:
            self._api.check_supported(engine)
            loaded = await self._api.loaded(engine, None)
        except EngineError:
            return  # engine down or unknown: try again on the next round
        now = time.monotonic()
        for name, record in list(self._records.items()):
            lock = self._lock(name)
            if lock.locked() or record.state in ("unloading", "downloading") or now < record.retry_at:
                continue
            if name in loaded:
                if record.state != "loaded":
                    record.set_state("loaded")
                    self._update_gauges()
                continue
            if record.state == "loaded":
                log.warning("engine lost adapter; loading it again", extra={"fields": {"adapter": name}})
            async with lock:
                if self._records.get(name) is not record:
                    continue
                try:
                    await self._bring_up(record, engine, False, None, "reload")
                except SidecarError:
                    continue
                except Exception:  # one adapter's surprise must not stop the others from being reloaded
                    log.exception("reloading an adapter failed", extra={"fields": {"adapter": name}})

    async def run_reconciler(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile_once()
            except Exception:  # the loop must survive anything one round does
                log.exception("adapter reconcile round failed")

    def forget_from_file(self, keep: set[str]) -> list[str]:
        """Names declared by the file earlier but not any more (the caller unloads them)."""
        return [name for name, record in self._records.items() if record.from_file and name not in keep]

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- internals -------------------------------------------------------------------------------------------
    async def _bring_up(self, record: AdapterRecord, engine: str, inplace: bool, auth: str | None, op: str) -> None:
        started = time.perf_counter()
        try:
            try:
                await self._download_and_load(record, engine, inplace, auth, op)
            except OSError as exc:
                raise LoraError(f"adapter {record.name!r}: {exc.strerror or exc}: {record.path}") from None
        except SidecarError as exc:
            record.failures += 1
            record.retry_at = time.monotonic() + min(MAX_BACKOFF, 2.0**record.failures)
            record.set_state("failed", str(exc))
            self._count(op, "error", started)
            self._update_gauges()
            raise
        record.failures = 0
        record.retry_at = 0.0
        record.loaded_at = time.time()
        record.set_state("loaded")
        self._count(op, "ok", started)
        self._update_gauges()
        log.info("adapter loaded", extra={"fields": {"adapter": record.name, "path": record.path, "operation": op}})

    async def _download_and_load(
        self, record: AdapterRecord, engine: str, inplace: bool, auth: str | None, op: str
    ) -> None:
        downloaded_before = exists(meta_dir(Path(record.path)) / MANIFEST_NAME, "file")
        if record.download is not None and not (op == "reload" and downloaded_before):
            record.set_state("downloading")
            self._update_gauges()
            try:
                await execute(prepare(record.download))
            except DownloadError as exc:
                raise LoraError(f"downloading adapter {record.name!r} failed: {exc}", exc.status, exc.reason) from None
        await asyncio.to_thread(check_adapter_dir, Path(record.path))
        record.set_state("loading")
        self._update_gauges()
        try:
            await self._api.load(engine, record.name, record.path, inplace, auth)
        except EngineError as exc:
            if not (
                exc.status == 400 and "already" in str(exc).lower() and await self._engine_has(record, engine, auth)
            ):
                raise
            # else: loaded by an earlier life of this sidecar under the same name and path

    async def _engine_has(self, record: AdapterRecord, engine: str, auth: str | None) -> bool:
        try:
            loaded = await self._api.loaded(engine, auth)
        except EngineError:
            return False
        adapter = loaded.get(record.name)
        return adapter is not None and (adapter.path is None or Path(adapter.path) == Path(record.path))

    def _forget(self, record: AdapterRecord) -> None:
        if self._records.get(record.name) is record:
            del self._records[record.name]
            self._update_gauges()

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _count(self, operation: str, result: str, started: float) -> None:
        self._metrics.lora_operations.labels(operation, result).inc()
        self._metrics.lora_operation_duration.labels(operation).observe(time.perf_counter() - started)

    def _update_gauges(self) -> None:
        counts = dict.fromkeys(STATES, 0)
        for record in self._records.values():
            counts[record.state] = counts.get(record.state, 0) + 1
        for state, count in counts.items():
            self._metrics.lora_adapters.labels(state).set(count)
