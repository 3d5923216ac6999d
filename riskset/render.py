"""Plain-text views of an assessment: the worker's summary and the person's handout.

The web pages render the same ``Assessment`` with templates; these are for terminals and print.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

from .combinations import ComboCheck, FactSheet
from .knowledge import KnowledgeBase
from .knowledge import load as load_knowledge
from .models import Assessment, Finding, PlanItem, Status

FRAME_TITLES = {"risk": "Risk", "set": "Set", "setting": "Setting"}
STATUS_WORDS = {
    Status.absent: "not so",
    Status.historical: "in the past",
    Status.hypothetical: "maybe / asked about",
}
WIDTH = 88


def _wrap(text: str, indent: str = "  ", width: int = WIDTH) -> str:
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent + "  ")


def _finding_line(f: Finding) -> str:
    words = f' "{f.text}"' if f.text else " (inferred)"
    status = "" if f.status is Status.present else f"  [{STATUS_WORDS[f.status]}: {f.cue or ''}]"
    return f"  - {f.label}{words}{status}"


def summary(a: Assessment) -> str:
    """The worker's view: urgent first, then risk, what the situation holds, harms and plan."""
    kb = load_knowledge()
    out: list[str] = []
    for flag in a.urgent:
        out.append(f"!! URGENT: {flag.title}")
        out += [_wrap(step, "   ") for step in flag.what_to_do]
        out.append("")
    level = kb.wording.level_labels[a.overdose_risk.level]
    out.append(f"Main issue: {a.main_issue}")
    out.append("")
    out.append(f"Overdose risk: {level.upper()}")
    for reason in a.overdose_risk.reasons:
        shown = f' ("{", ".join(reason.evidence)}")' if reason.evidence else ""
        sign = "-" if reason.weight < 0 else "+"
        out.append(_wrap(f"{sign} {reason.says}{shown}"))
    out.append("")
    out += _by_frame(a.findings)
    if a.about_others:
        out.append("About someone else (not counted as this person's):")
        out += [_finding_line(f) for f in a.about_others]
        out.append("")
    if a.combinations:
        out.append("Combinations:")
        for combo in a.combinations:
            names = " + ".join(kb.label(f"substance:{s}") for s in combo.substances)
            out.append(_wrap(f"- {names}: {combo.risk.replace('_', ' ')}. {combo.why}"))
        out.append("")
    if a.connected_harms:
        out.append("Connected harms:")
        out += [_wrap(f"- {h.label}: {h.why}") for h in a.connected_harms]
        out.append("")
    out.append("Plan:")
    out += _plan_lines(a.plan, kb, with_why=True)
    return "\n".join(out).rstrip() + "\n"


def _by_frame(findings: Iterable[Finding]) -> list[str]:
    out: list[str] = []
    findings = list(findings)
    for frame, title in FRAME_TITLES.items():
        mine = [f for f in findings if f.frame == frame]
        if not mine:
            continue
        out.append(f"{title}:")
        out += [_finding_line(f) for f in mine]
        out.append("")
    if not findings:
        out += ["Nothing specific found in the text.", ""]
    return out


def _plan_lines(plan: list[PlanItem], kb: KnowledgeBase, with_why: bool) -> list[str]:
    out: list[str] = []
    urgent = [p for p in plan if p.urgent]
    if urgent:
        out.append("  Right now")
        out += _items(urgent, with_why)
    for spectrum, title in kb.wording.spectrum_labels.items():
        items = [p for p in plan if p.spectrum == spectrum and not p.urgent]
        if items:
            out.append(f"  {title}")
            out += _items(items, with_why)
    if not plan:
        out.append("  Nothing in particular; check in again any time.")
    return out


def _items(items: list[PlanItem], with_why: bool) -> list[str]:
    out: list[str] = []
    for item in items:
        out.append(_wrap(f"* {item.label}: {item.says}", "    "))
        if with_why:
            out.append(_wrap(f"why: {' '.join(item.why)}", "        "))
    return out


def handout(a: Assessment) -> str:
    """The person's take-away: their plan in plain, person-first words, nothing clinical."""
    kb = load_knowledge()
    words = kb.wording
    out = [
        words.handout_title,
        "=" * len(words.handout_title),
        "",
        _wrap(words.handout_intro, ""),
        "",
    ]
    for flag in a.urgent:
        out.append(f"Right now: {flag.title}")
        out += [_wrap(f"- {step}", "  ") for step in flag.what_to_do]
        out.append("")
    for spectrum, title in words.spectrum_labels.items():
        items = [p for p in a.plan if p.spectrum == spectrum]
        if not items:
            continue
        out += [title, "-" * len(title)]
        out += [_wrap(f"* {p.label}: {p.says}", "") for p in items]
        out.append("")
    out.append(_wrap(words.handout_closing, ""))
    return "\n".join(out) + "\n"


def combo_check(c: ComboCheck) -> str:
    """A combination check in plain words: the worst first, each with what to do."""
    out = [c.summary, ""]
    for combo in c.combinations:
        names = " + ".join(_label(s) for s in combo.substances)
        out.append(f"{combo.risk.replace('_', ' ').upper()}: {names}")
        out.append(_wrap(combo.why))
        out.append(_wrap(f"What helps: {combo.what_to_do}"))
        out.append(_wrap(f"Source: {combo.source}"))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def fact_sheet(f: FactSheet) -> str:
    out = [f"{f.label} ({f.klass})", ""]
    if f.also_called:
        out.append(_wrap(f"Also called: {', '.join(f.also_called)}", ""))
    out.append(_wrap(f"Taken by: {', '.join(f.routes) or 'see below'}. {f.route_notes}", ""))
    out += ["", "What too much looks like:"] + [_wrap(f"- {sign}") for sign in f.overdose_signs]
    out += ["", "What helps:"] + [_wrap(f"- {tip}") for tip in f.what_helps]
    if f.riskiest_with:
        out += ["", "Riskiest with:"]
        out += [_wrap(f"- {_label(p.b)} ({p.risk}): {p.why}") for p in f.riskiest_with[:8]]
    out += ["", _wrap(f"Source: {f.source}", "")]
    return "\n".join(out) + "\n"


def _label(sid: str) -> str:
    return load_knowledge().label(f"substance:{sid}")
