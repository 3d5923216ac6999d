"""Training mode: feedback on a trainee's Risk, Set and Setting answer to a case from the library.

A trainee reads a case (``riskset/data/cases.yaml``) and writes what they see under Risk, Set and
Setting, and what they would offer. :func:`feedback` reads their words with the same reader the
assessment uses and holds them against the case's expert key: what they caught, what they
missed (with the words of the case that show it), what they misread, which plan items they
offered, and any stigmatising, coercive or judgemental wording, each tied to the principle it
goes against. Strategy phrases, wording patterns and every sentence of feedback live in
``riskset/data/training.yaml``.

:func:`check_case` holds the engine's own assessment of a case against the same key, so the
library says honestly where the engine and the experts differ.

A trainer's group results are anonymous: :func:`record_attempt` keeps only the group code, the
case id, the date and counts of codes, never a name or a word the trainee wrote.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import language
from .assessment import assess, assess_many
from .knowledge import SUBSTANCE_CLASSES, Case, KnowledgeBase, KnowledgeError, load_yaml
from .knowledge import load as load_knowledge
from .models import Assessment, Level, Status
from .reading import Reading, read, read_many

__all__ = [
    "Attempt",
    "CaseCheck",
    "CaseSummary",
    "CodeNote",
    "Feedback",
    "GroupCodeError",
    "GroupSummary",
    "Misread",
    "PlanNote",
    "Quote",
    "RiskNote",
    "Score",
    "Share",
    "TeachingNote",
    "TraineeAnswer",
    "TrainingData",
    "TrainingError",
    "TrainingStoreError",
    "UnknownCase",
    "WordingFlag",
    "YourWords",
    "case_summaries",
    "case_summary",
    "check_case",
    "check_cases",
    "feedback",
    "get_case",
    "group_code",
    "group_results",
    "read_attempts",
    "record_attempt",
    "results_path",
    "training_data",
]

DATA_FILE = "training.yaml"
RESULTS_ENV = "RISKSET_TRAINING_FILE"
MAX_ANSWER = 5_000
AnswerField = Literal["risk", "set", "setting", "plan"]
QuoteStatus = Literal["present", "absent", "historical", "hypothetical", "other"]
# The plan box is read for strategies only: "don't use alone" there is advice, not a finding.
READ_FIELDS: tuple[AnswerField, ...] = ("risk", "set", "setting")
# Hypothetical counts as naming a concern ("she may use alone"); only present counts as a claim.
NAMED_STATUSES = frozenset({Status.present, Status.hypothetical})
GROUP_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?")
# A comma ends a clause for negation: plans are lists, and "don't use alone, carry naloxone"
# must not read naloxone as refused.
_CLAUSE_END = re.compile(r"[.;:!?,\n()]|\bbut\b", re.IGNORECASE)


# --- errors -------------------------------------------------------------------------------------


class TrainingError(ValueError):
    """Something the person asking can fix; the message is meant for them."""


class UnknownCase(TrainingError):
    """No case has this id; ``suggestions`` holds ids close to it."""

    def __init__(self, case_id: str, suggestions: list[str]) -> None:
        self.case_id = case_id
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"there is no case {case_id!r}{hint}")


class GroupCodeError(TrainingError):
    """A group code that is not a short code of letters, digits, - and _."""


class TrainingStoreError(TrainingError):
    """The group results file cannot be written or read."""


# --- the data file ------------------------------------------------------------------------------


class _Strict(BaseModel):
    # A typo in the data file must fail loudly at load time, not vanish silently.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _compiles(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"pattern {pattern!r} does not compile: {err}") from err
    return patterns


class WordingRule(_Strict):
    id: str
    kind: Literal["coercive", "judgemental"]
    principle: str
    patterns: list[str] = Field(min_length=1)
    why: str
    suggestion: str

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        return _compiles(value)


class RiskWords(_Strict):
    patterns: list[str] = Field(min_length=1)
    words: dict[str, Level]

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        return _compiles(value)


class CaseStatusWords(_Strict):
    present: str
    absent: str
    historical: str
    hypothetical: str
    other: str


class Says(_Strict):
    """Every sentence the feedback builds; ``{...}`` slots are filled in by the code."""

    caught: str
    caught_general: str
    missed: str
    missed_no_span: str
    misread_not_present: str
    misread_not_current: str
    misread_named_absent: str
    misread_no_span: str
    misread_engine_differs: str
    case_status: CaseStatusWords
    not_in_key: str
    plan_caught: str
    plan_missed: str
    plan_also: str
    must_not: str
    must_not_principle: str
    stigmatising_principle: str
    risk_agrees: str
    risk_differs: str
    risk_not_named: str
    nothing_read: str


class TrainingData(_Strict):
    version: int
    strategies: dict[str, list[str]]
    general_substances: dict[str, str]
    negation: str
    negation_words: int = Field(ge=1, le=10)
    risk_level: RiskWords
    wording: list[WordingRule]
    says: Says

    @field_validator("negation")
    @classmethod
    def _negation_compiles(cls, value: str) -> str:
        return _compiles([value])[0]


@cache
def training_data() -> TrainingData:
    """``riskset/data/training.yaml``, validated against itself and the knowledge base, once."""
    try:
        data = TrainingData.model_validate(load_yaml(DATA_FILE))
    except ValidationError as err:
        raise KnowledgeError(f"{DATA_FILE}: {err}") from err
    problems = _reference_problems(data, load_knowledge())
    if problems:
        raise KnowledgeError(f"{DATA_FILE}: {'; '.join(problems)}")
    return data


def _reference_problems(data: TrainingData, kb: KnowledgeBase) -> list[str]:
    """Ids the data file names that the knowledge base does not know: they would never match."""
    principles = {p.id for p in kb.principles}
    problems = [f"unknown strategy {s!r}" for s in data.strategies if s not in kb.strategies]
    problems += [
        f"unknown substance {s!r}" for s in data.general_substances if s not in kb.substances
    ]
    problems += [
        f"unknown class {c!r}"
        for c in data.general_substances.values()
        if c not in SUBSTANCE_CLASSES
    ]
    used = [r.principle for r in data.wording]
    used += [data.says.must_not_principle, data.says.stigmatising_principle]
    problems += [f"unknown principle {p!r}" for p in used if p not in principles]
    return problems


@dataclass(frozen=True)
class _Matchers:
    strategies: dict[str, re.Pattern[str]]
    negation: re.Pattern[str]
    negation_words: int
    risk: list[re.Pattern[str]]
    risk_words: dict[str, Level]
    wording: list[tuple[WordingRule, list[re.Pattern[str]]]]


def _phrase_pattern(phrase: str) -> str:
    """A phrase as a regex: spaces also match hyphens, and ' also matches ’ or nothing."""
    words = re.split(r"[\s-]+", phrase.strip())
    return r"[\s-]+".join(re.escape(w).replace("'", "['’]?") for w in words)


