"""The rewriter's contract on arbitrary bytes, as one checker shared by the hypothesis properties and the atheris harness.

`check_rewrite` runs one payload through `MetricsRewriter` whole and in chunks, and raises `AssertionError` on any
broken promise: an exception, output that depends on chunking or on a warm cache, output that is not UTF-8 lines
each ending in a newline, output prometheus_client's parser rejects, or an input line neither kept nor counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from runtime.metrics.rewriter import MetricsRewriter, RewriteCache
from runtime.metrics.rules import RuleSet, build_ruleset

# Unified names get a prefix no input carries, so output lines split cleanly into raw lines and unified copies.
UNIFIED_PREFIX = "fuzzunified"
RULES = build_ruleset("auto", prefix=UNIFIED_PREFIX)
_UNIFIED = UNIFIED_PREFIX.encode() + b":"
_HEADER_RE = re.compile(rb"#[ \t]+(?:HELP|TYPE)[ \t]+([a-zA-Z_:][a-zA-Z0-9_:]*)")
_EXEMPLAR_TAIL_RE = re.compile(rb"[ \t]*#")


@dataclass(frozen=True)
class Rewritten:
    """One payload's output and counts (equal however the payload was chunked)."""

    output: bytes
    invalid_lines: int
    omitted_lines: int
    sample_lines: int


def input_lines(payload: bytes) -> list[bytes]:
    """The non-blank lines the rewriter sees: split on LF, one trailing CR dropped from each."""
    lines = (line.removesuffix(b"\r") for line in payload.split(b"\n"))
    return [line for line in lines if line]


def is_unified(line: bytes) -> bool:
    if line.startswith(_UNIFIED):
        return True
    header = _HEADER_RE.match(line)
    return header is not None and header.group(1).startswith(_UNIFIED)


def rewrite_chunked(
    payload: bytes,
    cuts: Sequence[int] = (),
    rules: RuleSet = RULES,
    keep_raw: bool = True,
    cache: RewriteCache | None = None,
) -> Rewritten:
    """Feed `payload` split at the offsets `cuts`, taking output after every feed as the scraper would."""
    rewriter = MetricsRewriter(rules, keep_raw=keep_raw, cache=cache)
    pieces: list[bytes] = []
    start = 0
    for cut in [*sorted({min(max(cut, 0), len(payload)) for cut in cuts}), len(payload)]:
        rewriter.feed(payload[start:cut])
        pieces.append(rewriter.take_bytes())
        start = cut
    rewriter.finish()
    pieces.append(rewriter.take_bytes())
    return Rewritten(b"".join(pieces), rewriter.invalid_lines, rewriter.omitted_lines, rewriter.sample_lines)


def check_rewrite(
    payload: bytes,
    cuts: Sequence[int] = (),
    rules: RuleSet = RULES,
    keep_raw: bool = True,
    cache: RewriteCache | None = None,
) -> Rewritten:
    """Every promise of the rewriter on `payload`; returns the whole-payload result. Raises AssertionError."""
    whole = rewrite_chunked(payload, (), rules, keep_raw)
    chunked = rewrite_chunked(payload, cuts, rules, keep_raw)
    assert chunked == whole, f"output depends on chunking at {sorted(cuts)}"
    if cache is not None:
        warm = rewrite_chunked(payload, cuts, rules, keep_raw, cache)
        assert warm == whole, "output with a warm cache differs from a cold rewrite"
    out = whole.output
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError as error:
        raise AssertionError(f"output is not UTF-8: {error}") from None
    assert out == b"" or (out.endswith(b"\n") and not out.startswith(b"\n")), "output lines must each end in LF"
    assert b"\n\n" not in out, "output has a blank line"
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as error:  # the property: prometheus_client accepts every output
        raise AssertionError(f"prometheus_client cannot parse the output: {error!r}") from None
    assert all(family.name for family in families)

    lines = input_lines(payload)
    out_lines = out.split(b"\n")[:-1]
    if _UNIFIED in payload:
        return whole  # the input itself uses unified names: raw and unified lines cannot be told apart
    raw = [line for line in out_lines if not is_unified(line)]
    if not keep_raw:
        assert not raw, f"raw line without --keep-raw: {raw[0]!r}"
        return whole
    kept = len(raw)
    assert kept + whole.invalid_lines + whole.omitted_lines == len(lines), (
        f"{len(lines)} input lines, but {kept} kept + {whole.invalid_lines} invalid + {whole.omitted_lines} omitted"
    )
    _check_raw_lines_come_from_input(raw, lines, payload)
    return whole


def _check_raw_lines_come_from_input(raw: list[bytes], lines: list[bytes], payload: bytes) -> None:
    """A raw output line is an input line, an input sample less its exemplar, or a normalised HELP/TYPE line."""
    given = set(lines)
    for line in raw:
        if line in given:
            continue
        header = _HEADER_RE.match(line)
        if header is not None:
            name = header.group(1)
            assert name in payload or name.removesuffix(b"_total") in payload, f"header not from input: {line!r}"
            continue
        assert any(other.startswith(line) and _EXEMPLAR_TAIL_RE.match(other, len(line)) for other in lines), (
            f"raw line not from input: {line!r}"
        )
