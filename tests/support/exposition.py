"""Small readers of text exposition for assertions (independent of the code under test)."""

from __future__ import annotations

import re
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

_TYPE_RE = re.compile(rb"^# TYPE (\S+) (\S+)$", re.MULTILINE)


def families_of(text: bytes) -> dict[str, str]:
    """Family name -> TYPE from the `# TYPE` lines; fails on a family typed twice."""
    found = _TYPE_RE.findall(text)
    counts = Counter(name for name, _ in found)
    duplicated = [name.decode() for name, count in counts.items() if count > 1]
    assert not duplicated, f"families typed more than once: {duplicated}"
    return {name.decode(): kind.decode() for name, kind in found}


def sample_lines(text: bytes) -> list[bytes]:
    return [line for line in text.split(b"\n") if line and not line.startswith(b"#")]


def sample_values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, labels) -> value, parsed by prometheus_client's own parser."""
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values
