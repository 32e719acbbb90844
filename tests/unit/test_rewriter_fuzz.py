"""Property tests of the exposition rewriter on generated input (issue 7, fuzzing); the shared checker is tests/fuzz.

Two input strategies: arbitrary bytes (CR, NUL, invalid UTF-8, long lines, no final newline) and "almost valid"
expositions built from a grammar over the real engine tables (so renames fire), then corrupted. Whatever the input
and however it is chunked, the rewriter must not raise, must write UTF-8 that prometheus_client parses, and must keep
or count every input line (`tests/fuzz/invariants.py`). The e2e tests feed generated outputs to `promtool check
metrics` in batches and run the atheris harness (tests/fuzz/fuzz_rewriter.py) for a bounded time.

Profiles: `ci` (default; derandomized, so CI runs the same examples every time) and `long`
(`HYPOTHESIS_PROFILE=long`, thousands of random examples).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from runtime.metrics.rewriter import RewriteCache
from tests.fuzz.invariants import RULES, check_rewrite, input_lines, rewrite_chunked
from tests.support.fake_engine import FIXTURES
from tests.support.promtool import require_promtool, run_promtool
from tests.support.rewrite import rewrite_bytes

REPO = Path(__file__).resolve().parents[2]
FUZZ_DIR = REPO / "tests" / "fuzz"

_PROFILES = {
    "ci": settings(
        max_examples=300,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    ),
    "long": settings(
        max_examples=5000,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    ),
}
PROFILE = _PROFILES[os.environ.get("HYPOTHESIS_PROFILE", "ci")]

# --- strategies -------------------------------------------------------------------------------------------------

# Bytes that matter to a line-based parser, so arbitrary input hits them far more often than uniform bytes would.
_SPECIAL = [b"\n", b"\r", b"\r\n", b"\0", b" ", b"\t", b"#", b"{", b"}", b'"', b"\\", b",", b"=", b"\xff", b"\xc3"]
_TOKENS = [
    b"# HELP ",
    b"# TYPE ",
    b"# EOF",
    b" counter",
    b" histogram",
    b" summary",
    b"vllm:num_requests_running",
    b"vllm:time_to_first_token_seconds",
    b"_bucket",
    b"_total",
    b"_created",
    b'le="',
    b"NaN",
    b"+Inf",
    b"1e999",
    b"1e-3",
    b" # {",
]
arbitrary_bytes = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(_SPECIAL),
        st.sampled_from(_TOKENS),
        st.binary(min_size=1, max_size=1).map(lambda b: b * 5000),  # one long run: a huge line
    ),
    max_size=40,
).map(b"".join)


def cuts_for(payload_size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, payload_size), max_size=12)


@dataclass(frozen=True)
class Source:
    """An engine family the rules rename, with the kind its table gives it."""

    name: str
    kind: str
    target: str
    plain: bool  # no label match: every sample feeds the unified family


SOURCES = sorted(
    {
        Source(name, found[0].kind, found[0].target, found[0].match_label is None)
        for name, found in RULES.by_source.items()
    },
    key=lambda source: source.name,
)
# Names of families no rule knows; none ends like a member of another family (`_sum`, `_total`...).
_NAME = st.from_regex(r"\A[a-zA-Z_:][a-zA-Z0-9_:]{0,10}[a-zA-Z]\Z").filter(
    lambda name: not name.startswith("fuzzunified") and not name.endswith(("_sum", "_count", "_bucket", "_total"))
)
_LABEL_NAME = st.sampled_from(["engine", "model_name", "a", "_x", "Z9"])
_BAD_LABEL_NAME = st.sampled_from(["le", "quantile", "__name__", "__x", "le ", "9a", "a-b"])
_LABEL_VALUE = st.one_of(
    st.sampled_from(["0", "tiny", "x\\\\y", 'q\\"uote', "new\\nline", "", "+Inf", "0.1", "é", "a,b", "}{", "#"]),
    st.text(st.characters(blacklist_characters='"\\\n', blacklist_categories=("Cs",)), max_size=8),
)
_VALUE = st.one_of(
    st.sampled_from(["0", "1", "1.0", "-0.5", ".5", "5.", "1e-3", "1.7e+09", "NaN", "+Inf", "-Inf", "Infinity"]),
    st.floats(allow_nan=True).map(repr).filter(lambda text: text not in ("nan", "inf", "-inf")),
    st.integers(-(10**20), 10**20).map(str),
)
_TIMESTAMP = st.one_of(st.just(""), st.integers(-(10**12), 10**13).map(lambda ts: f" {ts}"))
_EXEMPLAR = st.sampled_from(["", "", "", ' # {trace_id="abc"} 1.0', " # {} 1 1700000000.1", " #"])
_HELP_TEXT = st.sampled_from(["Help text.", "back\\\\slash", "a\\nb", "", "ü", 'quote " and {}'])
_SEP = st.sampled_from([" ", " ", " ", "\t", "  "])


Labels = tuple[tuple[str, str], ...]


def label_sets(valid: bool) -> st.SearchStrategy[Labels]:
    name = _LABEL_NAME if valid else st.one_of(_LABEL_NAME, _LABEL_NAME, _BAD_LABEL_NAME)
    return st.lists(st.tuples(name, _LABEL_VALUE), max_size=3, unique_by=lambda pair: pair[0]).map(tuple)


def render(labels: Labels, style: int, extra: tuple[str, str] | None = None) -> str:
    """`{a="x",b="y"}`; style 1 adds a trailing comma, style 2 spaces; no labels: `` or `{}` (style 1)."""
    pairs = [*labels, extra] if extra is not None else list(labels)
    if not pairs:
        return "{}" if style == 1 else ""
    joiner, around = (", ", " ") if style == 2 else (",", "")
    return (
        "{" + around + joiner.join(f'{name}="{value}"' for name, value in pairs) + ("," if style == 1 else around) + "}"
    )


@st.composite
def family_lines(draw: st.DrawFn, valid: bool) -> tuple[list[str], Source | None]:
    """One family as an engine writes it: optional HELP/TYPE, then samples shaped by its kind."""
    source = draw(st.one_of(st.sampled_from(SOURCES), st.none()))
    if source is not None:
        name, kind = source.name, source.kind
    else:
        name, kind = draw(_NAME), draw(st.sampled_from(["counter", "gauge", "histogram", "summary", "untyped"]))
    if not valid and draw(st.integers(0, 5)) == 0:
        kind = draw(st.sampled_from(["gauge", "histogram", "unknown", "info", "GAUGE", "gauge ", "bogus"]))
    family = name.removesuffix("_total") if kind == "counter" and draw(st.booleans()) else name  # OpenMetrics style
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append(f"# HELP {family} {draw(_HELP_TEXT)}")
    if draw(st.integers(0, 3)) > 0:
        lines.append(f"# TYPE {family} {kind}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), "# a free comment")
    series: list[Labels] = draw(st.lists(label_sets(valid), min_size=1, max_size=3, unique=True))
    if source is not None and not source.plain:
        series = [(*labels, ("request_type", "waiting")) for labels in series]
    sep, ts, style = draw(_SEP), draw(_TIMESTAMP), draw(st.integers(0, 2))

    def sample(suffix: str, labels: Labels, extra: tuple[str, str] | None = None, exemplar: str = "") -> str:
        return f"{name}{suffix}{render(labels, style, extra)}{sep}{draw(_VALUE)}{ts}{exemplar}"

    numbers = st.sampled_from(["0.1", "1.0", "5", "1e-3", "-Inf"] if valid else ["0.1", "x", "1_0", "1e999", " 1"])
    for labels in series:
        if kind == "histogram":
            for le in [*draw(st.lists(numbers, max_size=3, unique=True)), "+Inf"]:
                lines.append(sample("_bucket", labels, ("le", le), draw(_EXEMPLAR)))
            lines.append(sample("_sum", labels))
            lines.append(sample("_count", labels))
        elif kind == "summary":
            for quantile in draw(st.lists(numbers, max_size=2, unique=True)):
                lines.append(sample("", labels, ("quantile", quantile)))
            lines.append(sample("_sum", labels))
            lines.append(sample("_count", labels))
        elif kind == "counter" and not name.endswith("_total") and source is None:  # sources are text-format names
            lines.append(sample("_total", labels, None, draw(_EXEMPLAR)))
        else:
            lines.append(sample("", labels, None, draw(_EXEMPLAR) if kind == "counter" else ""))
        if kind in ("counter", "histogram", "summary") and draw(st.booleans()):
            lines.append(f"{name.removesuffix('_total')}_created{render(labels, style)}{sep}1.7e+09")
    return lines, source


# Lines that break one rule each: what corruption inserts besides byte-level damage.
NASTY_LINES = [
    'vllm:num_requests_running{a="\\q"} 1',
    'vllm:num_requests_running{a="1",a="2"} 1',
    'vllm:num_requests_running{__name__="x"} 1',
    "vllm:num_requests_running 1 99999999999999999999",
    "vllm:num_requests_running 1e999",
    "vllm:num_requests_running 1 NaN",
    'vllm:time_to_first_token_seconds_bucket{le="abc"} 1',
    'vllm:time_to_first_token_seconds_bucket{le="1_0"} 1',
    "# HELP vllm:num_requests_running bad \\escape",
    "# HELP vllm:num_requests_running trailing \\",
    "# HELP vllm:num_requests_running second help",
    "# TYPE vllm:num_requests_running gauge",
    "# TYPE vllm:time_to_first_token_seconds_sum gauge",
    "# TYPE _total counter",
    "# UNIT vllm:num_requests_running requests",
    "# EOF",
    "#HELP nothing",
    "# HELPful comment",
    "vllm:num_requests_running\t2\t1700000000000",
    'x{le="1"}1',
    "",
]


def _family_key(family: tuple[list[str], Source | None]) -> str:
    """Families of one exposition differ in name (the first word of the first line that is not a comment)."""
    lines, _ = family
    first = next(line for line in lines if not line.startswith("# a "))
    name = first.split()[2] if first.startswith("#") else first.split("{")[0].split()[0]
    return name.removesuffix("_total").removesuffix("_bucket")


@st.composite
def almost_valid(draw: st.DrawFn, corrupt: bool = True) -> tuple[bytes, list[Source]]:
    """An exposition from the grammar; with `corrupt`, then damaged by line and byte edits."""
    families = draw(st.lists(family_lines(valid=not corrupt), min_size=1, max_size=6, unique_by=_family_key))
    lines = [line for family, _ in families for line in family]
    sources = [source for _, source in families if source is not None]
    if corrupt:
        for _ in range(draw(st.integers(0, 6))):
            action = draw(st.sampled_from(["drop", "dup", "swap", "nasty", "byte", "cut", "join", "repeat", "crlf"]))
            if not lines:
                break
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if action == "drop":
                del lines[i]
            elif action == "dup":
                lines.insert(j, lines[i])
            elif action == "swap":
                lines[i], lines[j] = lines[j], lines[i]
            elif action == "nasty":
                lines.insert(i, draw(st.sampled_from(NASTY_LINES)))
            elif action == "byte" and lines[i]:
                k = draw(st.integers(0, len(lines[i]) - 1))
                lines[i] = (
                    lines[i][:k]
                    + draw(st.sampled_from(['"', "\\", "{", "}", " ", "\0", "\r", "#", "é"]))
                    + lines[i][k + 1 :]
                )
            elif action == "cut":
                lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
            elif action == "join" and i + 1 < len(lines):
                lines[i : i + 2] = [lines[i] + lines[i + 1]]
            elif action == "repeat":
                lines += lines[: i + 1]  # a family (or several) written twice, interleaved with the rest
            elif action == "crlf":
                lines[i] += "\r"
    ending = draw(st.sampled_from(["\n", "\n", "", "\n# EOF\n", "\r\n"]))
    payload = "\n".join(lines).encode() + ending.encode()
    if corrupt and draw(st.booleans()):
        payload = payload.replace(b"\xc3\xa9", b"\xc3", 1)  # an invalid UTF-8 sequence where `é` was
    return payload, sources


# --- properties -------------------------------------------------------------------------------------------------


@PROFILE
@given(data=st.data(), payload=arbitrary_bytes)
@example(data=None, payload=b"vllm:num_requests_running " + b"1" * 200_000 + b"x\n")
@example(data=None, payload=b'a{b="c"' + b" " * 100_000 + b"x} 1\n")
@example(data=None, payload=b"a 1 100\na 1 NaN\n")
@example(data=None, payload=b'a{x="\xff"} 1\n# HELP a \xfe\n')
@example(data=None, payload=b"a\r\r\nb 1\r")
def test_arbitrary_bytes_never_break_the_contract(data: st.DataObject | None, payload: bytes) -> None:
    cuts = data.draw(cuts_for(len(payload)), label="cuts") if data is not None else [1, len(payload) // 2]
    check_rewrite(payload, cuts, cache=RewriteCache())


@PROFILE
@given(data=st.data(), generated=almost_valid())
@example(data=None, generated=(b"# TYPE a gauge\na 1\n# TYPE a gauge\na 2\n", []))
@example(data=None, generated=(b"a 1\n# TYPE a gauge\n", []))
@example(data=None, generated=(b"# HELP a x\n# HELP a y\n# TYPE a gauge\na 1\n", []))
@example(data=None, generated=(b"# TYPE h histogram\nh_sum 1\n# TYPE h_sum gauge\nh_sum 2\n", []))
@example(data=None, generated=(b'# TYPE h histogram\nh_sum 1\n# TYPE g gauge\ng 1\nh_bucket{le="x"} 1\n', []))
@example(data=None, generated=(b'a{x="\\q"} 1\na{__x="1"} 1\na{y="1",y="2"} 1\n', []))
@example(data=None, generated=(b"# HELP a \\q\n# HELP b \\\n# TYPE a gauge\na 1 99999999999999999999\na 1e999\n", []))
@example(data=None, generated=(b"# TYPE x untyped\n# HELP x h\n# TYPE x gauge\nx 1\n", []))
@example(data=None, generated=(b"vllm:time_to_first_token_seconds 1\ne2e_request_latency_seconds 2\n", []))
@example(data=None, generated=(b"# TYPE _total counter\n_total 1\n", []))
def test_corrupted_expositions_never_break_the_contract(
    data: st.DataObject | None, generated: tuple[bytes, list[Source]]
) -> None:
    payload, _ = generated
    cuts = data.draw(cuts_for(len(payload)), label="cuts") if data is not None else [3, 17]
    check_rewrite(payload, cuts, cache=RewriteCache())
    check_rewrite(payload, cuts, keep_raw=False)


@PROFILE
@given(generated=almost_valid(corrupt=False))
def test_valid_expositions_keep_every_line_and_get_every_unified_family(generated: tuple[bytes, list[Source]]) -> None:
    payload, sources = generated
    result = check_rewrite(payload)
    assert result.invalid_lines == 0, payload
    comments = sum(
        1 for line in input_lines(payload) if line.startswith(b"#") and line[:6] not in (b"# HELP", b"# TYPE")
    )
    created = sum(1 for line in input_lines(payload) if b"_created" in line.split(b"{")[0].split(b" ")[0])
    assert result.omitted_lines <= comments + created
    targets = {family.name for family in text_string_to_metric_families(result.output.decode())}
    for source in sources:
        if source.plain:
            target = source.target.removesuffix("_total") if source.kind == "counter" else source.target
            assert target in targets, f"no unified family {source.target} for {source.name}"


# Values a next scrape may bring: the safe form a shape replays, and every form it must not (overflow, garbage,
# a timestamp or an exemplar after the value, nothing at all).
_NEXT_VALUES = [b"0", b"1", b"42.5", b"-2.5e-3", b".5", b"1e+99", b"NaN", b"+Inf", b"-Inf", b"1e999", b"abc", b""]
_NEXT_VALUES += [b"1 1700000000", b'7 # {a="b"} 1', b"1" * 201, b"\xff", b"2\r"]


@st.composite
def next_scrape(draw: st.DrawFn, payload: bytes) -> bytes:
    """`payload` as the engine's next answer: mostly new values, sometimes a line more, less or changed."""
    lines = payload.split(b"\n")
    for i, line in enumerate(lines):
        cut = line.rfind(b" ")
        if cut > 0 and not line.startswith(b"#") and draw(st.integers(0, 3)):
            lines[i] = line[: cut + 1] + draw(
                st.sampled_from(_NEXT_VALUES[:7] if draw(st.integers(0, 4)) else _NEXT_VALUES)
            )
    if lines and draw(st.integers(0, 3)) == 0:
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "dup", "blank", "crlf", "rename"]))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "blank":
            lines.insert(i, b"")
        elif action == "crlf":
            lines[i] += b"\r"
        else:
            lines[i] = lines[i].replace(b"vllm", b"vlm", 1)
    return b"\n".join(lines)


