"""Prometheus text exposition format 0.0.4, line by line: the grammar of a line as regular expressions, and pure
helpers over one line's bytes (label checks, unit conversion, which sample names belong to a family).

No state lives here: the rewriter (runtime/metrics/rewriter.py) is the state machine that uses these. Patterns are
written so that no two adjacent parts can match the same text: a failed match costs linear time even on a line of
megabytes (a fuzzer found a 537 s backtrack in an earlier form).
"""

from __future__ import annotations

import math
import re

_NAME = rb"[a-zA-Z_:][a-zA-Z0-9_:]*"
# Label names starting with `__` are reserved (promtool rejects `__name__`, prometheus_client every `__*`); a label
# value escapes only backslash, quote and newline. No two adjacent parts of a pattern can match the same text, so a
# failed match costs linear time even on a line of megabytes.
_LABEL_NAME = rb"(?!__)[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = rb'[^"\\\n]*(?:\\[\\"n][^"\\\n]*)*'
_LABEL = _LABEL_NAME + rb'[ \t]*=[ \t]*"' + _LABEL_VALUE + rb'"'
_LABELS = rb"\{[ \t]*(?:" + _LABEL + rb"(?:[ \t]*,[ \t]*" + _LABEL + rb")*[ \t]*(?:,[ \t]*)?)?\}"
_VALUE = rb"(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?i:inf(?:inity)?)|(?i:nan))"
# A sample line. Groups: 1 the name, 2 labels+value+timestamp (the part a unified copy reuses), 3 the labels,
# 4 the value, 5 a trailing `#...` (an OpenMetrics exemplar, checked apart). A timestamp must fit an int64.
SAMPLE_RE = re.compile(
    rb"(" + _NAME + rb")((" + _LABELS + rb")?[ \t]*(?<=[ \t}])(" + _VALUE + rb")(?:[ \t]+-?[0-9]{1,18})?)[ \t]*(#.*)?"
)
VALUE_RE = re.compile(_VALUE)
# A value that cannot overflow a float64 (at most 200 integer digits, a two-digit exponent): what a line seen before is
# checked against; anything else takes the full check.
SAFE_VALUE_RE = re.compile(
    rb"[+-]?(?:[0-9]{1,200}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,2})?|[+-]?(?i:inf(?:inity)?)|(?i:nan)"
)
LABEL_PAIR_RE = re.compile(rb"(" + _LABEL_NAME + rb')[ \t]*=[ \t]*"(' + _LABEL_VALUE + rb')"')
BODY_RE = re.compile(rb"(\{.*\})?([ \t]*)(" + _VALUE + rb")(.*)$", re.DOTALL)
LE_RE = re.compile(rb'((?:^|[{,])[ \t]*le[ \t]*=[ \t]*")([^"]*)(")')
EXEMPLAR_RE = re.compile(rb"#[ \t]*(?:\{.*)?")
COMMENT_RE = re.compile(rb"#[ \t]+(HELP|TYPE|UNIT)[ \t]+(" + _NAME + rb")(?:[ \t]+(.*))?")
META_RE = re.compile(rb"#[ \t]+(?:HELP|TYPE)(?:[ \t]|$)")  # a HELP/TYPE line, valid or not
HELP_TEXT_RE = re.compile(rb"[^\\]*(?:\\[\\n][^\\]*)*")  # HELP escapes only backslash and newline

OPENMETRICS_ONLY_KINDS = {b"unknown", b"gaugehistogram", b"info", b"stateset"}
TEXT_KINDS = {b"counter", b"gauge", b"histogram", b"summary", b"untyped"}

# Label values promtool parses as numbers, by the kind of the family a sample lands in; a sample whose label does not
# parse is dropped. The bits are the flags a parsed sample carries (see label_flags).
BAD_LE = 1
BAD_QUANTILE = 2
NUMERIC_LABELS = {b"histogram": BAD_LE, b"summary": BAD_QUANTILE}

# For each kind: sample-name suffix (relative to the family name) -> suffix of the unified sample, or None to leave
# the sample out of unified copies. Counters are keyed on the name without `_total`; see member_map.
HISTOGRAM_SUFFIXES: dict[bytes, bytes | None] = {
    b"_bucket": b"_bucket",
    b"_sum": b"_sum",
    b"_count": b"_count",
    b"_created": None,
}
SUMMARY_SUFFIXES: dict[bytes, bytes | None] = {b"": b"", b"_sum": b"_sum", b"_count": b"_count", b"_created": None}
# promtool files `x_sum`/`x_count` under a summary or histogram `x`, and `x_bucket` under a histogram `x`.
SUMMARY_OR_HISTOGRAM = (b"summary", b"histogram")


