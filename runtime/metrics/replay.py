"""The shape of the last scrape, replayed: when the engine's exposition has the same lines as last time except for
sample values (what an engine sends from one scrape to the next, nearly always), the rewriter's output is the last
output with the new values put in, found without running the state machine again.

A `Shape` is made by the rewriter (runtime/metrics/rewriter.py) from a scrape it rewrote line by line. It holds every
non-blank input line: a *fixed* line (comment, invalid line, sample with a timestamp or an exemplar) must come back
byte for byte; a *varying* line is a sample the rewriter validated by its text before the value (`name{labels} `),
so it may come back with any value of the safe form (digits, exponent, `Inf`, `NaN`; no overflow). Every output
line made from a varying line is its constant start plus that value (divided, for a unit-converted copy). Whether an
input fits is checked with C-level operations over the whole body (split, compare, one regular expression over all
the values), then the output is the constant pieces and the values interleaved: about 25 µs per hundred
lines, where the state machine takes about 100 µs.

Anything else (a line added, removed or changed, a value of another form) does not fit, and the rewriter runs line
by line as before and makes a new shape (ever more rarely while answers keep not fitting: `RewriteCache`):
replaying never changes the output, only its cost. The property test in
tests/unit/test_rewriter_fuzz.py checks that on generated and corrupted expositions.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from runtime.metrics.textformat import SAFE_VALUE_RE, divided_value

_SAFE = SAFE_VALUE_RE.pattern
VALUES_RE = re.compile(b"(?:" + _SAFE + b")(?:\n(?:" + _SAFE + b"))*")  # values joined by newlines


_slice = cast(Callable[[bytes, slice], bytes], operator.getitem)


def _picker(indices: Sequence[int]) -> Callable[[Sequence[bytes]], tuple[bytes, ...]]:
    """`operator.itemgetter` that always returns a tuple (it returns the item itself for one index)."""
    if not indices:
        return lambda _items: ()
    if len(indices) == 1:
        only = indices[0]
        return lambda items: (items[only],)
    return operator.itemgetter(*indices)


@dataclass(frozen=True, slots=True)
class Counts:
    """What the rewriter counted on the scrape the shape was made from; the same for every input that fits."""

    sample_lines: int
    invalid_lines: int
    omitted_lines: int
    families_by_engine: Counter[str]


class Shape:
    def __init__(
        self,
        lines: Sequence[bytes],
        starts: Sequence[int],
        pieces: Sequence[bytes],
        slots: Sequence[int],
        divisions: Sequence[tuple[int, float]],
        counts: Counts,
    ) -> None:
        """`lines`: the input's non-blank lines; `starts[i]`: where the value of varying line i starts (0: fixed);
        `pieces`: the output's constant text, one more than `slots`, which names the varying value (its index among
        the varying lines) that goes after each piece; `divisions`: (slot, divisor) for unit-converted values."""
        varying = [index for index, start in enumerate(starts) if start]
        fixed = [index for index, start in enumerate(starts) if not start]
        self._line_count = len(lines)
        self._fixed_at = _picker(fixed)
        self._fixed = tuple(lines[index] for index in fixed)
        self._varying_at = _picker(varying)
        self._keys = tuple(lines[index][: starts[index]] for index in varying)
        self._value_slices = tuple(slice(starts[index], None) for index in varying)
        self._pieces = list(pieces)
        self._slot_values = _picker(slots)
        self._divisions = tuple(divisions)
        self.counts = counts

    def apply(self, body: bytes) -> bytes | None:
        """The rewritten output for `body`, or None when `body` does not have this shape."""
        if b"\r" in body:  # as the rewriter reads lines: CRLF is a line end, a lone CR at the very end is dropped
            body = body.replace(b"\r\n", b"\n").removesuffix(b"\r")
        lines = list(filter(None, body.split(b"\n")))
        if len(lines) != self._line_count or self._fixed_at(lines) != self._fixed:
            return None
        varying = self._varying_at(lines)
        if not all(map(bytes.startswith, varying, self._keys)):
            return None
        values: list[bytes] = list(map(_slice, varying, self._value_slices))  # C-level slicing
        if values and VALUES_RE.fullmatch(b"\n".join(values)) is None:
            return None
        filled = list(self._slot_values(values))
        for slot, divisor in self._divisions:
            filled[slot] = divided_value(filled[slot], divisor)
        pieces: list[bytes] = [b""] * (2 * len(filled) + 1)
        pieces[0::2] = self._pieces
        pieces[1::2] = filled
        return b"".join(pieces)


class ShapeRecorder:
    """What the rewriter notes while it rewrites line by line, to make the scrape's `Shape` at the end."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []  # every non-blank input line, in order
        self.taken: list[bytes] = []  # output lines taken before the end of the scrape
        self.starts: list[int] = []  # per line: where its value starts when it is a varying line, else 0
        # id of an output line made from an input line -> (that output line, input line index, divisor or None);
        # the output line is held so that its id cannot be reused by another object during the scrape
        self.derived: dict[int, tuple[bytes, int, float | None]] = {}

    def shape(self, out: Sequence[bytes], counts: Counts) -> Shape | None:
        """The shape of this scrape, whose output lines are `out`; None if an output line cannot be explained."""
        lines, starts = self.lines, self.starts
        value_index: dict[int, int] = {}
        for index, start in enumerate(starts):
            if start:
                value_index[index] = len(value_index)
        passed_through = {id(lines[index]): index for index in value_index}  # raw lines are the input's objects
        pieces: list[bytes] = []
        slots: list[int] = []
        divisions: list[tuple[int, float]] = []
        pending: list[bytes] = []
        for item in out:
            found = self.derived.get(id(item))
            if found is not None and found[0] is item and found[1] in value_index:
                _item, index, divisor = found
            elif id(item) in passed_through and lines[passed_through[id(item)]] is item:
                index, divisor = passed_through[id(item)], None
            else:
                pending += (item, b"\n")
                continue
            value = lines[index][starts[index] :]
            tail = value if divisor is None else divided_value(value, divisor)
            if not item.endswith(tail):
                return None  # never replay what cannot be shown to be constant text plus the value
            pending.append(item[: len(item) - len(tail)])
            pieces.append(b"".join(pending))
            pending = [b"\n"]
            if divisor is not None:
                divisions.append((len(slots), divisor))
            slots.append(value_index[index])
        pieces.append(b"".join(pending))
        return Shape(lines, starts, pieces, slots, divisions, counts)
