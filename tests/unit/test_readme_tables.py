"""The README's per-engine metric table is generated from the rule tables; this keeps the two equal."""

from __future__ import annotations

from pathlib import Path

from runtime.metrics.rule_tables import SourceSpec, load_engine_table

README = Path(__file__).resolve().parents[2] / "README.md"
ENGINES = ["vllm", "sglang", "tgi", "llamacpp", "trtllm", "lmdeploy"]


def engine_table_markdown() -> str:
    order: list[str] = []
    kinds: dict[str, str] = {}
    cells: dict[tuple[str, str], str] = {}
    for engine in ENGINES:
        for family in load_engine_table(engine).families:
            name = family.name
            if family.kind == "counter" and not name.endswith("_total"):
                name += "_total"
            if name not in order:
                order.append(name)
            kinds[name] = family.kind
            cells[(name, engine)] = ", ".join(_source(source) for source in family.sources)
    lines = [
        "| unified (`PREFIX:`) | type | " + " | ".join(ENGINES) + " |",
        "|---|---|" + "---|" * len(ENGINES),
    ]
    for name in order:
        row = " | ".join(cells.get((name, engine), "—") for engine in ENGINES)
        lines.append(f"| `{name}` | {kinds[name]} | {row} |")
    return "\n".join(lines) + "\n"


def _source(source: SourceSpec) -> str:
    text = f"`{source.name}`"
    if source.match is not None:
        text += "`{" + f'{source.match[0]}="{source.match[1]}"' + "}`"
    if source.divide_by is not None:
        text += f" ÷{source.divide_by:g}"
    return text


def test_readme_engine_table_matches_the_rule_tables() -> None:
    expected = engine_table_markdown()
    assert expected in README.read_text(encoding="utf-8"), "README table is stale; paste this:\n" + expected


def config_table_markdown() -> str:
    """The README's configuration table, from the settings declared in runtime/config.py."""
    from runtime.config import ServeConfig
    from runtime.settings import declared_settings

    lines = ["| flag | what | variables (the first set wins) | default |", "|---|---|---|---|"]
    for _, default, setting in declared_settings(ServeConfig):
        flags = ", ".join(f"`{flag}`" for flag in setting.flags)
        if setting.choices is not None:
            flags += " " + "/".join(f"`{choice}`" for choice in setting.choices())
        variables = ", ".join(f"`{name}`" for name in setting.env)
        shown = {True: "on", False: "off"}.get(default) if isinstance(default, bool) else None
        shown = shown or ("none" if default in (None, "", ()) else f"`{default}`")
        lines.append(f"| {flags} | {setting.help} | {variables} | {shown} |")
    return "\n".join(lines) + "\n"


def test_readme_configuration_table_matches_the_declared_settings() -> None:
    expected = config_table_markdown()
    assert expected in README.read_text(encoding="utf-8"), "README configuration table is stale; paste:\n" + expected
