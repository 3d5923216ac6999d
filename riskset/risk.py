"""Risk: from findings to the facts rules are written over, then the overdose risk, the drug
combinations present, urgent flags and connected harms, each with the findings behind it."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from .knowledge import Condition, KnowledgeBase
from .models import (
    LEVEL_ORDER,
    Combination,
    ConnectedHarm,
    Finding,
    Level,
    OverdoseRisk,
    RiskReason,
    Status,
    UrgentFlag,
)

CATEGORY_ORDER = (
    "dangerous",
    "unsafe",
    "caution",
    "low_risk_synergy",
    "low_risk_no_synergy",
    "low_risk_decrease",
)
STATUS_PREFIX = {
    Status.present: "",
    Status.absent: "not:",
    Status.historical: "past:",
    Status.hypothetical: "maybe:",
}
# Classes whose effects add up to slow breathing: a stack of three is worse than any pair.
DEPRESSANT_CLASSES = {"opioid", "depressant"}
# Classes that, on their own, slow breathing little: being high on only these is a different
# danger, and weighs less.
UPPERS_AND_TRIPS = {"stimulant", "psychedelic", "cannabinoid", "dissociative"}


def substance_ids(findings: Iterable[Finding], status: Status = Status.present) -> list[str]:
    ids: list[str] = []
    for f in findings:
        if f.status is status and f.code.startswith("substance:"):
            sid = f.code.removeprefix("substance:")
            if sid not in ids:
                ids.append(sid)
    return ids


def combinations(ids: list[str], kb: KnowledgeBase) -> list[Combination]:
    """Every pair among the substances, rated, worst first; a stack of depressants on top."""
    found: list[Combination] = []
    ids = _without_generic_duplicates(ids, kb)
    for a, b in itertools.combinations(ids, 2):
        rating = kb.rating(a, b)
        if rating is None:
            continue
        found.append(
            Combination(
                substances=[a, b],
                risk=rating.risk,
                why=rating.why,
                what_to_do=rating.what_to_do,
                source=rating.source,
            )
        )
    found.sort(key=lambda c: CATEGORY_ORDER.index(c.risk))
    stack = [s for s in ids if kb.substances[s].klass in DEPRESSANT_CLASSES]
    if len(stack) >= 3:
        found.insert(0, _stack(stack, found, kb))
    return found


def _without_generic_duplicates(ids: list[str], kb: KnowledgeBase) -> list[str]:
    # "Opioids" beside "heroin" is the same drug said twice, not a mix.
    named_opioid = any(kb.substances[s].klass == "opioid" for s in ids if s != "opioid")
    return [s for s in ids if not (s == "opioid" and named_opioid) and s in kb.substances]


def _stack(stack: list[str], pairs: list[Combination], kb: KnowledgeBase) -> Combination:
    in_stack = [c for c in pairs if set(c.substances) <= set(stack)]
    worst = in_stack[0] if in_stack else None
    names = ", ".join(kb.substances[s].label for s in stack)
    return Combination(
        substances=stack,
        risk="dangerous" if worst is None else worst.risk,
        why=(
            f"{names}: three or more downers together. Each adds to the others, so the mix is "
            "at least as risky as its worst pair, and usually more."
        ),
        what_to_do=(
            "Leave out what you can, use much less of each, space them out, never use alone, "
            "and keep naloxone close."
        ),
        source=worst.source if worst else "facts.md (mixing depressants)",
    )


def facts_of(
    findings: Iterable[Finding],
    signs: Iterable[Finding],
    kb: KnowledgeBase,
    about_others: Iterable[Finding] = (),
) -> tuple[set[str], list[Combination]]:
    """The facts that rules in the knowledge base are written over, and the combinations.

    What is said of someone else becomes "other:<code>": not the person's own finding, but a
    reason to offer naloxone or overdose response to the people around them.
    """
    findings = list(findings)
    facts: set[str] = set()
    for f in about_others:
        if f.status is Status.present:
            facts.add(f"other:{f.code}")
            klass = kb.substance_class(f.code)
            if klass:
                facts.add(f"other:class:{klass}")
    for f in [*findings, *signs]:
        facts.add(STATUS_PREFIX[f.status] + f.code)
        if f.status is Status.present:
            klass = kb.substance_class(f.code)
            if klass:
                facts.update((f"class:{klass}", "class:any"))
    present = substance_ids(findings)
    opioids = [s for s in present if kb.substances[s].klass == "opioid"]
    if opioids and all(kb.substances[s].treatment for s in opioids):
        facts.add("moud_only")  # methadone or buprenorphine and no other opioid
    classes = {kb.substances[s].klass for s in present}
    if classes and classes <= UPPERS_AND_TRIPS:
        facts.add("only_uppers_or_trips")  # high on nothing that slows breathing
    combos = combinations(present, kb)
    facts.update(f"combo:{c.risk}" for c in combos)
    if any(len(c.substances) > 2 for c in combos):
        facts.add("combo:stack")
    maybe = [s for s in substance_ids(findings, Status.hypothetical) if s not in present]
    for a in maybe:
        for b in [*present, *maybe]:
            rating = kb.rating(a, b) if a != b else None
            if rating:
                facts.add(f"maybe_combo:{rating.risk}")
    return facts, combos


def words_by_fact(findings: Iterable[Finding]) -> dict[str, str]:
    """Each fact's first words in the narrative, for reasons a worker can check."""
    by_code: dict[str, str] = {}
    for f in findings:
        if f.text:
            by_code.setdefault(STATUS_PREFIX[f.status] + f.code, f.text)
    return by_code


