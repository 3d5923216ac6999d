"""The knowledge base: versioned data files in ``riskset/data``, validated on load, loaded once.

Every fact riskset states lives in these files with its source; the code only reads them. Adding a
street name, a strategy or a connected harm is an edit to a YAML file, never to Python.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from functools import cache, cached_property
from importlib import resources
from typing import Any, Generic, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .models import Frame, InterventionLevel, Level, RiskCategory, Spectrum

SubstanceClass = Literal[
    "opioid", "stimulant", "depressant", "dissociative", "psychedelic", "cannabinoid", "other"
]
SUBSTANCE_CLASSES: tuple[str, ...] = SubstanceClass.__args__  # type: ignore[attr-defined]
ROUTES = ("injection", "smoking", "snorting", "oral")


class KnowledgeError(Exception):
    """A data file is missing, unreadable or does not validate."""


class _Strict(BaseModel):
    # A typo in a data file must fail loudly at load time, not vanish silently.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    """When a rule applies, over the facts of a situation (codes, ``class:...``, ``combo:...``).

    All of ``all``, at least one of ``any`` (if given) and none of ``none`` must hold.
    """

    all: list[str] = Field(default_factory=list)
    any: list[str] = Field(default_factory=list)
    none: list[str] = Field(default_factory=list)

    @cached_property
    def sets(self) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        # Every plan, risk and harm rule is tested for every narrative: keep its lists as sets.
        # (A cached property lives in the instance's own dict, so reading it is a plain lookup;
        # pydantic's private attributes go through a slow __getattr__.)
        return frozenset(self.all), frozenset(self.any), frozenset(self.none)

    @cached_property
    def wakes(self) -> frozenset[str] | None:
        """Facts one of which must be present for this to hold (None: it can hold on any)."""
        need, some, _ = self.sets
        return need or some or None

    def holds(self, facts: set[str] | frozenset[str]) -> bool:
        need, some, never = self.sets
        if not need <= facts or not never.isdisjoint(facts):
            return False
        return not some or not some.isdisjoint(facts)

    def matched(self, facts: set[str] | frozenset[str]) -> list[str]:
        """The facts that made this condition hold: what a reason should point at.

        The `all` facts are the point of the rule; `any` facts only qualify it ("unhoused,
        and uses opioids"), so they count only when there is no `all`.
        """
        required = [f for f in self.all if f in facts]
        return required or [f for f in self.any if f in facts]


R = TypeVar("R")


class ByWakingFact(Generic[R]):
    """Rules indexed by the facts that can make their condition hold.

    Every plan trigger, risk factor, harm and urgent danger is asked about every narrative, and
    most wait for a fact the narrative does not hold: a situation tests only the rules one of
    whose facts it has, and gets those that hold in the rules' own order.
    """

    def __init__(self, rules: Sequence[R], when: Callable[[R], Condition]) -> None:
        self.rules = list(rules)
        self.conditions = [when(rule) for rule in self.rules]
        self.always: list[int] = []  # rules that any situation may satisfy
        self.by_fact: dict[str, list[int]] = {}
        for i, condition in enumerate(self.conditions):
            if condition.wakes is None:
                self.always.append(i)
            else:
                for fact in condition.wakes:
                    self.by_fact.setdefault(fact, []).append(i)
        self.facts = frozenset(self.by_fact)

    def holding(self, facts: set[str] | frozenset[str]) -> list[R]:
        woken = set(self.always)
        for fact in self.facts.intersection(facts):
            woken.update(self.by_fact[fact])
        return [self.rules[i] for i in sorted(woken) if self.conditions[i].holds(facts)]


class CodeEntry(_Strict):
    code: str
    label: str
    frame: Frame | Literal["sign"]
    why: str
    source: str
    contract: bool = True  # False for codes riskset adds beyond the shared vocabulary


class Substance(_Strict):
    id: str
    label: str
    # "class" is a Python keyword; the data files say class.
    klass: SubstanceClass = Field(alias="class")
    aliases: list[str]
    case_sensitive_aliases: list[str] = Field(default_factory=list)
    plain_names: list[str] = Field(
        default_factory=list,
        description="names that mean this drug when named on their own (a combination check), "
        "but need context in running text (bars, rock, molly)",
    )
    routes: list[Literal["injection", "smoking", "snorting", "oral"]]
    overdose_signs: list[str]
    route_notes: str
    what_helps: list[str]
    note: str = ""
    treatment: bool = Field(False, description="a medication for opioid use disorder")
    source: str

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def code(self) -> str:
        return f"substance:{self.id}"


class Trigger(_Strict):
    when: Condition
    why: str


class Strategy(_Strict):
    id: str
    label: str
    says: str
    spectrum: Spectrum
    level: InterventionLevel
    priority: int = Field(description="lower comes first within the plan")
    triggers: list[Trigger]
    needs_goal: bool = Field(
        False, description="offered only when the person wants to cut down or stop"
    )
    source: str

    @property
    def code(self) -> str:
        return f"strategy:{self.id}"


class Harm(_Strict):
    id: str
    label: str
    why: str
    when: Condition
    source: str


class Urgent(_Strict):
    id: str
    title: str
    when: Condition
    what_to_do: list[str]
    plan_first: list[str] = Field(default_factory=list)
    source: str


class RiskFactor(_Strict):
    id: str
    says: str
    weight: int
    headline: bool = Field(True, description="may name the main issue (not plain drug use)")
    when: Condition
    source: str


class LevelFloor(_Strict):
    level: Level
    when: Condition
    why: str


class RiskModel(_Strict):
    thresholds: dict[Level, int]
    factors: list[RiskFactor]
    floors: list[LevelFloor] = Field(default_factory=list)

    @field_validator("thresholds")
    @classmethod
    def _every_level(cls, value: dict[Level, int]) -> dict[Level, int]:
        if set(value) != set(Level):
            raise ValueError("thresholds must give every level")
        return value


class Rating(_Strict):
    pair: tuple[str, str]
    risk: RiskCategory
    why: str
    what_to_do: str
    source: str


class Interactions(_Strict):
    class_ratings: list[Rating]
    pair_ratings: list[Rating]


class Choice(_Strict):
    label: str
    codes: list[str]
    status: Literal["present", "absent"] = "present"


class Question(_Strict):
    id: str
    frame: Frame
    asks: str
    help: str = ""
    choices: list[Choice] = Field(default_factory=list)
    multiple: bool = True
    free_text: bool = False


class TeachingPoint(_Strict):
    principle: str
    point: str


class CaseKey(_Strict):
    present: list[str]
    not_present: list[str] = Field(default_factory=list)
    overdose_risk: list[Level]
    plan: list[str]
    must_not: list[str] = Field(default_factory=list)
    main_issue: str
    connected_harms: list[str] = Field(default_factory=list)
    teaching_points: list[TeachingPoint]
    engine_note: str = Field("", description="where the engine's reading differs from the key, why")


class Case(_Strict):
    id: str
    title: str
    source: str
    tags: list[str] = Field(default_factory=list)
    text: str
    key: CaseKey


class Wording(_Strict):
    """Sentences riskset builds around the knowledge: kept here so they can be reworded freely."""

    level_labels: dict[Level, str]
    main_issue_urgent: str
    main_issue_risk: str
    main_issue_use: str
    main_issue_nothing: str
    handout_title: str
    handout_intro: str
    handout_closing: str
    spectrum_labels: dict[str, str]


class Principle(_Strict):
    id: str
    text: str


# libyaml's safe loader when PyYAML was built with it: the data files load several times faster.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _data_text(name: str) -> str:
    return resources.files("riskset").joinpath("data", name).read_text(encoding="utf-8")


def load_yaml(name: str) -> dict[str, Any]:
    """One data file as a mapping, with its ``version`` checked."""
    try:
        data = yaml.load(_data_text(name), Loader=_LOADER)  # nosec B506 # CSafeLoader or SafeLoader
    except (OSError, yaml.YAMLError) as err:
        raise KnowledgeError(f"cannot read data file {name}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("version"), int):
        raise KnowledgeError(f"data file {name} must be a mapping with an integer 'version'")
    return data


def _validated(name: str, key: str, model: type[BaseModel]) -> list[Any]:
    items = load_yaml(name).get(key, [])
    try:
        return [model.model_validate(item) for item in items]
    except ValidationError as err:
        raise KnowledgeError(f"{name}: {err}") from err


DATA_FILES = (
    "codes.yaml",
    "substances.yaml",
    "medicines.yaml",
    "strategies.yaml",
    "harms.yaml",
    "urgent.yaml",
    "risk.yaml",
    "interactions.yaml",
    "questionnaire.yaml",
    "reader.yaml",
    "cases.yaml",
    "principles.yaml",
    "wording.yaml",
)


class KnowledgeBase:
    """Everything riskset knows, validated and indexed. Get the shared one with ``load()``."""

    def __init__(self) -> None:
        self.codes: dict[str, CodeEntry] = {
            c.code: c for c in _validated("codes.yaml", "codes", CodeEntry)
        }
        substances = _validated("substances.yaml", "substances", Substance)
        substances += _validated("medicines.yaml", "substances", Substance)
        self.substances: dict[str, Substance] = {s.id: s for s in substances}
        self.strategies: dict[str, Strategy] = {
            s.id: s for s in _validated("strategies.yaml", "strategies", Strategy)
        }
        self.goal_facts: frozenset[str] = frozenset(load_yaml("strategies.yaml")["goal_facts"])
        self.wording: Wording = _one("wording.yaml", Wording)
        self.harms: list[Harm] = _validated("harms.yaml", "harms", Harm)
        self.urgent: list[Urgent] = _validated("urgent.yaml", "urgent", Urgent)
        self.risk: RiskModel = _one("risk.yaml", RiskModel)
        self.interactions: Interactions = _one("interactions.yaml", Interactions)
        self.questions: list[Question] = _validated("questionnaire.yaml", "questions", Question)
        self.cases: list[Case] = _validated("cases.yaml", "cases", Case)
        self.principles: list[Principle] = _validated("principles.yaml", "principles", Principle)
        self._check_references()

    @cached_property
    def version(self) -> str:
        """Changes whenever any data file changes, so a record says which knowledge made it."""
        digest = hashlib.sha256()
        for name in DATA_FILES:
            digest.update(_data_text(name).encode())
        return f"kb-{digest.hexdigest()[:10]}"

    def label(self, code: str) -> str:
        if code.startswith("substance:") and code[10:] in self.substances:
            return self.substances[code[10:]].label
        if code.startswith("strategy:") and code[9:] in self.strategies:
            return self.strategies[code[9:]].label
        entry = self.codes.get(code)
        return entry.label if entry else code

    def frame(self, code: str) -> Frame | Literal["sign"]:
        if code.startswith("substance:"):
            return "risk"
        entry = self.codes.get(code)
        return entry.frame if entry else "risk"

    def substance_class(self, code: str) -> str | None:
        substance = self.substances.get(code.removeprefix("substance:"))
        return substance.klass if substance else None

    def all_codes(self) -> list[str]:
        """Every finding and strategy code, as listed by ``riskset codes``."""
        return (
            [s.code for s in self.substances.values()]
            + list(self.codes)
            + [s.code for s in self.strategies.values()]
        )

    @cached_property
    def plan_triggers(self) -> ByWakingFact[tuple[Strategy, Trigger]]:
        pairs = [(s, t) for s in self.strategies.values() for t in s.triggers]
        return ByWakingFact(pairs, lambda pair: pair[1].when)

    @cached_property
    def risk_factors(self) -> ByWakingFact[RiskFactor]:
        return ByWakingFact(self.risk.factors, lambda factor: factor.when)

    @cached_property
    def risk_floors(self) -> ByWakingFact[LevelFloor]:
        return ByWakingFact(self.risk.floors, lambda floor: floor.when)

    @cached_property
    def harms_by_fact(self) -> ByWakingFact[Harm]:
        return ByWakingFact(self.harms, lambda harm: harm.when)

    @cached_property
    def urgent_by_fact(self) -> ByWakingFact[Urgent]:
        return ByWakingFact(self.urgent, lambda urgent: urgent.when)

    @cached_property
    def _ratings(self) -> tuple[dict[frozenset[str], Rating], dict[frozenset[str], Rating]]:
        by_class = {frozenset(r.pair): r for r in self.interactions.class_ratings}
        by_pair = {frozenset(r.pair): r for r in self.interactions.pair_ratings}
        return by_class, by_pair

    def rating(self, a: str, b: str) -> Rating | None:
        """The rating of two substance ids: the pair's own if it has one, else its classes'."""
        by_class, by_pair = self._ratings
        own = by_pair.get(frozenset((a, b)))
        if own is not None:
            return own
        sa, sb = self.substances.get(a), self.substances.get(b)
        if sa is None or sb is None:
            return None
        return by_class.get(frozenset((sa.klass, sb.klass)))

    def _check_references(self) -> None:
        """Every code a rule mentions must exist: a misspelt code would silently never fire."""
        known = set(self.all_codes()) | {f"class:{c}" for c in SUBSTANCE_CLASSES}
        known |= {f"combo:{c}" for c in RiskCategory.__args__}  # type: ignore[attr-defined]
        known |= {f"risk:{lv.value}" for lv in Level}
        known |= {"combo:stack", "moud_only", "only_uppers_or_trips"}  # worked out in risk.py
        known |= {"class:any"} | {f"maybe_combo:{c}" for c in RiskCategory.__args__}  # type: ignore[attr-defined]
        findings = [*self.codes, *(s.code for s in self.substances.values())]
        known |= {f"{prefix}:{c}" for prefix in ("maybe", "not", "past", "other") for c in findings}
        known |= {f"other:class:{c}" for c in SUBSTANCE_CLASSES}
        problems: list[str] = []
        conditions: list[tuple[str, Condition]] = [
            *((f"strategy {s.id}", t.when) for s in self.strategies.values() for t in s.triggers),
            *((f"harm {h.id}", h.when) for h in self.harms),
            *((f"urgent {u.id}", u.when) for u in self.urgent),
            *((f"risk factor {f.id}", f.when) for f in self.risk.factors),
            *((f"risk floor {f.level}", f.when) for f in self.risk.floors),
        ]
        for where, cond in conditions:
            for fact in itertools.chain(cond.all, cond.any, cond.none):
                if fact not in known:
                    problems.append(f"{where} names unknown fact {fact!r}")
        for urgent in self.urgent:
            problems += [
                f"urgent {urgent.id} puts unknown strategy {s!r} first"
                for s in urgent.plan_first
                if s not in self.strategies
            ]
        for question in self.questions:
            for choice in question.choices:
                problems += [
                    f"question {question.id} gives unknown code {c!r}"
                    for c in choice.codes
                    if c not in known
                ]
        for rating in (*self.interactions.pair_ratings,):
            problems += [
                f"pair rating names unknown substance {s!r}"
                for s in rating.pair
                if s not in self.substances
            ]
        for case in self.cases:
            problems += [
                f"case {case.id} key names unknown code {c!r}"
                for c in (*case.key.present, *case.key.not_present)
                if c not in known
            ]
            problems += [
                f"case {case.id} key names unknown strategy {s!r}"
                for s in (*case.key.plan, *case.key.must_not)
                if s not in self.strategies
            ]
        if problems:
            raise KnowledgeError("; ".join(problems))


def _one(name: str, model: type[BaseModel]) -> Any:
    data = {k: v for k, v in load_yaml(name).items() if k != "version"}
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise KnowledgeError(f"{name}: {err}") from err


@cache
def load() -> KnowledgeBase:
    """The knowledge base, loaded and validated once per process (and snapshotted)."""
    from .snapshot import cached

    return cached("knowledge", KnowledgeBase)
