"""Click options made from the settings declared in runtime/config.py: one declaration, one option each."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

import click

from runtime.config import ServeConfig
from runtime.settings import Setting, declared_settings

F = TypeVar("F", bound=Callable[..., Any])


def _param_type(declared: Setting) -> click.ParamType[Any] | None:
    if declared.kind == "int":
        return click.IntRange(_whole(declared.low), _whole(declared.high))
    if declared.kind == "float":
        return click.FloatRange(declared.low, declared.high)
    if declared.kind == "choice":
        assert declared.choices is not None
        return click.Choice(list(declared.choices()), case_sensitive=False)
    if declared.kind == "file":
        return click.Path(dir_okay=False)
    if declared.kind == "dir":
        return click.Path(file_okay=False)  # its variable splits on ':' when the setting is repeatable
    return None


def _whole(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


def _flag(declared: Setting) -> dict[str, Any]:
    """click infers a --x/--no-x pair from its name; a plain flag (present or not) must be said so."""
    return {"is_flag": True} if declared.kind == "flag" else {}


def settings_options(only: Collection[str] | None = None, declared_in: Any = ServeConfig) -> Callable[[F], F]:
    """Decorate a click command with an option per setting declared in a dataclass (or the named ones), in
    declaration order."""

    def decorate(func: F) -> F:
        for name, default, declared in reversed(declared_settings(declared_in)):
            if only is not None and name not in only:
                continue
            names = [*declared.flags, name]
            env_names = list(declared.env)
            help_text = declared.help + (f" (env {', '.join(env_names)})" if env_names else "")
            option = click.option(
                *names,
                default=list(default) if declared.multiple else default,
                type=_param_type(declared),
                multiple=declared.multiple,
                envvar=env_names,
                show_default=default not in (None, "", (), False) and not declared.secret,
                help=help_text,
                required=declared.required,
                hidden=declared.hidden,
                **_flag(declared),
            )
            func = option(func)
        return func

    return decorate