def _any_phrase(phrases: Iterable[str]) -> re.Pattern[str]:
    # Longest first, so "test strips" wins over "strips" and the quoted words are the whole phrase.
    ordered = sorted({p.strip() for p in phrases if p.strip()}, key=len, reverse=True)
    body = "|".join(_phrase_pattern(p) for p in ordered)
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)


@cache
def _matchers() -> _Matchers:
    data = training_data()
    return _Matchers(
        strategies={sid: _any_phrase(p) for sid, p in data.strategies.items() if p},
        negation=re.compile(data.negation, re.IGNORECASE),
        negation_words=data.negation_words,
        risk=[re.compile(p, re.IGNORECASE) for p in data.risk_level.patterns],
        risk_words={" ".join(k.lower().split()): v for k, v in data.risk_level.words.items()},
        wording=[(r, [re.compile(p, re.IGNORECASE) for p in r.patterns]) for r in data.wording],
    )


def _negated(text: str, start: int, m: _Matchers) -> bool:
    """Whether a negation word comes shortly before ``start``, in the same clause."""
    before = text[:start]
    ends = list(_CLAUSE_END.finditer(before))
    clause = before[ends[-1].end() :] if ends else before
    return bool(m.negation.search(" ".join(clause.split()[-m.negation_words :])))


# --- cases --------------------------------------------------------------------------------------


def get_case(case_id: str) -> Case:
    """The case with this id (any letter case), or :class:`UnknownCase` with suggestions."""
    wanted = case_id.strip().casefold()
    cases = {c.id: c for c in load_knowledge().cases}
    if wanted in cases:
        return cases[wanted]
    raise UnknownCase(case_id, _suggestions(wanted, list(cases)))


def _suggestions(wanted: str, ids: list[str]) -> list[str]:
    # People type the first name ("walt"), so ids starting with it come before spelling matches.
    starts = [i for i in ids if wanted and i.startswith(wanted)]
    names = {i.split("_")[0]: i for i in ids}
    close = [names[n] for n in difflib.get_close_matches(wanted, list(names), n=3, cutoff=0.7)]
    close += difflib.get_close_matches(wanted, ids, n=3, cutoff=0.6)
    return list(dict.fromkeys([*starts, *close]))[:5]


