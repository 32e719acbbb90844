"""How a setting is declared: a dataclass field carrying its flags, its environment variables, its check and its
help (`setting()`), from which the CLI builds its options (runtime/cli_options.py). ServeConfig (config.py) and the
download command's CliDownload (download/cli_args.py) are declared this way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Setting:
    """How one setting is given: flags (the first long one names it), variables, and what its value may be."""

    flags: tuple[str, ...]
    env: tuple[str, ...] = ()
    help: str = ""
    kind: str = "str"  # str, int, float, bool (a --x/--no-x pair), flag (present or not), choice, file, dir
    low: float | None = None
    high: float | None = None
    choices: Callable[[], Sequence[str]] | None = None
    multiple: bool = False  # repeatable flag; its variable holds several values separated by ':'
    secret: bool = False  # masked by describe(), never logged
    required: bool = False
    hidden: bool = False  # accepted, not shown in --help (another product's flag that changes nothing here)
    parse: Callable[[Any], Any] | None = None  # normalisation and checks; raises ConfigError


def setting(default: Any, *flags: str, **options: Any) -> Any:
    """A dataclass field declared with its flags and variables (see Setting)."""
    return field(default=default, metadata={"setting": Setting(flags=flags, **options)})


def declared_settings(cls: Any) -> list[tuple[str, Any, Setting]]:
    """(field name, default, Setting) of every declared setting, in declaration order."""
    found = []
    for item in fields(cls):
        declared = item.metadata.get("setting")
        if declared is not None:
            found.append((item.name, item.default, declared))
    return found
