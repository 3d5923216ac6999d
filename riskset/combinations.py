"""Drug combinations and substance fact sheets: "is this mix dangerous, and why?"

Names resolve through the knowledge base: aliases, brand names, misspellings and street names
(``plain_names``: words that mean a drug when someone names it on its own, like "bars").
"""

from __future__ import annotations

import difflib
import itertools
import re
from functools import cache

from pydantic import BaseModel, ConfigDict

from .knowledge import KnowledgeBase, Substance
from .knowledge import load as load_knowledge
from .models import Combination, RiskCategory
from .reading import fold
from .risk import CATEGORY_ORDER, combinations


class UnknownName(LookupError):
    """A drug name riskset does not know, with the closest names it does."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown drug name {name!r}{hint}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Named(_Model):
    name: str
    id: str
    label: str
    klass: str


class ComboCheck(_Model):
    """The answer to "what about these together?": every pair, worst first, and any stack."""

    substances: list[Named]
    worst: RiskCategory | None
    combinations: list[Combination]
    summary: str


class PairRating(_Model):
    a: str
    b: str
    risk: RiskCategory
    why: str
    what_to_do: str
    source: str


class FactSheet(_Model):
    id: str
    label: str
    klass: str
    also_called: list[str]
    routes: list[str]
    overdose_signs: list[str]
    route_notes: str
    what_helps: list[str]
    source: str
    riskiest_with: list[PairRating]


SPLIT = re.compile(r"\s*(?:\+|,|&|/|\bwith\b|\band\b|\bplus\b)\s*", re.IGNORECASE)


@cache
def _index() -> dict[str, str]:
    """Every name people use, folded, to a substance id. Street names win over nothing else."""
    kb = load_knowledge()
    index: dict[str, str] = {}
    for s in kb.substances.values():
        for name in (s.id, s.label, *s.aliases, *s.plain_names):
            index.setdefault(_key(name), s.id)
    return index


def _key(name: str) -> str:
    return " ".join(fold(name).replace("_", " ").replace("-", " ").split())


def resolve(name: str) -> Substance:
    """The substance a name means, or UnknownName with suggestions."""
    kb = load_knowledge()
    key = _key(name)
    index = _index()
    sid = index.get(key) or index.get(key.rstrip("s")) or index.get(re.sub(r"(.)\1+", r"\1", key))
    if sid is None:
        close = difflib.get_close_matches(key, list(index), n=3, cutoff=0.75)
        suggestions = list(dict.fromkeys(close))
        raise UnknownName(name, suggestions)
    return kb.substances[sid]


def split_names(names: list[str]) -> list[str]:
    """Accept "fetty + bars + lean" as one argument as well as separate ones."""
    return [part for name in names for part in SPLIT.split(name) if part.strip()]


def _resolve_all(names: list[str]) -> list[tuple[str, Substance]]:
    """Resolve each name; "heroin xanax" (a URL's plus signs) falls back to one name a word."""
    resolved: list[tuple[str, Substance]] = []
    for name in names:
        try:
            resolved.append((name, resolve(name)))
        except UnknownName:
            words = name.split()
            if len(words) < 2:
                raise
            resolved += [(word, resolve(word)) for word in words]
    return resolved


def check(names: list[str]) -> ComboCheck:
    """Rate every pair among the named substances, worst first, with a stack of downers on top."""
    kb = load_knowledge()
    named: list[Named] = []
    for name, s in _resolve_all(split_names(names)):
        if all(n.id != s.id for n in named):
            named.append(Named(name=name, id=s.id, label=s.label, klass=s.klass))
    if len(named) < 2:
        raise ValueError("name at least two different substances to check a combination")
    combos = combinations([n.id for n in named], kb)
    worst = min((c.risk for c in combos), key=CATEGORY_ORDER.index, default=None)
    return ComboCheck(
        substances=named,
        worst=worst,
        combinations=combos,
        summary=_summary(named, worst, kb),
    )


def _summary(named: list[Named], worst: RiskCategory | None, kb: KnowledgeBase) -> str:
    labels = " + ".join(n.label for n in named)
    if worst is None:
        return f"{labels}: no rating found."
    return f"{labels}: {worst.replace('_', ' ')} at worst."


def rate_pair(a: str, b: str) -> PairRating:
    """One pair, for the batch `riskset interactions --jsonl`."""
    sa, sb = resolve(a), resolve(b)
    if sa.id == sb.id:
        raise ValueError(f"{a!r} and {b!r} are the same substance")
    rating = load_knowledge().rating(sa.id, sb.id)
    if rating is None:  # every class pair is rated, so only a broken knowledge base lands here
        raise LookupError(f"no rating for {sa.id} with {sb.id}")
    return PairRating(
        a=a,
        b=b,
        risk=rating.risk,
        why=rating.why,
        what_to_do=rating.what_to_do,
        source=rating.source,
    )


def distinct_names(names: list[str], label: str) -> list[str]:
    """The names worth telling someone: the knowledge base also holds misspellings ("herion")
    and plurals so the reader can find them, but a fact sheet lists each name once."""
    kept: list[str] = []
    seen = [fold(label)]
    for name in names:
        folded = fold(name)
        if folded.split(" ", 1)[0] in ("a", "an", "one", "the", "some"):
            continue  # "a tram", "a bag": how a name is used, not another name
        if any(difflib.SequenceMatcher(None, folded, s).ratio() >= 0.72 for s in seen):
            continue
        kept.append(name)
        seen.append(folded)
    return kept


def fact_sheet(name: str) -> FactSheet:
    """What to know about one substance: overdose signs, routes, what helps, riskiest mixes."""
    kb = load_knowledge()
    s = resolve(name)
    pairs = []
    for other in kb.substances:
        rating = kb.rating(s.id, other) if other != s.id else None
        if rating and rating.risk in ("dangerous", "unsafe"):
            pairs.append(
                PairRating(
                    a=s.id,
                    b=other,
                    risk=rating.risk,
                    why=rating.why,
                    what_to_do=rating.what_to_do,
                    source=rating.source,
                )
            )
    pairs.sort(key=lambda p: CATEGORY_ORDER.index(p.risk))
    return FactSheet(
        id=s.id,
        label=s.label,
        klass=s.klass,
        also_called=distinct_names([*s.plain_names, *s.aliases], s.label)[:12],
        routes=list(s.routes),
        overdose_signs=s.overdose_signs,
        route_notes=s.route_notes,
        what_helps=s.what_helps,
        source=s.source,
        riskiest_with=pairs,
    )


def all_pairs() -> list[tuple[str, str]]:
    return list(itertools.combinations(sorted(load_knowledge().substances), 2))