@PROFILE
@given(data=st.data(), generated=st.one_of(almost_valid(), almost_valid(corrupt=False)), keep_raw=st.booleans())
@example(data=None, generated=(b"# TYPE a gauge\na 1\n", []), keep_raw=True)
def test_a_scrape_replayed_from_the_last_shape_is_a_cold_rewrite(
    data: st.DataObject | None, generated: tuple[bytes, list[Source]], keep_raw: bool
) -> None:
    """The scraper's cache replays the last scrape's shape (runtime/metrics/replay.py) when only values changed: over a
    series of scrapes, each output and count must be what a rewriter without any cache writes for the same input."""
    payload, _ = generated
    cache = RewriteCache()
    for _ in range(4):
        cuts = data.draw(cuts_for(len(payload)), label="cuts") if data is not None else [5]
        warm = rewrite_chunked(payload, cuts, RULES, keep_raw, cache)
        assert warm == rewrite_chunked(payload, (), RULES, keep_raw), payload
        if data is None:
            payload = payload.replace(b"a 1", b"a 2")
            continue
        payload = data.draw(next_scrape(payload), label="next")


def test_the_shape_is_replayed_when_only_values_change() -> None:
    """Not only correct but used: the second scrape of a recorded exposition with new values is a replay."""
    payload = (FIXTURES / "vllm-0.32.0-metrics.txt").read_bytes()
    cache = RewriteCache()
    rewrite_chunked(payload, (), RULES, True, cache)
    shape = cache.shape
    assert shape is not None
    changed = re.sub(rb"^([^#].*) ([0-9.e+-]+)$", lambda m: b"%s %d" % (m[1], len(m[2]) * 7), payload, flags=re.M)
    assert changed != payload
    warm = rewrite_chunked(changed, (), RULES, True, cache)
    assert cache.shape is shape  # replayed, not rebuilt
    assert warm == rewrite_chunked(changed, (), RULES, True)
    rewrite_chunked(changed + b"vllm:num_requests_running 1 1700000000\n", (), RULES, True, cache)
    assert cache.shape is not shape  # a line more: rewritten line by line and a new shape made


