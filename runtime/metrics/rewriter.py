"""The streaming rewriter: engine exposition bytes in, raw families plus unified copies out, one line at a time.

It never builds a metric model and never re-renders the engine's lines: a raw line is passed through as the same
bytes (less an OpenMetrics exemplar), and a unified sample is the new family name joined to the original line's
labels, value and timestamp. The unified copy of a family (HELP, TYPE, every sample) is emitted as a whole right
after the raw family ends, so the output keeps every family contiguous with one TYPE line.

Sample names are matched against the family they belong to, so counters keep `_total`, histograms keep
`_bucket/_sum/_count`, and `_created` series are left out of unified copies. When several engine names feed one
unified family (engine-version drift), the copies are held to the end of the scrape and only the preferred one is
emitted. Lines that are not valid text exposition are dropped and counted.

Input is text format 0.0.4 (what engines serve for `Accept: text/plain;version=0.0.4`); OpenMetrics input is turned
into valid 0.0.4 output where that is a line-level change: `# EOF`/`# UNIT` lines and exemplars are dropped,
`_created` samples inside a family are dropped, and a counter's HELP/TYPE names get the `_total` of its samples.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

from runtime.metrics.rules import RuleSet, SourceRule

_NAME = rb"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = rb'[a-zA-Z_][a-zA-Z0-9_]*[ \t]*=[ \t]*"[^"\\\n]*(?:\\.[^"\\\n]*)*"'
_LABELS = rb"\{[ \t]*(?:" + _LABEL + rb"(?:[ \t]*,[ \t]*" + _LABEL + rb")*[ \t]*,?[ \t]*)?\}"
_VALUE = rb"(?:[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?i:inf(?:inity)?)|(?i:nan))"
# A sample line. Groups: 1 the name, 2 labels+value+timestamp (the part a unified copy reuses), 3 the labels,
# 4 a trailing `#...` (an OpenMetrics exemplar, checked apart).
_SAMPLE_RE = re.compile(
    rb"(" + _NAME + rb")((" + _LABELS + rb")?[ \t]*(?<=[ \t}])" + _VALUE + rb"(?:[ \t]+-?[0-9]+)?)[ \t]*(#.*)?"
)
_VALUE_RE = re.compile(_VALUE)
_BODY_RE = re.compile(rb"(\{.*\})?([ \t]*)(" + _VALUE + rb")(.*)$", re.DOTALL)
_LE_RE = re.compile(rb'((?:^|[{,])[ \t]*le[ \t]*=[ \t]*")([^"]*)(")')
_EXEMPLAR_RE = re.compile(rb"#[ \t]*(?:\{.*)?")
_COMMENT_RE = re.compile(rb"#[ \t]+(HELP|TYPE|UNIT)[ \t]+(" + _NAME + rb")(?:[ \t]+(.*))?")

_OPENMETRICS_ONLY_KINDS = {b"unknown", b"gaugehistogram", b"info", b"stateset"}
_TEXT_KINDS = {b"counter", b"gauge", b"histogram", b"summary", b"untyped"}

# For each kind: sample-name suffix (relative to the family name) -> suffix of the unified sample, or None to leave
# the sample out of unified copies. Counters are keyed on the name without `_total`; see _member_map.
_HISTOGRAM_SUFFIXES: dict[bytes, bytes | None] = {
    b"_bucket": b"_bucket",
    b"_sum": b"_sum",
    b"_count": b"_count",
    b"_created": None,
}
_SUMMARY_SUFFIXES: dict[bytes, bytes | None] = {b"": b"", b"_sum": b"_sum", b"_count": b"_count", b"_created": None}


@dataclass(slots=True)
class _Copy:
    """The unified copy of one engine family under construction."""

    rule: SourceRule
    target_base: bytes
    samples: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class _Family:
    name: bytes
    kind: bytes
    members: dict[bytes, bytes | None]
    rules: list[SourceRule]
    help_text: bytes | None = None
    header_lines: list[bytes] = field(default_factory=list)  # raw HELP/TYPE, emitted with the first sample
    has_samples: bool = False
    copies: list[_Copy] = field(default_factory=list)


class RewriteCache:
    """What repeats from one scrape of an engine to the next, kept by the scraper across scrapes.

    `samples` maps the text of a sample line before its value (`name{labels}`) to its name and labels, so a line
    seen before is validated by checking only its value; `families` maps (name, kind) to the family's sample
    names and rules; `comments` holds parsed HELP/TYPE lines. All are bounded: cleared when they outgrow
    `limit` entries.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.samples: dict[bytes, tuple[bytes, bytes | None]] = {}
        self.comments: dict[bytes, tuple[bytes, bytes, bytes] | None] = {}
        self.families: dict[tuple[bytes, bytes], tuple[dict[bytes, bytes | None], list[SourceRule]]] = {}
        self.limit = limit

    def trim(self) -> None:
        if len(self.samples) > self.limit:
            self.samples.clear()
        if len(self.comments) > self.limit:
            self.comments.clear()
        if len(self.families) > self.limit:
            self.families.clear()