def is_utf8(text: bytes) -> bool:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def in_range(value: bytes) -> bool:
    """False for a number too large for a float64 (`1e999`): promtool rejects it, Python would read infinity."""
    if SAFE_VALUE_RE.fullmatch(value) is not None:
        return True
    try:
        number = float(value)
    except ValueError:  # pragma: no cover - the text matched _VALUE
        return False
    return not math.isinf(number)


def label_flags(labels: bytes) -> int:
    """-1 for a label name given twice; else BAD_LE/BAD_QUANTILE for an `le`/`quantile` that is not a number."""
    flags = 0
    seen: set[bytes] = set()
    for pair in LABEL_PAIR_RE.finditer(labels):
        label = pair.group(1)
        if label in seen:
            return -1
        seen.add(label)
        if label == b"le" or label == b"quantile":
            value = pair.group(2)
            if VALUE_RE.fullmatch(value) is None or not in_range(value):
                flags |= BAD_LE if label == b"le" else BAD_QUANTILE
    return flags


def counter_base(name: bytes) -> bytes:
    return name[:-6] if name.endswith(b"_total") else name


def member_map(name: bytes, kind: bytes) -> dict[bytes, bytes | None]:
    """Sample names that belong to family `name` of `kind`, each with the suffix its unified copy gets."""
    if kind == b"counter":
        base = counter_base(name)
        return {name: b"_total", base + b"_total": b"_total", base + b"_created": None}
    if kind == b"histogram":
        return {name + suffix: out for suffix, out in HISTOGRAM_SUFFIXES.items()}
    if kind == b"summary":
        return {name + suffix: out for suffix, out in SUMMARY_SUFFIXES.items()}
    return {name: b""}


def without_label(body: bytes, labels: bytes | None, pair: bytes) -> bytes | None:
    """`body` (labels, value, timestamp) with label `pair` removed, or None when the sample does not carry it."""
    if not labels:
        return None
    parts = [part.strip(b" \t") for part in _split_labels(labels[1:-1])]
    if pair not in parts:
        return None
    kept = [part for part in parts if part and part != pair]
    rest = body[len(labels) :]
    return b"{" + b",".join(kept) + b"}" + rest if kept else rest


def divides_value(out_suffix: bytes) -> bool:
    """Whether a unit conversion divides the value of a sample with this suffix (not bucket counts or `_count`)."""
    return out_suffix not in (b"_bucket", b"_count")


def converted(body: bytes, out_suffix: bytes, divide_by: float) -> bytes:
    """Unit conversion of one sample: `le` of buckets, the value of sums, counters, gauges and quantiles."""
    parts = BODY_RE.match(body)
    if parts is None:  # pragma: no cover - body always matched SAMPLE_RE
        return body
    labels, gap, value, tail = parts.groups()
    if out_suffix == b"_bucket":
        if labels is None:
            return body
        labels = LE_RE.sub(lambda m: m.group(1) + divided_value(m.group(2), divide_by) + m.group(3), labels)
        return labels + gap + value + tail
    if not divides_value(out_suffix):
        return body
    return (labels or b"") + gap + divided_value(value, divide_by) + tail


def divided_value(text: bytes, divide_by: float) -> bytes:
    try:
        number = float(text)
    except ValueError:
        return text
    result = number / divide_by
    if math.isnan(result):
        return b"NaN"
    if math.isinf(result):
        return b"+Inf" if result > 0 else b"-Inf"
    return repr(result).encode()


def _split_labels(inner: bytes) -> list[bytes]:
    """Split `a="x",b="y,z"` on the commas outside quoted values."""
    parts: list[bytes] = []
    start = 0
    in_quotes = False
    index = 0
    while index < len(inner):
        char = inner[index]
        if char == 0x5C and in_quotes:  # backslash escapes the next byte
            index += 2
            continue
        if char == 0x22:
            in_quotes = not in_quotes
        elif char == 0x2C and not in_quotes:
            parts.append(inner[start:index])
            start = index + 1
        index += 1
    parts.append(inner[start:])
    return parts