class CaseSummary(BaseModel):
    """A case as a trainee sees it before answering: no key."""

    id: str
    title: str
    tags: list[str]
    text: str
    source: str


def case_summary(case: Case) -> CaseSummary:
    return CaseSummary(
        id=case.id, title=case.title, tags=case.tags, text=case.text, source=case.source
    )


def case_summaries() -> list[CaseSummary]:
    return [case_summary(c) for c in load_knowledge().cases]


@cache
def _case_reading(case_id: str) -> Reading:
    # The case texts never change while the process runs, so each is read once.
    return read(get_case(case_id).text)


# --- the answer and the feedback ----------------------------------------------------------------


class TraineeAnswer(BaseModel):
    """What a trainee wrote: free text under Risk, Set and Setting, and what they would offer."""

    model_config = ConfigDict(extra="forbid")

    risk: str = Field("", max_length=MAX_ANSWER, description="the issue, connected harms, drug")
    set: str = Field("", max_length=MAX_ANSWER, description="how the person is, what they need")
    setting: str = Field("", max_length=MAX_ANSWER, description="where they are, who is around")
    plan: str = Field("", max_length=MAX_ANSWER, description="what the trainee would offer")

    @field_validator("risk", "set", "setting", "plan")
    @classmethod
    def _no_binary(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("the answer holds binary data (NUL bytes), not words")
        return value


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class YourWords(_Out):
    """Words from the trainee's answer, with their place in that field."""

    field: AnswerField
    text: str
    start: int | None = None
    end: int | None = None


class Quote(_Out):
    """Words of the case, as riskset's reader found them."""

    text: str
    start: int | None = None
    end: int | None = None
    status: QuoteStatus
    cue: str | None = Field(None, description="the words that set a status other than present")
    says: str = Field(description="what the status means, in plain words")


class CodeNote(_Out):
    code: str
    label: str
    frame: str
    your_words: list[YourWords] = Field(default_factory=list)
    case_words: list[Quote] = Field(default_factory=list)
    says: str


class Misread(_Out):
    code: str
    label: str
    kind: Literal["not_present", "not_current", "named_absent"] = Field(
        description="named as true though the key says not; named as true though the case puts "
        "it otherwise; or named as not so though the key says it is"
    )
    your_words: list[YourWords]
    case_words: list[Quote]
    says: str


class PlanNote(_Out):
    strategy: str
    label: str
    your_words: list[YourWords] = Field(default_factory=list)
    says: str
    principle: str | None = None
    principle_text: str | None = None


class WordingFlag(_Out):
    kind: Literal["stigmatising", "coercive", "judgemental"]
    rule: str = Field(description="the wording rule in training.yaml, or 'language' for a term")
    field: AnswerField
    text: str
    start: int
    end: int
    suggestion: str
    why: str
    principle: str
    principle_text: str


class RiskNote(_Out):
    named: Level | None
    your_words: YourWords | None = None
    key: list[Level]
    agrees: bool | None
    says: str


class TeachingNote(_Out):
    principle: str
    principle_text: str
    point: str


class Score(_Out):
    caught: int
    key_findings: int
    misread: int
    plan_caught: int
    plan_items: int
    must_not_offered: int
    wording_flags: int


class Feedback(_Out):
    """Everything riskset says about one answer to one case."""

    case_id: str
    title: str
    score: Score
    caught: list[CodeNote]
    missed: list[CodeNote]
    misread: list[Misread]
    not_in_key: list[CodeNote]
    plan_caught: list[PlanNote]
    plan_missed: list[PlanNote]
    plan_also: list[PlanNote]
    must_not_offered: list[PlanNote]
    wording: list[WordingFlag]
    overdose_risk: RiskNote
    main_issue: str = Field(description="the key's main issue")
    connected_harms: list[str] = Field(description="the key's connected harms")
    teaching_points: list[TeachingNote]
    notes: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class _Said:
    """One finding in the trainee's answer."""

    code: str
    status: Status
    words: YourWords


def _answer_text(answer: TraineeAnswer, field: AnswerField) -> str:
    text: str = getattr(answer, field)
    return text


def _risk_mentions(text: str, m: _Matchers) -> list[tuple[int, int, Level]]:
    found: list[tuple[int, int, Level]] = []
    for pattern in m.risk:
        for match in pattern.finditer(text):
            level = m.risk_words.get(" ".join(match.group("level").lower().split()))
            if level is not None:
                found.append((match.start(), match.end(), level))
    return sorted(found)


def _mask_risk(text: str, m: _Matchers) -> str:
    """Blank out "risk is high": the reader would take "is high" for "high right now".

    Spaces keep every offset, so the findings still point at the trainee's own words.
    """
    for start, end, _ in _risk_mentions(text, m):
        text = text[:start] + " " * (end - start) + text[end:]
    return text


def _read_answer(answer: TraineeAnswer) -> list[_Said]:
    m = _matchers()
    fields = [f for f in READ_FIELDS if _answer_text(answer, f).strip()]
    texts = [_mask_risk(_answer_text(answer, f), m) for f in fields]
    said: list[_Said] = []
    for field, reading in zip(fields, read_many(texts), strict=True):
        original = _answer_text(answer, field)
        for f in reading.findings:
            text = original[f.start : f.end] if f.start is not None else f.text
            words = YourWords(field=field, text=text, start=f.start, end=f.end)
            said.append(_Said(f.code, f.status, words))
    return said


def _by_code(said: Iterable[_Said], statuses: Iterable[Status]) -> dict[str, list[YourWords]]:
    wanted = set(statuses)
    out: dict[str, list[YourWords]] = {}
    for s in said:
        if s.status in wanted and s.words not in out.get(s.code, []):
            out.setdefault(s.code, []).append(s.words)
    return out


_STATUS_NAMES: dict[Status, QuoteStatus] = {
    Status.present: "present",
    Status.absent: "absent",
    Status.historical: "historical",
    Status.hypothetical: "hypothetical",
}


def _case_quotes(reading: Reading, code: str, statuses: Iterable[str]) -> list[Quote]:
    """The case's words for ``code`` with one of ``statuses`` ("other": said of someone else)."""
    words = training_data().says.case_status
    wanted = set(statuses)
    quotes = [
        Quote(
            text=f.text,
            start=f.start,
            end=f.end,
            status=_STATUS_NAMES[f.status],
            cue=f.cue,
            says=getattr(words, f.status.value),
        )
        for f in reading.findings
        if f.code == code and f.status.value in wanted
    ]
    if "other" in wanted:
        quotes += [
            Quote(
                text=f.text, start=f.start, end=f.end, status="other", cue=f.cue, says=words.other
            )
            for f in reading.about_others
            if f.code == code
        ]
    return quotes


def _general_named(code: str, named: dict[str, list[YourWords]], kb: KnowledgeBase) -> str | None:
    """The general name ("opioid") the trainee used that covers this key substance, if any."""
    klass = kb.substance_class(code)
    for general, general_class in training_data().general_substances.items():
        if f"substance:{general}" in named and klass == general_class:
            return general
    return None


def _key_substance_classes(case: Case, kb: KnowledgeBase) -> set[str]:
    return {c for code in case.key.present if (c := kb.substance_class(code)) is not None}


def _covers_key(code: str, case: Case, kb: KnowledgeBase) -> bool:
    """A general name ("opioids") is right when the case has a drug of that class."""
    general = code.removeprefix("substance:")
    klass = training_data().general_substances.get(general)
    return klass is not None and klass in _key_substance_classes(case, kb)


def _code_note(
    code: str,
    kb: KnowledgeBase,
    says: str,
    your_words: list[YourWords] | None = None,
    case_words: list[Quote] | None = None,
) -> CodeNote:
    return CodeNote(
        code=code,
        label=kb.label(code),
        frame=kb.frame(code),
        says=says,
        your_words=your_words or [],
        case_words=case_words or [],
    )


def _caught_and_missed(
    case: Case, named: dict[str, list[YourWords]], reading: Reading, kb: KnowledgeBase
) -> tuple[list[CodeNote], list[CodeNote]]:
    says = training_data().says
    caught: list[CodeNote] = []
    missed: list[CodeNote] = []
    for code in case.key.present:
        quotes = _case_quotes(reading, code, ["present"])
        general = _general_named(code, named, kb)
        if code in named:
            caught.append(
                _code_note(code, kb, says.caught, your_words=named[code], case_words=quotes)
            )
        elif general is not None:
            text = says.caught_general.format(
                general=kb.label(f"substance:{general}").lower(), label=kb.label(code)
            )
            caught.append(
                _code_note(
                    code, kb, text, your_words=named[f"substance:{general}"], case_words=quotes
                )
            )
        else:
            text = (
                says.missed.format(quote=", ".join(f'"{q.text}"' for q in quotes))
                if quotes
                else says.missed_no_span
            )
            missed.append(_code_note(code, kb, text, case_words=quotes))
    return caught, missed


MisreadKind = Literal["not_present", "not_current", "named_absent"]
_NOT_NOW = ("absent", "historical", "hypothetical", "other")


def _misread(
    code: str, kind: MisreadKind, words: list[YourWords], quotes: list[Quote], text: str
) -> Misread:
    label = load_knowledge().label(code)
    return Misread(
        code=code, label=label, kind=kind, your_words=words, case_words=quotes, says=text
    )


def _claimed_misread(
    code: str, words: list[YourWords], case: Case, reading: Reading, kb: KnowledgeBase
) -> Misread | None:
    """A code the trainee named as true now that the key or the case puts otherwise."""
    if code in case.key.present or _covers_key(code, case, kb):
        return None
    says = training_data().says
    quotes = _case_quotes(reading, code, _NOT_NOW)
    present = _case_quotes(reading, code, ["present"])
    label = kb.label(code)
    if code in case.key.not_present:
        if quotes:
            return _misread(
                code, "not_present", words, quotes, says.misread_not_present.format(label=label)
            )
        # The engine itself reads it as true here: show its words and say it disagrees.
        extra = says.misread_engine_differs if present else says.misread_no_span
        text = f"{says.misread_not_present.format(label=label)} {extra}"
        return _misread(code, "not_present", words, present, text)
    if quotes and not present:
        return _misread(
            code, "not_current", words, quotes, says.misread_not_current.format(label=label)
        )
    return None


def _denied_misread(
    code: str, words: list[YourWords], case: Case, reading: Reading, kb: KnowledgeBase
) -> Misread | None:
    """A code the trainee named as not so that the key lists as true now."""
    if code not in case.key.present:
        return None
    says = training_data().says
    quotes = _case_quotes(reading, code, ["present"])
    text = says.misread_named_absent.format(label=kb.label(code))
    text += "" if quotes else " " + says.misread_no_span
    return _misread(code, "named_absent", words, quotes, text)


def _misreads(
    case: Case,
    claimed: dict[str, list[YourWords]],
    denied: dict[str, list[YourWords]],
    reading: Reading,
    kb: KnowledgeBase,
) -> list[Misread]:
    found = [_claimed_misread(c, w, case, reading, kb) for c, w in claimed.items()]
    # "not depressed" next to "depressed" elsewhere in the answer is a nuance, not a misread.
    found += [
        _denied_misread(c, w, case, reading, kb) for c, w in denied.items() if c not in claimed
    ]
    return [m for m in found if m is not None]


def _not_in_key(
    case: Case, named: dict[str, list[YourWords]], misread: list[Misread], kb: KnowledgeBase
) -> list[CodeNote]:
    says = training_data().says
    skip = {*case.key.present, *(m.code for m in misread)}
    return [
        _code_note(code, kb, says.not_in_key, your_words=words)
        for code, words in named.items()
        if code not in skip and not _covers_key(code, case, kb)
    ]


def _offered(plan: str) -> dict[str, list[YourWords]]:
    """Strategy ids the plan text names, with the words that name them (negated ones left out)."""
    m = _matchers()
    offered: dict[str, list[YourWords]] = {}
    for sid, pattern in m.strategies.items():
        for match in pattern.finditer(plan):
            if not _negated(plan, match.start(), m):
                words = YourWords(
                    field="plan", text=match.group(0), start=match.start(), end=match.end()
                )
                offered.setdefault(sid, []).append(words)
    return offered


def _principle_text(principle: str, kb: KnowledgeBase) -> str:
    return next((p.text for p in kb.principles if p.id == principle), principle)


def _plan_notes(
    case: Case, offered: dict[str, list[YourWords]], kb: KnowledgeBase
) -> tuple[list[PlanNote], list[PlanNote], list[PlanNote], list[PlanNote]]:
    """(caught, missed, also offered, offered though the key says must not)."""
    says = training_data().says

    def note(sid: str, text: str, **extra: str) -> PlanNote:
        return PlanNote(
            strategy=sid,
            label=kb.label(f"strategy:{sid}"),
            your_words=offered.get(sid, []),
            says=text,
            **extra,
        )

    caught = [note(s, says.plan_caught) for s in case.key.plan if s in offered]
    missed = [
        note(s, says.plan_missed.format(says=kb.strategies[s].says))
        for s in case.key.plan
        if s not in offered
    ]
    principle = says.must_not_principle
    wrong = [
        note(s, says.must_not, principle=principle, principle_text=_principle_text(principle, kb))
        for s in case.key.must_not
        if s in offered
    ]
    listed = {*case.key.plan, *case.key.must_not}
    also = [note(s, says.plan_also) for s in offered if s not in listed]
    return caught, missed, also, wrong


def _wording_flags(answer: TraineeAnswer, kb: KnowledgeBase) -> list[WordingFlag]:
    flags: list[WordingFlag] = []
    for field in ("risk", "set", "setting", "plan"):
        text = _answer_text(answer, field)
        if text.strip():
            flags += _stigmatising(field, text, kb) + _coercive(field, text, kb)
    order = ("risk", "set", "setting", "plan")
    return sorted(flags, key=lambda f: (order.index(f.field), f.start))


def _stigmatising(field: AnswerField, text: str, kb: KnowledgeBase) -> list[WordingFlag]:
    principle = training_data().says.stigmatising_principle
    return [
        WordingFlag(
            kind="stigmatising",
            rule="language",
            field=field,
            text=i.text,
            start=i.start,
            end=i.end,
            suggestion=i.suggestion,
            why=i.why,
            principle=principle,
            principle_text=_principle_text(principle, kb),
        )
        for i in language.check(text)
    ]


def _coercive(field: AnswerField, text: str, kb: KnowledgeBase) -> list[WordingFlag]:
    m = _matchers()
    flags: list[WordingFlag] = []
    for rule, patterns in m.wording:
        spans = {
            (match.start(), match.end())
            for pattern in patterns
            for match in pattern.finditer(text)
            if not _negated(text, match.start(), m)
        }
        flags += [
            WordingFlag(
                kind=rule.kind,
                rule=rule.id,
                field=field,
                text=text[s:e],
                start=s,
                end=e,
                suggestion=rule.suggestion,
                why=rule.why,
                principle=rule.principle,
                principle_text=_principle_text(rule.principle, kb),
            )
            for s, e in sorted(spans)
        ]
    return flags


def _level_words(levels: Sequence[Level], kb: KnowledgeBase) -> str:
    labels = [kb.wording.level_labels[lv].lower() for lv in levels]
    return " or ".join(labels)


def _risk_note(case: Case, answer: TraineeAnswer, kb: KnowledgeBase) -> RiskNote:
    says = training_data().says
    m = _matchers()
    key = list(case.key.overdose_risk)
    # The Risk box first: that is where the question is asked.
    for field in ("risk", "set", "setting", "plan"):
        text = _answer_text(answer, field)
        mentions = _risk_mentions(text, m)
        if mentions:
            start, end, level = mentions[0]
            agrees = level in key
            template = says.risk_agrees if agrees else says.risk_differs
            return RiskNote(
                named=level,
                your_words=YourWords(field=field, text=text[start:end], start=start, end=end),
                key=key,
                agrees=agrees,
                says=template.format(named=_level_words([level], kb), key=_level_words(key, kb)),
            )
    return RiskNote(
        named=None, key=key, agrees=None, says=says.risk_not_named.format(key=_level_words(key, kb))
    )


def _teaching(case: Case, kb: KnowledgeBase) -> list[TeachingNote]:
    return [
        TeachingNote(
            principle=t.principle, principle_text=_principle_text(t.principle, kb), point=t.point
        )
        for t in case.key.teaching_points
    ]


def feedback(case_id: str, answer: TraineeAnswer) -> Feedback:
    """Feedback on ``answer`` to the case ``case_id``, held against the case's expert key."""
    case = get_case(case_id)
    kb = load_knowledge()
    said = _read_answer(answer)
    named = _by_code(said, NAMED_STATUSES)
    claimed = _by_code(said, [Status.present])
    denied = _by_code(said, [Status.absent])
    reading = _case_reading(case.id)
    caught, missed = _caught_and_missed(case, named, reading, kb)
    misread = _misreads(case, claimed, denied, reading, kb)
    plan_caught, plan_missed, plan_also, must_not = _plan_notes(case, _offered(answer.plan), kb)
    wording = _wording_flags(answer, kb)
    score = Score(
        caught=len(caught),
        key_findings=len(case.key.present),
        misread=len(misread),
        plan_caught=len(plan_caught),
        plan_items=len(case.key.plan),
        must_not_offered=len(must_not),
        wording_flags=len(wording),
    )
    notes = [] if said else [training_data().says.nothing_read]
    return Feedback(
        case_id=case.id,
        title=case.title,
        score=score,
        caught=caught,
        missed=missed,
        misread=misread,
        not_in_key=_not_in_key(case, named, misread, kb),
        plan_caught=plan_caught,
        plan_missed=plan_missed,
        plan_also=plan_also,
        must_not_offered=must_not,
        wording=wording,
        overdose_risk=_risk_note(case, answer, kb),
        main_issue=case.key.main_issue,
        connected_harms=case.key.connected_harms,
        teaching_points=_teaching(case, kb),
        notes=notes,
    )


# --- the engine against the key -----------------------------------------------------------------


class CaseCheck(_Out):
    """How the engine's own assessment of a case compares with the case's expert key."""

    case_id: str
    agrees: bool
    missed: list[str] = Field(description="key codes the engine did not find present")
    misread: list[str] = Field(description="codes the key says are not so, found present")
    unlisted: list[str] = Field(description="codes found present that the key does not list")
    risk_level: Level
    key_levels: list[Level]
    risk_agrees: bool
    plan_missing: list[str] = Field(description="strategies of the key's plan not offered")
    must_not_offered: list[str] = Field(description="strategies offered that the key rules out")
    engine_note: str = Field(description="why the case and the engine differ, from cases.yaml")

    def differences(self) -> list[str]:
        """One plain line per difference."""
        parts = [
            ("not found", self.missed),
            ("found though the key says not", self.misread),
            ("found but not in the key", self.unlisted),
            ("plan lacks", self.plan_missing),
            ("plan offers what the key rules out", self.must_not_offered),
        ]
        lines = [f"{what}: {', '.join(codes)}" for what, codes in parts if codes]
        if not self.risk_agrees:
            wanted = " or ".join(lv.value for lv in self.key_levels)
            lines.append(f"overdose risk {self.risk_level.value}, key says {wanted}")
        return lines


def _compare(case: Case, assessment: Assessment) -> CaseCheck:
    present = assessment.present_codes()
    plan = {p.strategy for p in assessment.plan}
    key = case.key
    missed = [c for c in key.present if c not in present]
    misread = [c for c in key.not_present if c in present]
    unlisted = sorted(present - set(key.present) - set(key.not_present))
    plan_missing = [s for s in key.plan if s not in plan]
    wrong = [s for s in key.must_not if s in plan]
    level = assessment.overdose_risk.level
    risk_agrees = level in key.overdose_risk
    agrees = risk_agrees and not (missed or misread or unlisted or plan_missing or wrong)
    return CaseCheck(
        case_id=case.id,
        agrees=agrees,
        missed=missed,
        misread=misread,
        unlisted=unlisted,
        risk_level=level,
        key_levels=list(key.overdose_risk),
        risk_agrees=risk_agrees,
        plan_missing=plan_missing,
        must_not_offered=wrong,
        engine_note=key.engine_note,
    )


def check_case(case: Case | str) -> CaseCheck:
    """Assess the case's text with the engine and compare the result with the case's key."""
    found = get_case(case) if isinstance(case, str) else case
    return _compare(found, assess(found.text))


def check_cases() -> list[CaseCheck]:
    """:func:`check_case` for the whole library, in one pass of the pipeline."""
    cases = load_knowledge().cases
    return [_compare(c, a) for c, a in zip(cases, assess_many(c.text for c in cases), strict=True)]


# --- anonymous group results --------------------------------------------------------------------


def group_code(raw: str) -> str:
    """A trainer's group code, in lower case; refuses anything that is not a short code."""
    code = raw.strip().lower()
    if not GROUP_PATTERN.fullmatch(code):
        raise GroupCodeError(
            f"{raw.strip()[:60]!r} is not a group code: use 1 to 40 letters, digits, - or _, "
            "such as tuesday-cohort, and no one's name"
        )
    return code


class Attempt(_Out):
    """One stored attempt: codes and counts only, never a name or the trainee's words."""

    v: Literal[1] = 1
    group: str
    case: str
    date: dt.date
    caught: list[str]
    missed: list[str]
    misread: list[str]
    plan_caught: list[str]
    plan_missed: list[str]
    must_not_offered: list[str]
    risk_agrees: bool | None
    stigmatising: int = Field(ge=0)
    coercive: int = Field(ge=0)
    judgemental: int = Field(ge=0)

    @classmethod
    def of(cls, group: str, fb: Feedback, day: dt.date) -> Attempt:
        kinds = Counter(f.kind for f in fb.wording)
        return cls(
            group=group,
            case=fb.case_id,
            date=day,
            caught=[n.code for n in fb.caught],
            missed=[n.code for n in fb.missed],
            misread=[m.code for m in fb.misread],
            plan_caught=[p.strategy for p in fb.plan_caught],
            plan_missed=[p.strategy for p in fb.plan_missed],
            must_not_offered=[p.strategy for p in fb.must_not_offered],
            risk_agrees=fb.overdose_risk.agrees,
            stigmatising=kinds["stigmatising"],
            coercive=kinds["coercive"],
            judgemental=kinds["judgemental"],
        )


def results_path() -> Path:
    """$RISKSET_TRAINING_FILE, else training.jsonl in the user's riskset data folder."""
    override = os.environ.get(RESULTS_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir("riskset")) / "training.jsonl"


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # One write of one line in append mode: concurrent trainees' lines do not interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def record_attempt(
    group: str, fb: Feedback, *, path: Path | None = None, day: dt.date | None = None
) -> Attempt:
    """Store one attempt for ``group`` (codes and counts only) and return what was stored."""
    attempt = Attempt.of(group_code(group), fb, day or dt.date.today())
    target = path or results_path()
    try:
        _append_line(target, attempt.model_dump_json() + "\n")
    except OSError as err:
        raise TrainingStoreError(f"cannot save to {target}: {err.strerror or err}") from err
    return attempt


