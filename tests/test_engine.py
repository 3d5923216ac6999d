"""The engine: the whole assessment a worker gets back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import riskset
from riskset import InputError, assess
from riskset.models import Finding

from .conftest import JESSICA


def test_jessica_as_the_seed_writes_it() -> None:
    a = assess(JESSICA)
    expected = {
        "substance:heroin", "route:injection", "tolerance_loss", "grief_or_loss",
        "mood_depressed", "mood_anxious", "intends_to_use", "new_equipment",
        "location:encampment", "unhoused", "rushed_use",
    }  # fmt: skip
    assert expected <= a.present_codes()
    assert a.overdose_risk.level in ("high", "very_high")
    tolerance = [r for r in a.overdose_risk.reasons if "tolerance_loss" in r.because]
    assert tolerance and tolerance[0].evidence == ["stopped using for a few months"]
    plan = {p.strategy: p for p in a.plan}
    for sid in ("naloxone", "dont_use_alone", "start_low", "test_strips", "mental_health_support"):
        assert sid in plan and plan[sid].why, sid


def test_every_finding_shows_its_words() -> None:
    a = assess(JESSICA)
    for f in a.findings:
        if f.source == "narrative":
            assert JESSICA[f.start : f.end] == f.text


def test_urgent_overdose_now_comes_first_with_what_to_do() -> None:
    a = assess("my friend is not breathing and his lips are blue, we did fent")
    assert a.urgent[0].id == "overdose_now"
    assert any("naloxone" in step.lower() for step in a.urgent[0].what_to_do)
    assert a.plan[0].urgent and a.plan[0].strategy in ("overdose_response", "naloxone")
    assert a.overdose_risk.level == "very_high"


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("says he doesn't care if he wakes up anymore, shooting dope alone", "suicide_risk"),
        ("smoked crack all night and now has chest pain", "stimulant_chest_pain"),
        ("abscess on her arm and a fever since yesterday, still injecting", "fever_with_wound"),
    ],
)
def test_urgent_dangers(text: str, flag: str) -> None:
    a = assess(text)
    assert flag in [u.id for u in a.urgent]
    assert a.main_issue.startswith(a.urgent[0].title)


def test_no_urgent_flag_for_a_past_overdose_or_a_denial() -> None:
    assert assess("OD'd last year, denies suicidal thoughts, smokes fent").urgent == []


def test_treatment_is_never_pushed() -> None:
    plan = {p.strategy for p in assess("injects heroin daily, no interest in stopping").plan}
    assert not plan & {"moud", "treatment_referral", "reduce_use_plan"}
    wants = {p.strategy for p in assess("injects heroin daily and wants to cut down").plan}
    assert {"moud", "reduce_use_plan"} <= wants
    stop = {p.strategy for p in assess("drinks a fifth a day and wants to stop drinking").plan}
    assert "treatment_referral" in stop


def test_dangerous_mix_raises_risk_and_plans_avoid_mixing() -> None:
    a = assess("takes xanax bars with her oxys every night")
    assert a.combinations and a.combinations[0].risk == "dangerous"
    assert any(r.factor == "dangerous_mix" for r in a.overdose_risk.reasons)
    assert "avoid_mixing" in {p.strategy for p in a.plan}


@pytest.mark.parametrize(
    ("text", "strategy"),
    [
        # Carrying naloxone: where to keep it and who should know.
        ("i keep my narcan in my car, i use at my apartment", "naloxone"),
        # Keeping alcohol away from downers is worth backing up.
        ("takes a couple xanax at night, never with alcohol", "avoid_mixing"),
        # Too much of a stimulant is an overdose too.
        ("up 3 days on meth, chest hurts, heart pounding", "overdose_response"),
        ("asked for narcan, her son shoots up in his room", "overdose_response"),
        # Already on treatment: getting the dose back is their own path, not a push.
        ("ran out of my bupe friday, clinic closed til monday, getting sick", "moud"),
        # Planning to use something new: a little first.
        ("me and my friends want to do acid this weekend, first time", "start_low"),
    ],
)
def test_plan_meets_the_situation(text: str, strategy: str) -> None:
    assert strategy in {p.strategy for p in assess(text).plan}


def test_methadone_alone_is_moderate_and_ghb_adds_to_risk() -> None:
    assert assess("on methadone 80mg, stable, nothing else").overdose_risk.level == "moderate"
    assert assess("does G at parties most weekends").overdose_risk.level == "moderate"


def test_cannabis_alone_is_low_risk_without_naloxone() -> None:
    a = assess("Smokes weed every day. No other substance use reported.")
    assert a.overdose_risk.level == "low"
    assert "naloxone" not in {p.strategy for p in a.plan}


def test_connected_harms_follow_findings() -> None:
    harms = {
        h.id for h in assess("shares needles at the camp, cops keep sweeping it").connected_harms
    }
    assert {"blood_borne_infection", "police_displacement"} <= harms


def test_assess_from_findings() -> None:
    a = riskset.assess_findings([Finding(code="substance:fentanyl"), Finding(code="using_alone")])
    assert a.overdose_risk.level in ("high", "very_high")
    with pytest.raises(InputError, match="unknown code"):
        riskset.assess_findings([Finding(code="substance:unobtainium")])


@pytest.mark.parametrize("bad", ["", "   \n ", "x" * 1_000_001, "a\x00b"])
def test_bad_text_gets_a_clear_error(bad: str) -> None:
    with pytest.raises(InputError):
        assess(bad)


def test_plan_is_grouped_urgent_first() -> None:
    a = assess("thinks about killing himself, injects fent alone in his car")
    assert a.plan[0].strategy == "crisis_support" and a.plan[0].urgent
    spectra = [p.spectrum for p in a.plan if not p.urgent]
    order = ["safer_use", "managed_use", "abstinence", "conditions_of_use"]
    assert spectra == sorted(spectra, key=order.index)


@settings(max_examples=120, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gets_an_assessment_or_a_clear_error(text: str) -> None:
    try:
        a = assess(text)
    except InputError as err:
        assert str(err)
        return
    assert a.overdose_risk.level in ("low", "moderate", "high", "very_high")
    assert a.main_issue


@pytest.mark.parametrize(
    "text",
    [
        "😀😀😀 💉💊🔥",
        "ÿ\x01\x02 binary-ish \x7f text \u200b",
        "smokes fent " * 80_000,  # about 1 MB
        "\r\n".join(["Pt seen at camp", "shoots dope", "no narcan"]),
    ],
)
def test_odd_text_is_read(text: str) -> None:
    a = assess(text)
    for f in a.findings:
        if f.start is not None:
            assert text[f.start : f.end] == f.text


def test_high_on_ketamine_alone_weighs_less_than_high_on_downers() -> None:
    # Ketamine slows breathing less than downers do; with a downer it counts in full.
    def weights(text: str) -> dict[str, int]:
        return {r.factor: r.weight for r in assess(text).overdose_risk.reasons}

    assert weights("in a k hole rn, did a few bumps of ket")["intoxicated_now_uppers"] == 1
    with_bars = weights("did a few bumps of ket n a couple bars, nodding hard rn")
    assert with_bars["intoxicated_now"] == 2
