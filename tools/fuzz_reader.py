"""`make fuzz`: coverage-guided fuzzing of the reader and the engine with atheris (libFuzzer).

    .venv/bin/python tools/fuzz_reader.py -max_total_time=120 [CORPUS_DIR ...] [libFuzzer flags]

Every input is turned into text one of four ways, chosen by its first byte: UTF-8 with bad bytes
replaced, UTF-8 with bad bytes kept as lone surrogates, Latin-1, or atheris's own Unicode (ASCII,
UTF-16 or UTF-32). For each text the target checks what a caller of riskset relies on:

* ``assess`` returns an ``Assessment`` or raises ``InputError``, and raises it exactly when
  ``check_text`` does (empty, too long, NUL bytes, not valid Unicode); nothing else escapes;
* ``read`` (on text ``check_text`` accepts: it is the gate, ``read`` does not check) gives the
  same findings as ``assess``, so reading is deterministic and the engine reports what was read;
* every finding's evidence is a real span: 0 <= start < end <= len(text), and
  text[start:end] == finding.text;
* the engine gives the same assessment again from the same findings, the assessment survives a
  JSON round trip (the API sends it as JSON), and the text views (summary, handout) render;
* combination checks and fact sheets on the same words answer or raise ``UnknownName`` /
  ``ValueError``, as their callers expect.

Without a corpus directory, seeds (a few dozen narratives from tests/narratives and some odd
strings) go into a fresh temporary one. A crash prints the traceback and writes the input to
./crash-<sha1> (libFuzzer's -artifact_prefix changes where); rerun one input with
``tools/fuzz_reader.py ./crash-<sha1>``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris  # type: ignore[import-untyped]

# Only riskset is instrumented: coverage of spaCy and pydantic would cost speed and guide the
# fuzzer towards their internals, which are not what is being tested here.
with atheris.instrument_imports(include=["riskset"]):
    import riskset
    from riskset import combinations, reading, render
    from riskset.assessment import check_text
    from riskset.combinations import UnknownName
    from riskset.models import Assessment, Finding

ROOT = Path(__file__).resolve().parent.parent
NARRATIVES = ROOT / "tests" / "narratives"
SEEDS_PER_FILE = 12
# Names the web app accepts are at most 100 characters (web.MAX_NAME); longer ones never
# reach combinations, and difflib on long strings would only slow the fuzzer down.
MAX_NAME = 100
ODD = [
    "",
    " \t\n",
    "\x00heroin",
    "heroin\x00",
    "\ufeffshot fentanyl alone",
    "shot fen\u200btanyl alone",
    "i\u0307nje\u0301cted heroin",
    "ＦＥＮＴＡＮＹＬ ａｌｏｎｅ",
    "ﬁx of heroin, ﬂipping out",
    "İSTANBUL heroin",
    "ß" * 40,
    "not not never no heroin no alone",
    "fetty + bars + lean",
    "x" * 3000,
    "heroin " * 400,
    "\u202eenola gnisu\u202c",
    "😵 took 💊💊 and ❄️ alone 🏕️",
    "He said: \"I'm not using alone\" — but she isn't sure.",
    "<script>alert(1)</script> fentanyl",
    "用了海洛因 heroin 一个人",
    "\r\n\r\nheroin\r\n",
    "a" + "\u0301" * 200,
]
MODES = 4


class Broken(Exception):
    """An invariant that riskset's callers rely on does not hold for this input."""


def text_of(data: bytes) -> str:
    """One way of turning bytes into text, picked by the first byte."""
    if not data:
        return ""
    mode, rest = data[0] % MODES, data[1:]
    if mode == 0:
        return rest.decode("utf-8", errors="replace")
    if mode == 1:
        return rest.decode("utf-8", errors="surrogateescape")
    if mode == 2:
        return rest.decode("latin-1")
    provider = atheris.FuzzedDataProvider(rest)
    return str(provider.ConsumeUnicode(len(rest)))


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise Broken(what)