def read_attempts(path: Path | None = None) -> Iterator[Attempt | None]:
    """Every stored attempt, in order; ``None`` for a line that cannot be read."""
    target = path or results_path()
    try:
        handle = target.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    except OSError as err:
        raise TrainingStoreError(f"cannot read {target}: {err.strerror or err}") from err
    with handle:
        for line in handle:
            if line.strip():
                yield _parse_attempt(line)


def _parse_attempt(line: str) -> Attempt | None:
    # A hand-edited or half-written line must not hide everyone else's results.
    try:
        return Attempt.model_validate(json.loads(line))
    except (ValueError, ValidationError):
        return None


class Share(_Out):
    code: str
    label: str
    count: int
    share: float = Field(ge=0, le=1, description="count / attempts")


class GroupSummary(_Out):
    """A group's results on one case: counts and shares, nothing about any one person."""

    group: str
    case_id: str
    title: str
    attempts: int
    first: dt.date | None
    last: dt.date | None
    findings: list[Share] = Field(description="per key finding, how many caught it")
    plan: list[Share] = Field(description="per key plan item, how many offered it")
    misreads: list[Share] = Field(description="most common misreads first")
    must_not_offered: list[Share]
    risk_rated: int = Field(description="attempts that rated the overdose risk")
    risk_agreed: int
    coercive_wording: int = Field(description="coercive phrasings, over all attempts")
    judgemental_wording: int
    stigmatising_wording: int
    attempts_with_wording_flags: int
    unreadable_lines: int = Field(description="lines of the results file that could not be read")


