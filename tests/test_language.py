"""Tests for the language check (riskset/language.py and riskset/data/language.yaml)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import spacy
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from spacy.matcher import Matcher

from riskset.language import (
    CHUNK_CHARS,
    LanguageData,
    LanguageIssue,
    Term,
    _chunks,
    check,
    load_language_data,
)

CASES_FILE = Path(__file__).with_name("language_cases.jsonl")
MIN_PRECISION = 0.95
MIN_RECALL = 0.95


def _load_cases() -> list[dict[str, Any]]:
    with CASES_FILE.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


CASES = _load_cases()
HARMLESS_TEXTS = [case["text"] for case in CASES if not case["expected"]]
TERM_IDS = [term.id for term in load_language_data().terms]


def _issue_for(text: str, span: str) -> LanguageIssue:
    matching = [issue for issue in check(text) if issue.text == span]
    assert matching, f"{span!r} not reported in {text!r}: {check(text)}"
    return matching[0]


def _assert_offsets_valid(original: str, issues: list[LanguageIssue]) -> None:
    previous_end = 0
    for issue in issues:
        assert 0 <= issue.start < issue.end <= len(original)
        assert issue.text == original[issue.start : issue.end]
        # Issues come in reading order and never overlap.
        assert issue.start >= previous_end
        previous_end = issue.end


# --- the data ----------------------------------------------------------------------------------


def test_data_loads_once_and_is_version_1() -> None:
    data = load_language_data()
    assert data is load_language_data()
    assert data.version == 1
    assert len(data.terms) >= 20


@pytest.mark.parametrize("term_id", TERM_IDS)
def test_every_term_validates_and_its_patterns_compile(term_id: str) -> None:
    data = load_language_data()
    term = next(term for term in data.terms if term.id == term_id)
    assert Term.model_validate(term.model_dump()) == term
    assert term.suggestion.strip() and term.why.endswith(".")
    assert all(source in data.sources for source in term.sources)
    matcher = Matcher(spacy.blank("en").vocab, validate=True)
    contexts = [term.find, term.harmless_when]
    if term.flag_only_when is not None:
        contexts.append(term.flag_only_when)
    for index, context in enumerate(contexts):
        if context.patterns:
            matcher.add(f"{term_id}-{index}", context.patterns)


def test_every_source_is_cited_by_some_term() -> None:
    data = load_language_data()
    cited = {source for term in data.terms for source in term.sources}
    assert cited == set(data.sources)


def _minimal_data(**changes: Any) -> dict[str, Any]:
    term = {
        "id": "junkie",
        "find": {"phrases": ["junkie"]},
        "suggestion": "person who uses drugs",
        "why": "It is a slur.",
        "sources": ["nida"],
    }
    data: dict[str, Any] = {
        "version": 1,
        "sources": {"nida": {"citation": "NIDA. Words Matter."}},
        "terms": [term],
    }
    data.update(changes)
    return data


def test_minimal_data_is_valid() -> None:
    assert LanguageData.model_validate(_minimal_data()).terms[0].id == "junkie"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"version": 2}, id="unknown version"),
        pytest.param({"colour": "blue"}, id="unknown top-level key"),
        pytest.param(
            {"terms": [{**_minimal_data()["terms"][0], "sugestion": "typo"}]},
            id="unknown term key",
        ),
        pytest.param(
            {"terms": [{**_minimal_data()["terms"][0], "sources": ["nowhere"]}]},
            id="unknown source",
        ),
        pytest.param(
            {"terms": [_minimal_data()["terms"][0], _minimal_data()["terms"][0]]},
            id="duplicate id",
        ),
        pytest.param(
            {"terms": [{**_minimal_data()["terms"][0], "find": {}}]},
            id="nothing to find",
        ),
        pytest.param(
            {"terms": [{**_minimal_data()["terms"][0], "why": "One. Two."}]},
            id="why is two sentences",
        ),
    ],
)
def test_invalid_data_is_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LanguageData.model_validate(_minimal_data(**bad))


# --- suggestions for key terms -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "span", "suggested"),
    [
        ("He is an addict.", "addict", "person with a substance use disorder"),
        ("She relapsed last week.", "relapsed", "return to use"),
        ("Her UA was clean.", "clean", "negative"),
        ("Dirty UA on Monday.", "Dirty", "positive"),
        ("She has been clean for a year.", "clean", "not using drugs"),
        ("Started methadone maintenance in May.", "methadone maintenance", "opioid agonist"),
        ("An addicted baby in the NICU.", "addicted baby", "neonatal opioid withdrawal"),
        ("History of drug abuse.", "drug abuse", "substance use"),
        ("A former addict now works with us.", "former addict", "person in recovery"),
        ("He is a heroin user.", "heroin user", "person who uses drugs"),
        ("Pt non-compliant.", "non-compliant", "chose not to"),
        ("She has a drug habit.", "drug habit", "regular drug use"),
        ("Narcotic given at 10:00.", "Narcotic", "opioid"),
    ],
)
def test_suggestion_for_key_terms(text: str, span: str, suggested: str) -> None:
    issue = _issue_for(text, span)
    assert suggested in issue.suggestion
    assert issue.why


def test_issue_has_exactly_the_published_fields() -> None:
    issue = _issue_for("He is a junkie.", "junkie")
    assert set(issue.model_dump()) == {"text", "start", "end", "suggestion", "why"}


# --- the test set ------------------------------------------------------------------------------


def test_case_file_is_big_enough_and_consistent() -> None:
    assert len(CASES) >= 100
    assert len(HARMLESS_TEXTS) >= 35
    for case in CASES:
        for span in case["expected"]:
            assert case["text"][span["start"] : span["end"]] == span["text"]


def _precision_and_recall() -> tuple[float, float, int, int, int]:
    true_pos = false_pos = false_neg = 0
    for case in CASES:
        expected = {(span["start"], span["end"]) for span in case["expected"]}
        found = {(issue.start, issue.end) for issue in check(case["text"])}
        true_pos += len(expected & found)
        false_pos += len(found - expected)
        false_neg += len(expected - found)
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 1.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 1.0
    return precision, recall, true_pos, false_pos, false_neg


def test_precision_and_recall_on_the_case_file(
    capsys: pytest.CaptureFixture[str], record_property: Any
) -> None:
    precision, recall, true_pos, false_pos, false_neg = _precision_and_recall()
    record_property("precision", precision)
    record_property("recall", recall)
    # Shown even without -s, so the figures appear in every run's output.
    with capsys.disabled():
        print(
            f"\nlanguage check on {len(CASES)} sentences ({len(HARMLESS_TEXTS)} harmless): "
            f"precision {precision:.3f}, recall {recall:.3f} "
            f"(TP {true_pos}, FP {false_pos}, FN {false_neg})"
        )
    assert precision >= MIN_PRECISION
    assert recall >= MIN_RECALL


@pytest.mark.parametrize("text", HARMLESS_TEXTS)
def test_harmless_uses_produce_nothing(text: str) -> None:
    assert check(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "We give out clean needles, clean cotton and clean water.",
        "Clean supplies are free at the van.",
        "Please log in with your user name, or create a user account.",
        "The end user never sees the raw data.",
        "I'm a total coffee addict.",
        "Say 'person in recovery' rather than 'former addict'.",
        "Avoid the word “junkie”, it pushes people away.",
        "The scan came back clean.",
        "Frequent flyer miles expire after two years.",
    ],
)
def test_harmless_contexts_from_the_brief(text: str) -> None:
    assert check(text) == []


def test_clean_is_flagged_about_a_person_but_not_about_equipment() -> None:
    text = "She has been clean for a year and still picks up clean needles."
    issues = check(text)
    assert [(issue.text, issue.start) for issue in issues] == [("clean", text.index("clean"))]


def test_scare_quotes_without_a_cue_are_still_flagged() -> None:
    assert [issue.text for issue in check('Pt is a "frequent flyer" per triage.')] == [
        "frequent flyer"
    ]


# --- offsets and odd input ---------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda case: case["text"][:40])
def test_offsets_are_exact(case: dict[str, Any]) -> None:
    _assert_offsets_valid(case["text"], check(case["text"]))


def test_empty_and_blank_text_give_nothing() -> None:
    assert check("") == []
    assert check("   \n\t ") == []


@pytest.mark.parametrize(
    "text",
    [
        "She’s clean now 🙂 and proud of it",
        "he\u200bis a junkie",
        "\u202eHe is an addict\u202c, she wrote.",
        "Relapse\u0000 noted; cafe\u0301 junkie",
        "ﬁne, but he is an IV user",
        "lone surrogate \ud800 then an addict \udfff",
        "Ｊｕｎｋｉｅ in full-width, then junkie",
        "\n\n\nclean\n\n\nfor a year\n",
    ],
)
def test_odd_unicode_does_not_crash_and_offsets_hold(text: str) -> None:
    _assert_offsets_valid(text, check(text))


def test_curly_apostrophes_still_read_as_context() -> None:
    text = "She’s clean now."
    assert [issue.text for issue in check(text)] == ["clean"]


def test_huge_text_beyond_spacy_max_length() -> None:
    # Long runs of spaces keep the text over spaCy's 1,000,000 characters but quick to read.
    block = "She has been clean for a year and uses clean needles." + " " * 10_000
    text = block * 100
    assert len(text) > 1_000_000
    issues = check(text)
    assert len(issues) == 100
    _assert_offsets_valid(text, issues)


def test_dense_text_across_several_chunks() -> None:
    sentence = "Pt is an IV drug user. She has been clean for a year, uses clean needles. "
    text = sentence * (CHUNK_CHARS * 2 // len(sentence) + 50)
    issues = check(text)
    assert len(issues) == 2 * text.count(sentence)
    _assert_offsets_valid(text, issues)


def test_huge_text_without_spaces() -> None:
    text = "x" * (CHUNK_CHARS * 2 + 17) + " junkie"
    issues = check(text)
    assert [issue.text for issue in issues] == ["junkie"]
    _assert_offsets_valid(text, issues)


def test_chunks_cover_the_text_exactly() -> None:
    text = ("word " * 7 + "\n") * 5_000
    pieces = list(_chunks(text, size=1_000))
    assert "".join(chunk for _, chunk in pieces) == text
    assert all(text[offset : offset + len(chunk)] == chunk for offset, chunk in pieces)


VOCABULARY = [
    "clean",
    "dirty",
    "user",
    "users",
    "addict",
    "junkie",
    "relapse",
    "been",
    "for",
    "a",
    "year",
    "UA",
    "needles",
    "she",
    "is",
    "'s",
    "’s",
    '"',
    "“",
    "word",
    "IV",
    "drug",
    "-",
    "non",
    "compliant",
    "methadone",
    "maintenance",
    ".",
    "\n",
    "🙂",
]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_gives_a_list_with_valid_offsets(text: str) -> None:
    issues = check(text)
    assert isinstance(issues, list)
    _assert_offsets_valid(text, issues)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=3)),
        max_size=40,
    ),
    st.sampled_from([" ", "", "  ", "\t"]),
)
def test_texts_full_of_terms_give_valid_offsets(words: list[str], separator: str) -> None:
    text = separator.join(words)
    _assert_offsets_valid(text, check(text))


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=()), max_size=60))
def test_any_code_point_including_surrogates(text: str) -> None:
    _assert_offsets_valid(text, check(text))