def test_a_megabyte_of_digits_is_rejected_in_linear_time() -> None:
    """The value pattern once matched `[0-9]+\\.?[0-9]*`: a long digit run that ends badly took quadratic time."""
    for line in (
        b"a " + b"1" * 1_000_000 + b"x",
        b'a{b="c"' + b" " * 1_000_000 + b"x} 1",
        b"a 1" + b" " * 1_000_000 + b"x",
    ):
        started = time.perf_counter()
        _, rewriter = rewrite_bytes(line + b"\n", RULES)
        assert rewriter.invalid_lines == 1
        assert time.perf_counter() - started < 2.0, line[:20]


def test_a_long_line_in_small_chunks_is_not_copied_per_chunk() -> None:
    """A 16 MB line fed 4 KB at a time: joined once when it ends, not re-copied on every chunk (that was quadratic)."""
    payload = b"# HELP a " + b"x" * (16 << 20) + b"\na 1\n"
    started = time.perf_counter()
    result = check_rewrite(payload, range(0, len(payload), 4096))
    assert result.invalid_lines == 0 and result.output.endswith(b"a 1\n")
    assert time.perf_counter() - started < 10.0


# --- against the real tools (e2e) -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_promtool_parses_every_generated_output() -> None:
    """Outputs of a few hundred generated inputs, each checked by `promtool check metrics` (one process per input:
    promtool stops at the first error, and concatenating outputs would repeat families), run 8 at a time."""
    promtool = require_promtool()
    outputs: list[tuple[bytes, bytes]] = []

    grammar = st.one_of(almost_valid(), almost_valid(), almost_valid(corrupt=False))

    @settings(PROFILE, max_examples=400)
    @given(payload=st.one_of(grammar.map(lambda generated: generated[0]), arbitrary_bytes))
    def collect(payload: bytes) -> None:
        out = check_rewrite(payload).output
        if out:
            outputs.append((payload, out))

    collect()
    for payload in (b"a 1\n# TYPE a gauge\n", b"# TYPE a gauge\na 1\n# TYPE a gauge\n", b'a{x="\\q"} 1\n'):
        outputs.append((payload, check_rewrite(payload).output))
    assert len(outputs) >= 200
    failures: list[str] = []
    for start in range(0, len(outputs), 8):
        batch = outputs[start : start + 8]
        procs = [
            subprocess.Popen(
                [promtool, "check", "metrics"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in batch
        ]
        for proc, (_, out) in zip(procs, batch, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(out)
            proc.stdin.close()
        for proc, (payload, out) in zip(procs, batch, strict=True):
            proc.wait(timeout=60)
            stderr = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
            if proc.returncode not in (0, 3) or "error while linting" in stderr:
                failures.append(f"{stderr.strip()}\n  input: {payload[:300]!r}\n  output: {out[:300]!r}")
    assert not failures, f"{len(failures)} of {len(outputs)} outputs rejected by promtool:\n" + "\n".join(failures[:5])
    assert run_promtool(b'a 1\na{x="\\q"} 1\n', promtool).errors, "promtool must reject a bad escape (test sanity)"


@pytest.mark.e2e
def test_atheris_finds_no_crash_in_a_bounded_run(tmp_path: Path) -> None:
    """Coverage-guided fuzzing of the rewriter for a bounded time from the committed seed corpus."""
    try:
        import atheris  # noqa: F401
    except ImportError as error:
        pytest.skip(f"atheris does not import on Python {sys.version.split()[0]}: {error}")
    seconds = int(os.environ.get("FUZZ_SECONDS", "60"))
    corpus = tmp_path / "corpus"  # new inputs go here, the committed seeds stay as they are
    corpus.mkdir()
    command = [
        sys.executable,
        str(FUZZ_DIR / "fuzz_rewriter.py"),
        str(corpus),
        str(FUZZ_DIR / "corpus"),
        f"-max_total_time={seconds}",
        "-max_len=4096",
        "-timeout=10",
        "-rss_limit_mb=1024",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
    ]
    proc = subprocess.run(command, capture_output=True, timeout=seconds + 120, check=False, cwd=REPO)
    log = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    crashes = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(("crash-", "timeout-", "oom-")))
    assert proc.returncode == 0 and not crashes, f"atheris exit {proc.returncode}, artifacts {crashes}:\n{log[-4000:]}"
    assert "Done" in log and "stat::number_of_executed_units" in log, log[-2000:]
