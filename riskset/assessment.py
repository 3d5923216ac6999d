"""The one entry point: ``assess(text)`` reads a situation and returns the whole ``Assessment``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from . import reading
from .knowledge import KnowledgeBase
from .knowledge import load as load_knowledge
from .models import Assessment, Finding, OverdoseRisk, Status, UrgentFlag
from .plan import make_plan
from .risk import connected_harms, facts_of, overdose_risk, urgent_flags

MAX_TEXT = 1_000_000


class InputError(ValueError):
    """Input riskset cannot assess, with a message meant for the person who sent it."""


def check_text(text: object, limit: int = MAX_TEXT) -> str:
    if not isinstance(text, str):
        raise InputError("the text must be a string")
    if not text.strip():
        raise InputError("the text is empty: describe the situation in a few words")
    if len(text) > limit:
        raise InputError(f"the text is too long ({len(text):,} characters; the limit is {limit:,})")
    if "\x00" in text:
        raise InputError("the text holds binary data (NUL bytes), not words")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        # Lone surrogates ("\ud800") arrive from broken JSON; no reader can use them.
        raise InputError("the text holds characters that are not valid Unicode") from err
    return text


def assess(text: str) -> Assessment:
    """Read a narrative and assess it: findings, overdose risk, urgent flags, harms and plan."""
    text = check_text(text)
    return _assess_reading(reading.read(text), text)


def assess_many(texts: Iterable[str]) -> Iterator[Assessment]:
    """Assess many narratives in one pass of the pipeline (texts must already be checked)."""
    texts = list(texts)
    for text, read in zip(texts, reading.read_many(texts), strict=True):
        yield _assess_reading(read, text)


def assess_findings(
    findings: list[Finding],
    text: str = "",
    signs: list[Finding] | None = None,
    about_others: list[Finding] | None = None,
) -> Assessment:
    """Assess findings that came from elsewhere (the guided questions, a stored record)."""
    kb = load_knowledge()
    signs = list(signs or [])
    unknown = [
        f.code
        for f in [*findings, *signs]
        if f.code not in kb.all_codes() and f.code not in kb.codes
    ]
    if unknown:
        raise InputError(f"unknown code: {', '.join(unknown)} (see `riskset codes`)")
    return _assess(findings, signs, list(about_others or []), text, kb)


def _assess_reading(read: reading.Reading, text: str) -> Assessment:
    return _assess(read.findings, read.signs, read.about_others, text, load_knowledge())


def _assess(
    findings: list[Finding],
    signs: list[Finding],
    about_others: list[Finding],
    text: str,
    kb: KnowledgeBase,
) -> Assessment:
    facts, combos = facts_of(findings, signs, kb, about_others)
    risk = overdose_risk(facts, findings, signs, kb)
    facts.add(f"risk:{risk.level.value}")
    urgent = urgent_flags(facts, findings, signs, kb)
    # (Validated, not model_construct: pydantic checks in compiled code, which is faster than
    # model_construct's Python, and it takes the parts riskset built as they are.)
    return Assessment(
        text=text,
        findings=findings,
        signs=signs,
        about_others=about_others,
        main_issue=_main_issue(risk, urgent, findings, kb),
        urgent=urgent,
        overdose_risk=risk,
        connected_harms=connected_harms(facts, findings, kb),
        combinations=combos,
        plan=make_plan(facts, [*findings, *signs], urgent, kb),
        knowledge_version=kb.version,
    )


def _main_issue(
    risk: OverdoseRisk, urgent: list[UrgentFlag], findings: list[Finding], kb: KnowledgeBase
) -> str:
    """The seed's first question, "What issue is being presented?", in one sentence."""
    words = kb.wording
    level = words.level_labels[risk.level]
    if urgent:
        return words.main_issue_urgent.format(title=urgent[0].title, level=level.lower())
    present = [f for f in findings if f.status is Status.present]
    if not present:
        return words.main_issue_nothing
    substances = [f.label.lower() for f in present if f.code.startswith(("substance:", "route:"))]
    headline = {f.id for f in kb.risk.factors if f.headline}
    top = [r for r in risk.reasons if r.factor in headline and r.weight > 0][:2]
    codes = dict.fromkeys(c for r in top for c in r.because[:2])
    reasons = [", ".join(kb.label(c).lower() for c in codes)] if codes else []
    what = ", ".join(dict.fromkeys(substances)) or "no drug named"
    if not reasons:
        return words.main_issue_use.format(level=level, substances=what)
    return words.main_issue_risk.format(level=level, substances=what, reasons=reasons[0])
