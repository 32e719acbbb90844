"""`--lora-adapters FILE`: the adapters that must be loaded, re-read whenever the file changes (the Kthena Model CR
flow: a ConfigMap mounted as a file is edited, the pod keeps running).

The file is YAML (by extension .yaml/.yml) or JSON: a list of `{name, source}` (or `{name, lora_path}`), optionally
with `config` (download credentials) and `max_workers`, or an object `{"adapters": [...]}`; any other key is an error
(a typo must not go unnoticed). Adapters that leave the file are unloaded. A file that cannot be read or parsed
is reported and the last good set is kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import LoraError, SidecarError
from runtime.lora.manager import LoraManager, check_name

log = logging.getLogger("airuntime.lora")


ENTRY_KEYS = ("name", "lora_name", "source", "lora_path", "config", "max_workers")


@dataclass(frozen=True)
class DesiredAdapter:
    name: str
    source: str | None
    lora_path: str | None
    config: dict[str, Any]
    max_workers: int


def parse_desired(text: str, suffix: str) -> list[DesiredAdapter]:
    if suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if isinstance(data, dict):
        unknown = sorted(str(key) for key in data if key != "adapters")
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; expected an 'adapters' list")
        data = data.get("adapters")
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValueError("expected a list of adapters (or an object with an 'adapters' list)")
    adapters: list[DesiredAdapter] = []
    seen: set[str] = set()
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"entry {index} is not an object")
        unknown = sorted(str(key) for key in entry if key not in ENTRY_KEYS)
        if unknown:
            raise ValueError(f"entry {index}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(ENTRY_KEYS)}")
        try:
            name = check_name(entry.get("name", entry.get("lora_name")))
        except LoraError as exc:
            raise ValueError(f"entry {index}: {exc}") from None
        if name in seen:
            raise ValueError(f"entry {index}: adapter {name!r} is listed twice")
        seen.add(name)
        source, lora_path = entry.get("source"), entry.get("lora_path")
        if not isinstance(source, str | None) or not isinstance(lora_path, str | None) or not (source or lora_path):
            raise ValueError(f"entry {index} ({name}): needs 'source' or 'lora_path' as a string")
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise ValueError(f"entry {index} ({name}): 'config' must be an object")
        workers = entry.get("max_workers", 8)
        if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 256:
            raise ValueError(f"entry {index} ({name}): 'max_workers' must be an integer from 1 to 256")
        adapters.append(DesiredAdapter(name, source, lora_path, config, workers))
    return adapters


class DesiredFileWatcher:
    def __init__(self, path: str, manager: LoraManager) -> None:
        self._path = Path(path)
        self._manager = manager
        self._seen: tuple[int, int] | None = None
        self._current: dict[str, DesiredAdapter] = {}
        self.last_error: str | None = None

    async def check(self) -> None:
        """Re-read the file if it changed; (re)start loads for listed adapters the manager does not hold yet."""
        changed = self._read_if_changed()
        if changed is not None:
            for name in self._manager.forget_from_file(set(changed)):
                try:
                    await self._manager.unload(name)
                except SidecarError as exc:
                    log.warning(
                        "unloading an adapter dropped from the file failed", extra={"fields": {"error": str(exc)}}
                    )
            self._current = changed
            log.info("adapters file read", extra={"fields": {"file": str(self._path), "adapters": sorted(changed)}})
        for name, adapter in self._current.items():
            if self._manager.record(name) is not None or self._manager.busy(name):
                continue
            try:
                path, download = self._manager.prepare_load(
                    name,
                    source=adapter.source,
                    lora_path=adapter.lora_path,
                    config=adapter.config,
                    max_workers=adapter.max_workers,
                )
            except SidecarError as exc:
                self._report(f"{self._path}: adapter {name}: {exc}")
                continue
            self._manager.load_in_background(name, path, download, from_file=True)

    def _read_if_changed(self) -> dict[str, DesiredAdapter] | None:
        try:
            stat = self._path.stat()
        except OSError as exc:
            self._report(f"cannot read {self._path}: {exc.strerror}")
            return None
        marker = (stat.st_mtime_ns, stat.st_size)
        if marker == self._seen:
            return None
        self._seen = marker
        try:
            adapters = parse_desired(self._path.read_text(encoding="utf-8"), self._path.suffix)
        except (OSError, ValueError) as exc:
            self._report(f"{self._path}: {exc}")
            return None
        except Exception as exc:  # YAML errors carry their own position
            self._report(f"{self._path}: {type(exc).__name__}: {exc}")
            return None
        self.last_error = None
        return {adapter.name: adapter for adapter in adapters}

    def _report(self, message: str) -> None:
        if message != self.last_error:
            log.warning("adapters file problem; keeping the last good set", extra={"fields": {"error": message}})
        self.last_error = message

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("adapters file check failed")
            await asyncio.sleep(interval)
