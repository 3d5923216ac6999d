"""The knowledge base: every contract code defined, every file valid, bad data refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from riskset.knowledge import DATA_FILES, Condition, KnowledgeBase, Substance, load, load_yaml


def test_every_contract_code_is_defined(contract_codes: set[str]) -> None:
    kb = load()
    defined = set(kb.all_codes()) | set(kb.codes)
    assert len(contract_codes) == 88
    assert sorted(contract_codes - defined) == []


def test_every_finding_code_says_why_and_where_it_comes_from() -> None:
    kb = load()
    for entry in kb.codes.values():
        assert entry.label and entry.why and entry.source, entry.code
        assert entry.frame in {"risk", "set", "setting", "sign"}
    for substance in kb.substances.values():
        assert substance.source and substance.overdose_signs and substance.what_helps, substance.id


def test_every_data_file_loads_and_is_versioned() -> None:
    for name in DATA_FILES:
        assert isinstance(load_yaml(name)["version"], int), name
    assert KnowledgeBase().version == load().version


def test_unknown_keys_are_refused() -> None:
    good = load().substances["heroin"].model_dump(by_alias=True)
    with pytest.raises(ValidationError):
        Substance.model_validate({**good, "colour": "brown"})


def test_strategies_sit_on_the_seed_spectrum_with_reasons() -> None:
    kb = load()
    for strategy in kb.strategies.values():
        assert strategy.triggers, strategy.id
        assert all(t.why for t in strategy.triggers)
        assert strategy.spectrum in {"safer_use", "managed_use", "abstinence", "conditions_of_use"}


def test_treatment_is_only_offered_on_the_persons_terms() -> None:
    kb = load()
    for sid in ("treatment_referral", "reduce_use_plan", "moud"):
        assert kb.strategies[sid].needs_goal, sid


def test_connected_harms_cover_the_issue_examples() -> None:
    kb = load()
    harms = {h.id: h for h in kb.harms}
    assert harms["blood_borne_infection"].when.holds({"equipment_sharing"})
    assert harms["sepsis"].when.holds({"wound_or_infection", "route:injection"})
    assert harms["police_displacement"].when.holds({"police_presence", "unhoused"})


def test_condition_logic() -> None:
    cond = Condition(all=["a"], any=["b", "c"], none=["d"])
    assert cond.holds({"a", "c"})
    assert not cond.holds({"a"})
    assert not cond.holds({"a", "b", "d"})
    assert cond.matched({"a", "b"}) == ["a"]


def test_questionnaire_has_the_seeds_eight_questions() -> None:
    frames = [q.frame for q in load().questions]
    assert (frames.count("risk"), frames.count("set"), frames.count("setting")) == (3, 3, 2)