def check_spans(text: str, findings: list[Finding]) -> None:
    for f in findings:
        expect((f.start is None) == (f.end is None), f"{f.code}: start and end must come together")
        if f.start is None or f.end is None:
            expect(f.source != "narrative", f"{f.code}: a finding read from words has no span")
            continue
        expect(0 <= f.start < f.end <= len(text), f"{f.code}: span {f.start}:{f.end} is outside")
        expect(text[f.start : f.end] == f.text, f"{f.code}: {f.text!r} is not the text there")


def check_assessment(text: str) -> None:
    try:
        checked = check_text(text)
    except riskset.InputError:
        checked = None
    try:
        a = riskset.assess(text)
    except riskset.InputError:
        expect(checked is None, "assess refused a text that check_text accepts")
        return
    expect(checked is not None, "assess answered a text that check_text refuses")
    expect(a.text == text, "the assessment holds another text")
    for found in (a.findings, a.signs, a.about_others):
        check_spans(text, found)
    again = reading.read(text)
    same = (again.findings, again.signs, again.about_others)
    expect(same == (a.findings, a.signs, a.about_others), "two readings of one text differ")
    redo = riskset.assess_findings(a.findings, text, a.signs, a.about_others)
    expect(redo == a, "the engine gave another assessment for the same findings")
    expect(Assessment.model_validate_json(a.model_dump_json()) == a, "JSON round trip differs")
    expect(json.loads(a.model_dump_json())["text"] == text, "the JSON text differs")
    render.summary(a)
    render.handout(a)


def check_names(text: str) -> None:
    name = text[:MAX_NAME]
    for look_up in (_check_combination, _fact_sheet):
        with contextlib.suppress(UnknownName, ValueError):
            look_up(name)


def _check_combination(name: str) -> None:
    checked = combinations.check([name])
    expect(len(checked.substances) >= 2, "a combination of fewer than two substances")


def _fact_sheet(name: str) -> None:
    sheet = combinations.fact_sheet(name)
    expect(sheet.id in riskset.knowledge().substances, f"fact sheet of unknown {sheet.id!r}")


def test_one_input(data: bytes) -> None:
    text = text_of(data)
    check_assessment(text)
    check_names(text)


def seeds() -> list[bytes]:
    texts: list[str] = []
    for path in sorted(NARRATIVES.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        step = max(1, len(rows) // SEEDS_PER_FILE)
        texts += [str(row["text"]) for row in rows[::step][:SEEDS_PER_FILE]]
    texts += ODD
    # Mode 0 (UTF-8, bad bytes replaced) reads every seed as written.
    return [bytes([0]) + t.encode("utf-8", errors="surrogatepass") for t in texts]


def with_seed_corpus(argv: list[str]) -> list[str]:
    """libFuzzer's arguments, with a seeded corpus directory unless one was given."""
    if any(not a.startswith("-") for a in argv[1:]):
        return argv
    corpus = Path(tempfile.mkdtemp(prefix="riskset-fuzz-"))
    for n, seed in enumerate(seeds()):
        (corpus / f"seed-{n:03d}").write_bytes(seed)
    print(f"seed corpus: {corpus} ({len(list(corpus.iterdir()))} inputs)", flush=True)
    return [*argv, str(corpus)]


def defaults(argv: list[str]) -> list[str]:
    # A narrative of a few kilobytes takes milliseconds: seconds mean runaway matching.
    flags: dict[str, str] = {"-timeout": "10", "-rss_limit_mb": "4096"}
    given = {a.split("=", 1)[0] for a in argv[1:] if a.startswith("-")}
    return [*argv, *(f"{k}={v}" for k, v in flags.items() if k not in given)]


def warm_up(target: Callable[[bytes], None]) -> None:
    # Loading the knowledge base and spaCy takes seconds: not in the first input's time.
    riskset.knowledge()
    reading.load()
    target(bytes([0]) + b"warm up: heroin, alone")


def main() -> None:
    warm_up(test_one_input)
    atheris.Setup(defaults(with_seed_corpus(sys.argv)), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
