"""The plan: strategies chosen from the findings and the person's own goals, each with why.

Never coercive: a strategy marked ``needs_goal`` (treatment, a plan to use less, MOUD) is only
offered when the person has said they want to cut down, stop, or asked about it.
"""

from __future__ import annotations

from .knowledge import KnowledgeBase, Trigger
from .models import SPECTRUM_ORDER, Finding, PlanItem, UrgentFlag
from .risk import codes_behind


def make_plan(
    facts: set[str], findings: list[Finding], urgent: list[UrgentFlag], kb: KnowledgeBase
) -> list[PlanItem]:
    first = [s for flag in urgent for s in _plan_first(flag.id, kb)]
    wants_change = bool(facts & kb.goal_facts)
    behind: dict[tuple[str, ...], list[str]] = {}  # one lookup per set of facts, not per trigger
    fired_by: dict[str, list[Trigger]] = {}
    for strategy, trigger in kb.plan_triggers.holding(facts):
        fired_by.setdefault(strategy.id, []).append(trigger)
    items: list[PlanItem] = []
    for strategy in kb.strategies.values():
        if strategy.needs_goal and not wants_change:
            continue
        fired = fired_by.get(strategy.id, [])
        if not fired and strategy.id not in first:
            continue
        because: list[str] = []
        for trigger in fired:
            matched = tuple(trigger.when.matched(facts))
            if matched not in behind:
                behind[matched] = codes_behind(list(matched), findings, kb)
            because += behind[matched]
        items.append(
            PlanItem(
                strategy=strategy.id,
                label=strategy.label,
                says=strategy.says,
                spectrum=strategy.spectrum,
                level=strategy.level,
                why=[t.why for t in fired] or ["This helps with the urgent danger above."],
                because=list(dict.fromkeys(because)),
                urgent=strategy.id in first,
                source=strategy.source,
            )
        )
    priority = kb.strategies
    items.sort(
        key=lambda i: (
            not i.urgent,
            first.index(i.strategy) if i.urgent else 0,
            SPECTRUM_ORDER.index(i.spectrum),
            priority[i.strategy].priority,
        )
    )
    return items


def _plan_first(urgent_id: str, kb: KnowledgeBase) -> list[str]:
    return next((u.plan_first for u in kb.urgent if u.id == urgent_id), [])