def codes_behind(matched: list[str], findings: list[Finding], kb: KnowledgeBase) -> list[str]:
    """Turn facts like class:opioid back into the findings that made them true."""
    codes: list[str] = []
    for fact in matched:
        if fact.startswith("class:"):
            klass = fact.removeprefix("class:")
            codes += [
                f.code
                for f in findings
                if f.status is Status.present
                and kb.substance_class(f.code) is not None
                and (klass == "any" or kb.substance_class(f.code) == klass)
            ]
        elif fact.startswith(("combo:", "maybe_combo:")):
            codes += [f.code for f in findings if f.code.startswith("substance:")]
        else:
            codes.append(fact)
    return list(dict.fromkeys(codes))


def grounds(
    cond: Condition,
    facts: set[str],
    every: list[Finding],
    kb: KnowledgeBase,
    words: dict[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """The findings a rule rests on, and their words in the narrative (``words``: those of
    ``every``, when the caller asks for many rules' grounds at once)."""
    because = codes_behind(cond.matched(facts), every, kb)
    by_fact = words if words is not None else words_by_fact(every)
    return because, [by_fact[c] for c in because if c in by_fact]


def overdose_risk(
    facts: set[str], findings: list[Finding], signs: list[Finding], kb: KnowledgeBase
) -> OverdoseRisk:
    reasons: list[RiskReason] = []
    every = [*findings, *signs]
    words = words_by_fact(every)
    for factor in kb.risk_factors.holding(facts):
        because, evidence = grounds(factor.when, facts, every, kb, words)
        reasons.append(
            RiskReason(
                factor=factor.id,
                says=factor.says,
                weight=factor.weight,
                because=because,
                evidence=evidence,
                source=factor.source,
            )
        )
    score = sum(r.weight for r in reasons)
    level = Level.low
    for candidate in LEVEL_ORDER:
        if score >= kb.risk.thresholds[candidate]:
            level = candidate
    for floor in kb.risk_floors.holding(facts):
        if LEVEL_ORDER.index(floor.level) > LEVEL_ORDER.index(level):
            level = floor.level
            because, evidence = grounds(floor.when, facts, every, kb, words)
            reasons.append(
                RiskReason(
                    factor=f"floor_{floor.level.value}",
                    says=floor.why,
                    weight=0,
                    because=because,
                    evidence=evidence,
                    source="risk.yaml (floors)",
                )
            )
    reasons.sort(key=lambda r: -r.weight)
    return OverdoseRisk(level=level, score=score, reasons=reasons)


def urgent_flags(
    facts: set[str], findings: list[Finding], signs: list[Finding], kb: KnowledgeBase
) -> list[UrgentFlag]:
    flags: list[UrgentFlag] = []
    every = [*findings, *signs]
    for urgent in kb.urgent_by_fact.holding(facts):
        because, evidence = grounds(urgent.when, facts, every, kb)
        flags.append(
            UrgentFlag(
                id=urgent.id,
                title=urgent.title,
                what_to_do=urgent.what_to_do,
                because=because,
                evidence=evidence,
                source=urgent.source,
            )
        )
    return flags


def connected_harms(
    facts: set[str], findings: list[Finding], kb: KnowledgeBase
) -> list[ConnectedHarm]:
    return [
        ConnectedHarm(
            id=h.id,
            label=h.label,
            why=h.why,
            because=codes_behind(h.when.matched(facts), findings, kb),
            source=h.source,
        )
        for h in kb.harms_by_fact.holding(facts)
    ]