def _shares(
    counts: Counter[str], codes: Iterable[str], total: int, kb: KnowledgeBase
) -> list[Share]:
    return [
        Share(
            code=c,
            label=kb.label(c),
            count=counts[c],
            share=round(counts[c] / total, 3) if total else 0.0,
        )
        for c in codes
    ]


def group_results(group: str, case_id: str, *, path: Path | None = None) -> GroupSummary:
    """How a group did on a case: attempts, who caught what, common misreads, wording flags."""
    code = group_code(group)
    case = get_case(case_id)
    kb = load_knowledge()
    unreadable = 0
    mine: list[Attempt] = []
    for attempt in read_attempts(path):
        if attempt is None:
            unreadable += 1
        elif attempt.group == code and attempt.case == case.id:
            mine.append(attempt)
    total = len(mine)

    def tally(attr: str) -> Counter[str]:
        return Counter(c for a in mine for c in set(getattr(a, attr)))

    misreads = tally("misread")
    wrong = tally("must_not_offered")
    plan_codes = [f"strategy:{s}" for s in case.key.plan]
    plan_counts = Counter({f"strategy:{s}": n for s, n in tally("plan_caught").items()})
    return GroupSummary(
        group=code,
        case_id=case.id,
        title=case.title,
        attempts=total,
        first=min((a.date for a in mine), default=None),
        last=max((a.date for a in mine), default=None),
        findings=_shares(tally("caught"), case.key.present, total, kb),
        plan=_shares(plan_counts, plan_codes, total, kb),
        misreads=_shares(misreads, [c for c, _ in misreads.most_common(10)], total, kb),
        must_not_offered=_shares(
            Counter({f"strategy:{s}": n for s, n in wrong.items()}),
            [f"strategy:{s}" for s, _ in wrong.most_common()],
            total,
            kb,
        ),
        risk_rated=sum(a.risk_agrees is not None for a in mine),
        risk_agreed=sum(a.risk_agrees is True for a in mine),
        coercive_wording=sum(a.coercive for a in mine),
        judgemental_wording=sum(a.judgemental for a in mine),
        stigmatising_wording=sum(a.stigmatising for a in mine),
        attempts_with_wording_flags=sum(
            (a.coercive + a.judgemental + a.stigmatising) > 0 for a in mine
        ),
        unreadable_lines=unreadable,
    )
