"""Check Prometheus text expositions with the real `promtool check metrics` (Debian package `prometheus`).

What promtool 2.42.0 (Debian bookworm, `2.42.0+ds-5+deb12u1`) does with stdin, all output on **stderr**:

* exit 0, no output: the exposition parsed and is lint-clean (an empty input is also exit 0).
* exit 3, one line per problem, ``<metric name> <message>``: the exposition parsed, only lint findings, e.g.
  ``foo counter metrics should have "_total" suffix``, ``foo no help text``,
  ``airuntime:num_requests_running metric names should not contain ':'``,
  ``foo_milliseconds use base unit "seconds" instead of "milliseconds"``,
  ``fooBar metric names should be written in 'snake_case' not 'camelCase'``.
* exit 1, exactly one line ``error while linting: text format parsing error in line N: ...``: the text does
  not parse; promtool stops at the first error and prints no lint findings. Examples: a second HELP/TYPE for
  the same family (``second HELP line for metric name "foo"``), a TYPE after the family's samples, a bad
  value (``expected float as value, got "abc"``), a missing final newline (``unexpected end of input
  stream``), CRLF line ends (``unknown metric type "gauge\\r"``), duplicate or reserved label names.

promtool does NOT notice (exit 0): the same series (name + labels) twice, or a family whose samples are split
by another family when the second group has no HELP/TYPE lines, or histogram buckets without ``le="+Inf"``.
`structural_problems` covers the first two in Python; `assert_valid_exposition` runs both checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

PARSE_ERROR_PREFIX = "error while linting:"

# Lint the unified naming produces on purpose: `airuntime:*` and the raw `vllm:*` families use colons.
COLON_LINT = "metric names should not contain ':'"
DEFAULT_LINT_IGNORE: tuple[str, ...] = (COLON_LINT,)

EXIT_OK = 0
EXIT_PARSE_ERROR = 1
EXIT_LINT = 3


@dataclass(frozen=True)
class PromtoolResult:
    """Outcome of one `promtool check metrics` run."""

    returncode: int
    errors: list[str] = field(default_factory=list)  # parse errors ("error while linting: ...")
    lint: list[str] = field(default_factory=list)  # non-fatal lint findings ("<name> <message>")
    other: list[str] = field(default_factory=list)  # anything else promtool printed

    @property
    def problems(self) -> list[str]:
        return [*self.errors, *self.lint, *self.other]


def promtool_path() -> str | None:
    """Path of `promtool` (env PROMTOOL overrides the PATH lookup), or None if it is not installed."""
    explicit = os.environ.get("PROMTOOL")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("promtool")


def require_tool(name: str, path: str | None) -> str:
    """Return `path`; if it is None, skip the test, or fail it when env CI == "true" (CI must have it)."""
    if path is not None:
        return path
    message = f"{name} is not installed (Debian: apt-get install -y --no-install-recommends prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true requires it")
    pytest.skip(message)


def require_promtool() -> str:
    """`promtool_path()` or skip (fail under CI=true)."""
    return require_tool("promtool", promtool_path())


def run_promtool(text: bytes, promtool: str | None = None, timeout: float = 30.0) -> PromtoolResult:
    """Feed `text` to `promtool check metrics` on stdin and sort its stderr lines into errors and lint."""
    binary = promtool or require_promtool()
    proc = subprocess.run([binary, "check", "metrics"], input=text, capture_output=True, timeout=timeout, check=False)
    errors: list[str] = []
    lint: list[str] = []
    other: list[str] = []
    for raw in (proc.stderr + proc.stdout).decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith(PARSE_ERROR_PREFIX):
            errors.append(line)
        elif proc.returncode == EXIT_LINT:
            lint.append(line)
        else:
            other.append(line)
    if proc.returncode not in (EXIT_OK, EXIT_LINT) and not errors:
        # Unknown failure mode (crash, new promtool wording): never let it pass as "only lint".
        errors.append(f"promtool exited {proc.returncode}: {' | '.join(other) or '(no output)'}")
        other = []
    return PromtoolResult(proc.returncode, errors, lint, other)


def check_metrics(text: bytes) -> list[str]:
    """All problem lines promtool reports for `text` (parse errors and lint findings); [] when clean."""
    return run_promtool(text).problems


# --- checks promtool misses -------------------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_META_RE = re.compile(rf"^#\s+(HELP|TYPE)\s+({_NAME})(?:\s|$)")
_SAMPLE_RE = re.compile(rf"^({_NAME})\s*(\{{.*\}})?\s+\S+")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("_sum", "_count", "_created"),
    "counter": ("_total", "_created"),
}


def _labels_key(body: str | None) -> tuple[tuple[str, str], ...] | None:
    """Sorted (name, value) pairs of a `{...}` label block; None if it does not parse (promtool says so)."""
    if not body:
        return ()
    inner = body[1:-1]
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(inner):
        match = _LABEL_RE.match(inner, pos)
        if match is None:
            return None if inner[pos:].strip() else tuple(sorted(pairs))
        pairs.append((match.group(1), match.group(2)))
        pos = match.end()
    return tuple(sorted(pairs))


def structural_problems(text: bytes) -> list[str]:
    """Duplicate series and split families: exposition-format violations `promtool check metrics` accepts.

    Lines that do not parse are ignored here (promtool reports those).
    """
    types: dict[str, str] = {}
    family_of_line: list[tuple[int, str, str | None]] = []  # (line no, family, series key or None for meta)
    lines = text.decode("utf-8", "replace").split("\n")
    for number, line in enumerate(lines, start=1):
        meta = _META_RE.match(line)
        if meta:
            if meta.group(1) == "TYPE":
                types[meta.group(2)] = line.split()[3] if len(line.split()) > 3 else "untyped"
            family_of_line.append((number, meta.group(2), None))
            continue
        if not line.strip() or line.startswith("#"):
            continue
        sample = _SAMPLE_RE.match(line)
        if sample is None:
            continue
        key = _labels_key(sample.group(2))
        if key is None:
            continue
        family_of_line.append((number, sample.group(1), repr((sample.group(1), key))))

    def family(name: str) -> str:
        if name in types:
            return name
        for base, kind in types.items():
            if any(name == base + suffix for suffix in _SUFFIXES.get(kind, ())):
                return base
            # A counter declared as `foo_total` still gets `foo_created`.
            if kind == "counter" and base.endswith("_total") and name == base[: -len("_total")] + "_created":
                return base
        return name

    problems: list[str] = []
    seen_series: dict[str, int] = {}
    finished: set[str] = set()
    current: str | None = None
    for number, name, series in family_of_line:
        fam = family(name)
        if fam != current:
            if current is not None:
                finished.add(current)
            if fam in finished:
                problems.append(f"line {number}: family {fam!r} continues after another family started")
            current = fam
        if series is not None:
            if series in seen_series:
                first = seen_series[series]
                problems.append(f"line {number}: duplicate series {series} (first at line {first})")
            else:
                seen_series[series] = number
    return problems


def assert_valid_exposition(
    text: bytes,
    *,
    lint_clean: bool = False,
    lint_ignore: Iterable[str] = DEFAULT_LINT_IGNORE,
    structural: bool = True,
) -> PromtoolResult:
    """Fail the test if `text` is not a valid Prometheus text exposition.

    By default only real format errors fail (promtool exit 1, plus `structural_problems` unless
    `structural=False`); lint findings are tolerated. With `lint_clean=True` lint findings fail too, except
    those containing any of `lint_ignore` (default: the colon warning, which every `airuntime:`/`vllm:` name
    triggers). Skips when promtool is missing (fails under CI=true). Returns the promtool result.
    """
    result = run_promtool(text)
    failures = [*result.errors, *result.other]
    if structural:
        failures += structural_problems(text)
    if lint_clean:
        ignore = tuple(lint_ignore)
        failures += [line for line in result.lint if not any(part in line for part in ignore)]
    if failures:
        preview = text[:2000].decode("utf-8", "replace")
        pytest.fail(
            "invalid exposition:\n  " + "\n  ".join(failures) + f"\n--- first 2000 bytes ---\n{preview}",
            pytrace=False,
        )
    return result