class MetricsRewriter:
    """Feed exposition bytes in chunks; collect output with `take()` after `feed()`/`finish()`.

    Output pieces are lines without their newline; `take_bytes()` joins them into exposition text.
    """

    def __init__(self, rules: RuleSet, keep_raw: bool = True, cache: RewriteCache | None = None) -> None:
        self._rules_by_source = rules.by_source_bytes
        self._target_order = rules.targets_bytes
        self._keep_raw = keep_raw
        self._cache = cache if cache is not None else RewriteCache()
        self._out: list[bytes] = []
        self._partial = b""
        self._family: _Family | None = None
        self._help: tuple[bytes, bytes, bytes] | None = None  # a HELP line (name, text, raw) waiting for its TYPE
        self._emitted_targets: set[bytes] = set()
        self._pending: dict[bytes, tuple[int, list[bytes]]] = {}
        self.invalid_lines = 0
        self.sample_lines = 0
        self.families_by_engine: Counter[str] = Counter()  # engine families recognised, per engine table

    # -- input -----------------------------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        data = self._partial + chunk if self._partial else chunk
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if cut:
            self._lines(data[: cut - 1])

    def finish(self) -> None:
        if self._partial:
            self._lines(self._partial)
            self._partial = b""
        self._close_help()
        self._end_family()
        for target in self._target_order:
            held = self._pending.pop(target, None)
            if held is not None:
                self._out.extend(held[1])
        self._cache.trim()

    def take(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def take_bytes(self) -> bytes:
        out = self.take()
        return b"\n".join(out) + b"\n" if out else b""

    # -- lines -----------------------------------------------------------------------------------------------
    def _lines(self, block: bytes) -> None:
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n").removesuffix(b"\r")
        out = self._out
        keep_raw = self._keep_raw
        known = self._cache.samples
        value_ok = _VALUE_RE.fullmatch
        for line in block.split(b"\n"):
            if not line:
                continue
            if line[0] == 0x23:  # '#'
                self._comment(line)
                continue
            cut = line.rfind(b" ")
            entry = known.get(line[:cut]) if cut > 0 else None
            if entry is not None and value_ok(line, cut + 1) is not None:
                name, labels = entry
            else:
                parsed = self._parse_sample(line, cut)
                if parsed is None:
                    continue
                name, labels, line = parsed
            if self._help is not None:
                self._close_help()
            family = self._family
            if family is None or name not in family.members:
                self._end_family()
                family = self._family = self._implicit_family(name)
            self.sample_lines += 1
            out_suffix = family.members[name]
            if out_suffix is None and family.kind != b"untyped":
                continue  # an OpenMetrics `_created` sample inside its family: not text format 0.0.4
            if not family.has_samples:
                family.has_samples = True
                self._emit_raw_headers(family, name)
            if keep_raw:
                out.append(line)
            if out_suffix is None or not family.copies:
                continue
            body = line[len(name) :]
            for copy in family.copies:
                copy_body = body
                match_label = copy.rule.match_label
                if match_label is not None:
                    selected = _without_label(body, labels, match_label)
                    if selected is None:
                        continue
                    copy_body = selected
                if copy.rule.divide_by is not None:
                    copy_body = _converted(copy_body, out_suffix, copy.rule.divide_by)
                copy.samples.append(copy.target_base + out_suffix + copy_body)

    def _parse_sample(self, line: bytes, cut: int) -> tuple[bytes, bytes | None, bytes] | None:
        """Validate a sample line not seen before: (name, labels, the line less any exemplar), or None."""
        match = _SAMPLE_RE.fullmatch(line)
        if match is None:
            self.invalid_lines += 1
            return None
        name, labels, trailer = match.group(1), match.group(3), match.group(4)
        if trailer is not None:
            if _EXEMPLAR_RE.fullmatch(trailer) is None:
                self.invalid_lines += 1
                return None
            return name, labels, line[: match.end(2)]
        if cut > 0 and match.end(2) == len(line) and _VALUE_RE.fullmatch(line, cut + 1) is not None:
            self._cache.samples[line[:cut]] = (name, labels)  # `name{labels} VALUE`: the value alone varies
        return name, labels, line

    def _comment(self, line: bytes) -> None:
        comments = self._cache.comments
        if line in comments:
            parsed = comments[line]
        else:
            match = _COMMENT_RE.fullmatch(line)
            parsed = comments[line] = (match.group(1), match.group(2), match.group(3) or b"") if match else None
        if parsed is None:
            if line.startswith((b"# HELP", b"# TYPE")):
                self.invalid_lines += 1
            return  # free comments and `# EOF` carry no samples
        keyword, name, rest = parsed
        if keyword == b"UNIT":
            return
        if keyword == b"HELP":
            self._close_help()
            self._help = (name, rest, line)
            return
        kind = rest.strip().lower()
        if kind in _OPENMETRICS_ONLY_KINDS:
            kind = b"untyped"
        elif kind not in _TEXT_KINDS:
            self.invalid_lines += 1
            return
        help_line = self._help
        self._help = None
        family = self._family
        if help_line is None and family is not None and family.name == name and not family.has_samples:
            if family.kind != b"untyped" or family.help_text is None:  # a second TYPE for one family
                self.invalid_lines += 1
                return
            help_line = (name, family.help_text, family.header_lines[0])  # TYPE after HELP and free comments
            self._family = None
        elif help_line is not None and help_line[0] != name:
            self._help = help_line
            self._close_help()
            help_line = None
        self._end_family()
        family = self._family = self._new_family(name, kind)
        if help_line is not None:
            family.help_text = help_line[1]
            family.header_lines.append(help_line[2])
        family.header_lines.append(line if rest == kind else b"# TYPE %s %s" % (name, kind))

    def _close_help(self) -> None:
        """A HELP line not followed by its TYPE opens an untyped family of its own."""
        help_line = self._help
        if help_line is None:
            return
        self._help = None
        name, text, raw = help_line
        family = self._family
        if family is not None and family.name == name and not family.has_samples and family.help_text is None:
            family.help_text = text  # TYPE came first
            family.header_lines.insert(0, raw)
            return
        self._end_family()
        family = self._family = self._new_family(name, b"untyped")
        family.help_text = text
        family.header_lines.append(raw)

    # -- families --------------------------------------------------------------------------------------------
    def _new_family(self, name: bytes, kind: bytes) -> _Family:
        template = self._cache.families.get((name, kind))
        if template is None:
            lookup = _counter_base(name) + b"_total" if kind == b"counter" else name
            rules = self._rules_by_source.get(lookup) or self._rules_by_source.get(name) or []
            template = self._cache.families[(name, kind)] = (_member_map(name, kind), rules)
        members, rules = template
        family = _Family(name=name, kind=kind, members=members, rules=rules)
        if rules:
            family.copies = [_Copy(rule=rule, target_base=_target_base(rule)) for rule in rules if self._wanted(rule)]
        return family

    def _implicit_family(self, sample_name: bytes) -> _Family:
        """A family met through a sample with no HELP/TYPE before it: typed by the rule that claims it, if any."""
        rules = self._rules_by_source.get(sample_name)
        if rules:
            return self._new_family(sample_name, rules[0].kind.encode())
        for suffix in (b"_bucket", b"_sum", b"_count", b"_created"):
            if sample_name.endswith(suffix):
                base = sample_name[: -len(suffix)]
                rules = self._rules_by_source.get(base)
                if rules and rules[0].kind in ("histogram", "summary"):
                    return self._new_family(base, rules[0].kind.encode())
        return self._new_family(sample_name, b"untyped")

    def _wanted(self, rule: SourceRule) -> bool:
        target = rule.target.encode()
        if target in self._emitted_targets:
            return False
        return not (self._keep_raw and rule.source == rule.target)

    def _emit_raw_headers(self, family: _Family, first_sample: bytes) -> None:
        if not self._keep_raw or not family.header_lines:
            return
        headers = family.header_lines
        if family.kind == b"counter" and not family.name.endswith(b"_total") and first_sample.endswith(b"_total"):
            # OpenMetrics names the counter family without `_total`; text 0.0.4 names it as its samples.
            headers = [h.replace(b" " + family.name + b" ", b" " + first_sample + b" ", 1) for h in headers]
        self._out.extend(headers)
        family.header_lines = []

    def _end_family(self) -> None:
        family = self._family
        if family is None:
            return
        self._family = None
        if family.header_lines and self._keep_raw and not family.has_samples:
            self._out.extend(family.header_lines)
        if family.has_samples and family.copies:
            self.families_by_engine.update({copy.rule.engine for copy in family.copies})
        for copy in family.copies:
            if not copy.samples:
                continue
            target = copy.rule.target.encode()
            kind = family.kind if family.kind != b"untyped" else copy.rule.kind.encode()
            lines = []
            if family.help_text is not None:
                help_text = family.help_text
                if copy.rule.divide_by is not None:
                    help_text += b" [unit converted by airuntime: engine values divided by %g]" % copy.rule.divide_by
                lines.append(b"# HELP %s %s" % (target, help_text))
            lines.append(b"# TYPE %s %s" % (target, kind))
            lines.extend(copy.samples)
            if copy.rule.contested:
                held = self._pending.get(target)
                if held is None or copy.rule.priority < held[0]:
                    self._pending[target] = (copy.rule.priority, lines)
            elif target not in self._emitted_targets:
                self._emitted_targets.add(target)
                self._out.extend(lines)


def _counter_base(name: bytes) -> bytes:
    return name[:-6] if name.endswith(b"_total") else name


def _target_base(rule: SourceRule) -> bytes:
    target = rule.target.encode()
    return _counter_base(target) if rule.kind == "counter" else target


def _member_map(name: bytes, kind: bytes) -> dict[bytes, bytes | None]:
    """Sample names that belong to family `name` of `kind`, each with the suffix its unified copy gets."""
    if kind == b"counter":
        base = _counter_base(name)
        return {name: b"_total", base + b"_total": b"_total", base + b"_created": None}
    if kind == b"histogram":
        return {name + suffix: out for suffix, out in _HISTOGRAM_SUFFIXES.items()}
    if kind == b"summary":
        return {name + suffix: out for suffix, out in _SUMMARY_SUFFIXES.items()}
    return {name: b""}


def _without_label(body: bytes, labels: bytes | None, pair: bytes) -> bytes | None:
    """`body` (labels, value, timestamp) with label `pair` removed, or None when the sample does not carry it."""
    if not labels:
        return None
    parts = [part.strip(b" \t") for part in _split_labels(labels[1:-1])]
    if pair not in parts:
        return None
    kept = [part for part in parts if part and part != pair]
    rest = body[len(labels) :]
    return b"{" + b",".join(kept) + b"}" + rest if kept else rest


def _converted(body: bytes, out_suffix: bytes, divide_by: float) -> bytes:
    """Unit conversion of one sample: `le` of buckets, the value of sums, counters, gauges and quantiles."""
    parts = _BODY_RE.match(body)
    if parts is None:  # pragma: no cover - body always matched _SAMPLE_RE
        return body
    labels, gap, value, tail = parts.groups()
    if out_suffix == b"_bucket":
        if labels is None:
            return body
        labels = _LE_RE.sub(lambda m: m.group(1) + _divided(m.group(2), divide_by) + m.group(3), labels)
        return labels + gap + value + tail
    if out_suffix == b"_count":
        return body
    return (labels or b"") + gap + _divided(value, divide_by) + tail


def _divided(text: bytes, divide_by: float) -> bytes:
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


def rewrite_bytes(payload: bytes, rules: RuleSet, keep_raw: bool = True) -> tuple[bytes, MetricsRewriter]:
    """Rewrite a whole payload; returns the output and the rewriter (for its counts)."""
    rewriter = MetricsRewriter(rules, keep_raw=keep_raw)
    rewriter.feed(payload)
    rewriter.finish()
    return rewriter.take_bytes(), rewriter
