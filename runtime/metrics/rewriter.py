"""The streaming rewriter: engine exposition bytes in, raw families plus unified copies out, one line at a time.

It never builds a metric model and never re-renders the engine's lines: a raw line is passed through as the same
bytes (less an OpenMetrics exemplar), and a unified sample is the new family name joined to the original line's
labels, value and timestamp. The unified copy of a family (HELP, TYPE, every sample) is emitted as a whole right
after the raw family ends, so the output keeps every family contiguous with one TYPE line.

Sample names are matched against the family they belong to, so counters keep `_total`, histograms keep
`_bucket/_sum/_count`, and `_created` series are left out of unified copies. When several engine names feed one
unified family (engine-version drift), the copies are held to the end of the scrape and only the preferred one is
emitted. Lines that are not valid text exposition are dropped and counted.

The contract, checked on arbitrary bytes by tests/unit/test_rewriter_fuzz.py and tests/fuzz/: `feed`/`finish` never
raise; the output is UTF-8 that `promtool check metrics` and prometheus_client parse, however the input is chunked;
every non-blank input line is kept (raw mode), or counted once in `invalid_lines` (not valid text exposition, or it
would make the output invalid: a second HELP/TYPE of a family, a TYPE after the family's samples, a non-number `le`
in a histogram), or counted once in `omitted_lines` (dropped on purpose: free comments, `# EOF`, `# UNIT`, `_created`
samples). For that the rewriter keeps one thing per scrape besides the current family: the family names written so
far, resolved the way promtool resolves `_sum/_count/_bucket` sample names to their family.

Most scrapes never run the state machine: when the input has the last scrape's lines with new values, the cache's
`Shape` (runtime/metrics/replay.py) writes the same output the state machine would, from C-level operations over the
whole body; the rewriter collects the chunks and tries it at `finish`, and rewrites line by line only when the input
does not fit (then the shape is made anew).

Input is text format 0.0.4 (what engines serve for `Accept: text/plain;version=0.0.4`); OpenMetrics input is turned
into valid 0.0.4 output where that is a line-level change: `# EOF`/`# UNIT` lines and exemplars are dropped,
`_created` samples inside a family are dropped, and a counter's HELP/TYPE names get the `_total` of its samples.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from runtime.metrics.replay import Counts, Shape, ShapeRecorder
from runtime.metrics.rules import RuleSet, SourceRule
from runtime.metrics.textformat import (
    COMMENT_RE,
    EXEMPLAR_RE,
    HELP_TEXT_RE,
    META_RE,
    NUMERIC_LABELS,
    OPENMETRICS_ONLY_KINDS,
    SAFE_VALUE_RE,
    SAMPLE_RE,
    SUMMARY_OR_HISTOGRAM,
    TEXT_KINDS,
    converted,
    counter_base,
    divides_value,
    in_range,
    is_utf8,
    label_flags,
    member_map,
    without_label,
)


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
    help_line: bytes | None = None  # raw HELP and TYPE lines, emitted with the first sample
    type_line: bytes | None = None
    has_samples: bool = False
    copies: list[_Copy] = field(default_factory=list)
    copy_flags: int = 0  # label flags that rule a sample out of this family's unified copies


@dataclass(slots=True)
class _Written:
    """A family as promtool sees it so far: its TYPE (None before any TYPE or sample) and whether it had a HELP."""

    kind: bytes | None
    helped: bool


@dataclass(slots=True)
class _HeldCopy:
    """A unified family held to the end of the scrape (its target has several sources)."""

    priority: int
    kind: bytes
    has_help: bool
    names: tuple[bytes, ...]
    lines: list[bytes]


class RewriteCache:
    """What repeats from one scrape of an engine to the next, kept by the scraper across scrapes.

    `samples` maps the text of a sample line before its value (`name{labels}`) to its name, labels and label flags,
    so a line seen before is validated by checking only its value; `families` maps (name, kind) to the family's
    sample names and rules; `comments` holds parsed HELP/TYPE lines. All are bounded: cleared when they outgrow
    `limit` entries. `shape` is the last scrape's shape, replayed when the next input fits it; after two misses
    in a row (an engine that stamps its samples with the time, say), no shape is made for 4, 8, ... up to 64
    scrapes, so an input that never fits costs little more than the state machine alone.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.samples: dict[bytes, tuple[bytes, bytes | None, int]] = {}
        self.comments: dict[bytes, tuple[bytes, bytes, bytes] | None] = {}
        self.families: dict[tuple[bytes, bytes], tuple[dict[bytes, bytes | None], list[SourceRule]]] = {}
        self.shape: Shape | None = None  # the last scrape's shape (runtime/metrics/replay.py)
        self.misses = 0  # scrapes in a row that did not fit the shape made just before them
        self.rest = 0  # scrapes still to go without making a shape (an engine whose answers never fit)
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
        self._shape = self._cache.shape  # while set, input is only collected, then replayed at `finish`
        self._chunks: list[bytes] = []
        self._body: bytes | None = None  # the whole output, when the shape was replayed
        self._recorder = ShapeRecorder()
        self._out: list[bytes] = []
        self._partial: list[bytes] = []  # the start of a line not yet ended by a newline
        self._family: _Family | None = None
        self._help: tuple[bytes, bytes, bytes] | None = None  # a HELP line (name, text, raw) waiting for its TYPE
        self._emitted_targets: set[bytes] = set()
        self._pending: dict[bytes, _HeldCopy] = {}
        self._written: dict[bytes, _Written] = {}  # families in the output so far, by name
        self._recorded: set[bytes] = set()  # raw sample names recorded in _written (recording again changes nothing)
        self.invalid_lines = 0
        self.omitted_lines = 0
        self.sample_lines = 0
        self.families_by_engine: Counter[str] = Counter()  # engine families recognised, per engine table

    # -- input -----------------------------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._shape is not None:
            self._chunks.append(chunk)
            return
        self._feed_lines(chunk)

    def _feed_lines(self, chunk: bytes) -> None:
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            self._partial.append(chunk)  # joined once its line ends: no copying per chunk of a long line
            return
        block = chunk[: cut - 1]
        if self._partial:
            self._partial.append(block)
            block = b"".join(self._partial)
            self._partial = []
        self._lines(block)
        if cut < len(chunk):
            self._partial.append(chunk[cut:])

    def finish(self) -> None:
        shape = self._shape
        if shape is not None:
            self._shape = None
            body = b"".join(self._chunks)
            self._chunks = []
            replayed = shape.apply(body)
            if replayed is not None:
                self._cache.misses = 0
                self._body = replayed
                counts = shape.counts
                self.sample_lines = counts.sample_lines
                self.invalid_lines = counts.invalid_lines
                self.omitted_lines = counts.omitted_lines
                self.families_by_engine = Counter(counts.families_by_engine)
                return
            self._cache.shape = None
            self._cache.misses += 1
            if self._cache.misses >= 2:
                self._cache.rest = 2 ** min(self._cache.misses, 6)
            self._feed_lines(body)  # line by line after all; the output is the same however the input is chunked
        if self._partial:
            block = b"".join(self._partial)
            self._partial = []
            self._lines(block)
        self._close_help()
        self._end_family()
        for target in self._target_order:
            held = self._pending.pop(target, None)
            if held is not None:
                self._emit_copy(target, held)
        self._cache.trim()
        cache = self._cache
        if cache.rest > 0:
            cache.rest -= 1
        else:
            counts = Counts(self.sample_lines, self.invalid_lines, self.omitted_lines, Counter(self.families_by_engine))
            cache.shape = self._recorder.shape([*self._recorder.taken, *self._out], counts)
        self._recorder = ShapeRecorder()

    def take(self) -> list[bytes]:
        if self._body is not None:
            body, self._body = self._body, None
            return body.split(b"\n")[:-1]
        out, self._out = self._out, []
        self._recorder.taken += out
        return out

    def take_bytes(self) -> bytes:
        if self._body is not None:
            body, self._body = self._body, None
            return body
        out = self.take()
        return b"\n".join(out) + b"\n" if out else b""

    # -- lines -----------------------------------------------------------------------------------------------
    def _lines(self, block: bytes) -> None:
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n").removesuffix(b"\r")
        utf8 = block.isascii() or is_utf8(block)
        out = self._out
        keep_raw = self._keep_raw
        known = self._cache.samples
        recorded = self._recorded
        value_ok = SAFE_VALUE_RE.fullmatch
        traced, starts = self._recorder.lines, self._recorder.starts
        for line in block.split(b"\n"):
            if not line:
                continue
            traced.append(line)
            starts.append(0)
            if not utf8 and not is_utf8(line):
                self.invalid_lines += 1
                continue
            if line[0] == 0x23:  # '#'
                self._comment(line)
                continue
            cut = line.rfind(b" ")
            entry = known.get(line[:cut]) if cut > 0 else None
            if entry is not None and value_ok(line, cut + 1) is not None:
                name, labels, flags = entry
                starts[-1] = cut + 1  # the outcome depends on the text before the value only
            else:
                parsed = self._parse_sample(line, cut)
                if parsed is None:
                    continue
                if parsed[3] is line and cut > 0 and line[:cut] in known and value_ok(line, cut + 1) is not None:
                    starts[-1] = cut + 1  # cached just now: the next scrape takes the branch above
                name, labels, flags, line = parsed
            if self._help is not None:
                self._close_help()
            family = self._family
            if family is None or name not in family.members:
                self._end_family()
                family = self._family = self._implicit_family(name)
            out_suffix = family.members[name]
            if out_suffix is None and family.kind != b"untyped":
                self.sample_lines += 1
                self.omitted_lines += 1
                continue  # an OpenMetrics `_created` sample inside its family: not text format 0.0.4
            if not family.has_samples:
                family.has_samples = True
                self._emit_raw_headers(family, name)
            if flags and flags & (family.copy_flags | (self._numeric_labels(name) if keep_raw else 0)):
                self.invalid_lines += 1  # e.g. `le="abc"`: promtool rejects the whole exposition
                continue
            self.sample_lines += 1
            if keep_raw:
                if name not in recorded:
                    self._record_sample(name)
                out.append(line)
            if out_suffix is not None and family.copies:
                _add_to_copies(family.copies, line[len(name) :], labels, out_suffix, self._recorder, len(starts) - 1)

    def _parse_sample(self, line: bytes, cut: int) -> tuple[bytes, bytes | None, int, bytes] | None:
        """Validate a sample line not seen before: (name, labels, label flags, the line less any exemplar), or None."""
        match = SAMPLE_RE.fullmatch(line)
        if match is None or not in_range(match.group(4)):
            self.invalid_lines += 1
            return None
        name, labels, trailer = match.group(1), match.group(3), match.group(5)
        flags = label_flags(labels) if labels is not None else 0
        if flags < 0:
            self.invalid_lines += 1
            return None
        if trailer is not None:
            if EXEMPLAR_RE.fullmatch(trailer) is None:
                self.invalid_lines += 1
                return None
            return name, labels, flags, line[: match.end(2)]
        if cut > 0 and match.start(4) == cut + 1 and match.end(2) == len(line):
            self._cache.samples[line[:cut]] = (name, labels, flags)  # `name{labels} VALUE`: the value alone varies
        return name, labels, flags, line

    def _comment(self, line: bytes) -> None:
        comments = self._cache.comments
        if line in comments:
            parsed = comments[line]
        else:
            match = COMMENT_RE.fullmatch(line)
            parsed = (match.group(1), match.group(2), match.group(3) or b"") if match else None
            if parsed is not None and parsed[0] == b"HELP" and HELP_TEXT_RE.fullmatch(parsed[2]) is None:
                parsed = None  # an escape promtool rejects
            comments[line] = parsed
        if parsed is None:
            if META_RE.match(line):
                self.invalid_lines += 1
            else:
                self.omitted_lines += 1  # free comments and `# EOF` carry no samples
            return
        keyword, name, rest = parsed
        if keyword == b"UNIT":
            self.omitted_lines += 1
            return
        if keyword == b"HELP":
            self._close_help()
            self._help = (name, rest, line)
            return
        kind = rest.strip().lower()
        if kind in OPENMETRICS_ONLY_KINDS:
            kind = b"untyped"
        elif kind not in TEXT_KINDS or (kind == b"counter" and name == b"_total"):
            self.invalid_lines += 1  # a counter named `_total` has an empty family name (prometheus_client rejects it)
            return
        help_line = self._help
        self._help = None
        family = self._family
        if help_line is None and family is not None and family.name == name and not family.has_samples:
            if family.type_line is not None or family.help_line is None:  # a second TYPE for one family
                self.invalid_lines += 1
                return
            help_line = (name, family.help_text or b"", family.help_line)  # TYPE after HELP and free comments
            self._family = None
        elif help_line is not None and help_line[0] != name:
            self._close_help(help_line)
            help_line = None
        self._end_family()
        family = self._family = self._new_family(name, kind)
        if help_line is not None:
            family.help_text = help_line[1]
            family.help_line = help_line[2]
        family.type_line = line if rest == kind else b"# TYPE %s %s" % (name, kind)

    def _close_help(self, help_line: tuple[bytes, bytes, bytes] | None = None) -> None:
        """A HELP line (the one given, else the one waiting) not followed by its TYPE opens an untyped family of
        its own."""
        if help_line is None:
            help_line, self._help = self._help, None
            if help_line is None:
                return
        name, text, raw = help_line
        family = self._family
        if family is not None and family.name == name and not family.has_samples and family.help_line is None:
            family.help_text = text  # TYPE came first
            family.help_line = raw
            return
        self._end_family()
        family = self._family = self._new_family(name, b"untyped")
        family.help_text = text
        family.help_line = raw

    # -- families --------------------------------------------------------------------------------------------
    def _new_family(self, name: bytes, kind: bytes) -> _Family:
        template = self._cache.families.get((name, kind))
        if template is None:
            lookup = counter_base(name) + b"_total" if kind == b"counter" else name
            rules = self._rules_by_source.get(lookup) or self._rules_by_source.get(name) or []
            template = self._cache.families[(name, kind)] = (member_map(name, kind), rules)
        members, rules = template
        family = _Family(name=name, kind=kind, members=members, rules=rules)
        if rules:
            family.copies = [_Copy(rule=rule, target_base=_target_base(rule)) for rule in rules if self._wanted(rule)]
            for copy in family.copies:
                family.copy_flags |= NUMERIC_LABELS.get(_copy_kind(family, copy), 0)
        return family

    def _implicit_family(self, sample_name: bytes) -> _Family:
        """A family met through a sample with no HELP/TYPE before it: typed by the rule that claims it, if any."""
        rules = self._rules_by_source.get(sample_name)
        if rules:
            family = self._new_family(sample_name, rules[0].kind.encode())
            if sample_name in family.members:
                return family
            # A bare sample named as a histogram source is no member of that histogram: an untyped family.
            return self._new_family(sample_name, b"untyped")
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

    def _emit_raw_headers(self, family: _Family, first_sample: bytes | None) -> None:
        help_line, type_line = family.help_line, family.type_line
        family.help_line = family.type_line = None
        if not self._keep_raw or (help_line is None and type_line is None):
            return
        name = family.name
        if (
            family.kind == b"counter"
            and first_sample is not None
            and not name.endswith(b"_total")
            and first_sample.endswith(b"_total")
        ):
            # OpenMetrics names the counter family without `_total`; text 0.0.4 names it as its samples.
            name = first_sample
            if help_line is not None:
                help_line = b"# HELP " + name + (b" " + family.help_text if family.help_text else b"")
            if type_line is not None:
                type_line = b"# TYPE " + name + b" counter"
        if help_line is not None:
            if self._record_header(name, None):
                self._out.append(help_line)
            else:
                self.invalid_lines += 1  # a second HELP for a family already written
        if type_line is not None:
            if self._record_header(name, family.kind):
                self._out.append(type_line)
            else:
                self.invalid_lines += 1  # a second TYPE, or a TYPE after the family's samples

    def _end_family(self) -> None:
        family = self._family
        if family is None:
            return
        self._family = None
        if not family.has_samples:
            self._emit_raw_headers(family, None)
        if family.has_samples and family.copies:
            self.families_by_engine.update({copy.rule.engine for copy in family.copies})
        for copy in family.copies:
            if not copy.samples:
                continue
            target = copy.rule.target.encode()
            lines = []
            if family.help_text is not None:
                help_text = family.help_text
                if copy.rule.divide_by is not None:
                    help_text += b" [unit converted by airuntime: engine values divided by %g]" % copy.rule.divide_by
                lines.append(b"# HELP %s %s" % (target, help_text))
            kind = _copy_kind(family, copy)
            lines.append(b"# TYPE %s %s" % (target, kind))
            lines.extend(copy.samples)
            names = tuple({copy.target_base + suffix for suffix in family.members.values() if suffix is not None})
            held = _HeldCopy(copy.rule.priority, kind, family.help_text is not None, names, lines)
            if copy.rule.contested:
                pending = self._pending.get(target)
                if pending is None or copy.rule.priority < pending.priority:
                    self._pending[target] = held
            elif target not in self._emitted_targets:
                self._emitted_targets.add(target)
                self._emit_copy(target, held)

    # -- what the output holds so far, as promtool reads it ---------------------------------------------------
    def _resolve(self, name: bytes) -> _Written | None:
        """The family promtool files `name` under (HELP, TYPE or sample), if it is in the output already."""
        written = self._written
        found = written.get(name)
        if found is not None:
            return found
        if name.endswith(b"_bucket"):
            found = written.get(name[:-7])
            return found if found is not None and found.kind == b"histogram" else None
        if name.endswith(b"_sum"):
            found = written.get(name[:-4])
        elif name.endswith(b"_count"):
            found = written.get(name[:-6])
        else:
            return None
        return found if found is not None and found.kind in SUMMARY_OR_HISTOGRAM else None

    def _record_header(self, name: bytes, kind: bytes | None) -> bool:
        """Record a HELP (kind None) or TYPE line about to be written; False if promtool would reject it."""
        found = self._resolve(name)
        if found is None:
            self._written[name] = _Written(kind=kind, helped=kind is None)
            return True
        if kind is None:
            if found.helped:
                return False
            found.helped = True
            return True
        if found.kind is not None:
            return False
        found.kind = kind
        return True

    def _record_sample(self, name: bytes) -> None:
        self._recorded.add(name)
        found = self._resolve(name)
        if found is None:
            self._written[name] = _Written(kind=b"untyped", helped=False)
        elif found.kind is None:
            found.kind = b"untyped"  # a sample types its family: a TYPE after it is an error

    def _numeric_labels(self, name: bytes) -> int:
        """Label flags that rule out a raw sample named `name`: `le` in a histogram, `quantile` in a summary."""
        found = self._resolve(name)
        return NUMERIC_LABELS.get(found.kind, 0) if found is not None and found.kind is not None else 0

    def _emit_copy(self, target: bytes, held: _HeldCopy) -> None:
        """Write a unified family, unless one of its names is taken by a family the output already holds."""
        if any(self._resolve(name) is not None for name in (target, *held.names)):
            return
        self._written[target] = _Written(kind=held.kind, helped=held.has_help)
        for name in held.names:
            if self._resolve(name) is None:
                self._written[name] = _Written(kind=b"untyped", helped=False)
        self._out.extend(held.lines)


def _add_to_copies(
    copies: list[_Copy], body: bytes, labels: bytes | None, out_suffix: bytes, recorder: ShapeRecorder, index: int
) -> None:
    """One sample (its labels, value and timestamp: `body`) into every unified copy of its family that takes it;
    `recorder` learns which input line (`index`) each copy line comes from."""
    for copy in copies:
        copy_body = body
        match_label = copy.rule.match_label
        if match_label is not None:
            selected = without_label(body, labels, match_label)
            if selected is None:
                continue
            copy_body = selected
        divisor = copy.rule.divide_by
        if divisor is not None:
            copy_body = converted(copy_body, out_suffix, divisor)
        made = copy.target_base + out_suffix + copy_body
        copy.samples.append(made)
        recorder.derived[id(made)] = (
            made,
            index,
            divisor if divisor is not None and divides_value(out_suffix) else None,
        )


def _copy_kind(family: _Family, copy: _Copy) -> bytes:
    return family.kind if family.kind != b"untyped" else copy.rule.kind.encode()


def _target_base(rule: SourceRule) -> bytes:
    target = rule.target.encode()
    return counter_base(target) if rule.kind == "counter" else target
