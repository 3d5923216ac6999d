"""The reader: findings, their status, and exact evidence offsets, on any text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import riskset
from riskset.models import Status


def statuses(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in riskset.read(text).findings:
        found.setdefault(f.code, set()).add(f.status.value)
    return found


def present(text: str) -> set[str]:
    return {c for c, s in statuses(text).items() if "present" in s}


@pytest.mark.parametrize(
    ("text", "code", "status"),
    [
        ("denies benzo use, drinks most nights", "substance:benzodiazepines", "absent"),
        # "incl." keeps its stop: the denial runs on to the opioids.
        ("Denies other drugs incl. opioids.", "substance:opioid", "absent"),
        ("she used to shoot but smokes it now", "route:injection", "historical"),
        ("she used to shoot but smokes it now", "route:smoking", "present"),
        ("if he can't find a ride he'll use alone", "using_alone", "hypothetical"),
        ("quit drinking last year, smokes weed", "substance:alcohol", "historical"),
        ("not using alone anymore, her roommate checks on her", "using_alone", "absent"),
        ("Not feeling suicidal but can't sleep", "suicidal_ideation", "absent"),
        ("no narcan on him", "no_naloxone", "present"),
        ("doesnt have narcan", "no_naloxone", "present"),
        ("Has narcan.", "has_naloxone", "present"),
        (
            "asked if it's ok to mix xanax with her oxys?",
            "substance:benzodiazepines",
            "hypothetical",
        ),
        # A medicine asked for is not yet taken; one taken every day is.
        ("came in today asking to start on suboxone", "substance:buprenorphine", "hypothetical"),
        ("scheduled for his first methadone dose monday", "substance:methadone", "hypothetical"),
        ("on methadone 90mg for three years", "substance:methadone", "present"),
        ("sober 5 years from alcohol, vapes weed daily", "substance:alcohol", "historical"),
        # "only" ends a denial; "no longer" is history, though it holds a "no".
        ("won't shoot it, only smokes it", "route:smoking", "present"),
        ("no longer injects, snorts now", "route:injection", "historical"),
        ("got off the needle last spring", "route:injection", "historical"),
        # "off" reaches the next words only: the sickness after it is now.
        ("been off the dope 2 days and sick as a dog", "withdrawal", "present"),
        # A trigger holding the mention's first word; "only" before a place ends nothing.
        ("was on done 2 yrs and left the program in may", "substance:methadone", "historical"),
        ("she used to take it only at raves, now at home", "location:party", "historical"),
        ("before prison he smoked rock and sometimes used dope", "substance:heroin", "historical"),
    ],
)
def test_status(text: str, code: str, status: str) -> None:
    assert status in statuses(text).get(code, set()), statuses(text)


@pytest.mark.parametrize(
    "text",
    [
        "her brother OD'd last month",
        "his girlfriend overdosed in their van",
        "a friend of hers overdosed on coke",
    ],
)
def test_someone_elses_overdose_is_not_the_persons(text: str) -> None:
    assert "prior_overdose" not in present(text)
    others = {f.code for f in riskset.read(text).about_others}
    assert "prior_overdose" in others


def test_clause_ends_negation_scope() -> None:
    found = present("denies opioids but uses meth daily")
    assert "substance:methamphetamine" in found
    assert "substance:opioid" not in found


def test_text_without_punctuation() -> None:
    found = present("not using dope anymore just drinking on weekends")
    assert "substance:heroin" not in found
    assert "substance:alcohol" in found


def test_street_names_and_misspellings() -> None:
    assert "substance:fentanyl" in present("smokin fetty on foil")
    assert "substance:heroin" in present("copped some herion")
    assert "substance:benzodiazepines" in present("took 2 xanex bars")
    assert "substance:methamphetamine" in present("been on tina all weekend")
    assert "suicidal_ideation" in present("i feel sooo done, wanna die")


def test_names_that_are_also_street_names() -> None:
    assert "substance:methamphetamine" not in present("Tina came by the van for socks.")
    assert "substance:mdma" not in present("Molly is 22 and drinks on weekends.")


def test_tolerance_loss_needs_a_break_and_a_return() -> None:
    assert "tolerance_loss" in present("just got out of jail after 8 months, picking up tonight")
    assert "tolerance_loss" not in present("just got out of jail after 8 months, staying with mom")


def test_someone_else_in_the_clause() -> None:
    found = present(
        "Her partner hits her when he's drunk. She injects in the gas station bathroom."
    )
    assert "substance:alcohol" not in found
    assert {"violence_risk", "route:injection", "location:public_restroom"} <= found


def test_evidence_offsets_are_exact_with_unicode_and_crlf() -> None:
    text = "😀 Pt reports\r\nsmoking fentanyl 💊 in the park,\r\nno narcan — café night"
    findings = riskset.read(text).findings
    assert findings
    for f in findings:
        assert f.start is not None and f.end is not None
        assert text[f.start : f.end] == f.text


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400))
def test_any_text_reads_with_valid_spans_and_the_same_answer_twice(text: str) -> None:
    try:
        first = riskset.read(text)
    except riskset.InputError as err:
        # Only text no reader can use is refused, and it is said why.
        assert "\x00" in text or any("\ud800" <= c <= "\udfff" for c in text), err
        return
    for f in first.findings + first.signs + first.about_others:
        if f.start is not None:
            assert 0 <= f.start <= f.end <= len(text)  # type: ignore[operator]
            assert text[f.start : f.end] == f.text
        assert f.status in Status
    again = riskset.read(text)
    assert [f.model_dump() for f in again.findings] == [f.model_dump() for f in first.findings]


@pytest.mark.parametrize(
    "text",
    ["\ufeffheroin alone", "shot \ufeffheroin", "shot her\u200boin", "shot her\u00adoin"],
)
def test_invisible_characters_pasted_into_a_word_do_not_hide_it(text: str) -> None:
    found = {f.code: f for f in riskset.read(text).findings}
    assert "substance:heroin" in found
    heroin = found["substance:heroin"]
    assert text[heroin.start : heroin.end] == heroin.text  # the span keeps the original text


def test_text_no_reader_can_use_is_refused_with_a_reason() -> None:
    with pytest.raises(riskset.InputError, match="not valid Unicode"):
        riskset.read("a\ud800b")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        # Reassurance is not a lack of naloxone.
        ("dont worry im good i got my narcan", "no_naloxone"),
        # A syringe to measure a liquid is not injecting.
        ("she measures her G with a syringe and waits an hour", "route:injection"),
        # Withdrawal feared is not withdrawal now.
        ("wants to quit but is terrified of withdrawal", "withdrawal"),
        # Picking up naloxone is not picking up drugs.
        ("clean 8 months, stopped by to pick up narcan for his job", "tolerance_loss"),
        # "ice" is also meth: only ICE in capitals is immigration enforcement.
        ("been smoking ice since friday", "police_presence"),
        # Naloxone given in an overdose is not naloxone the person carries.
        ("EMS gave him 3 narcan before he came around", "has_naloxone"),
        ("his sister hit him with narcan twice", "violence_risk"),
        ("scared of needles so she only smokes it", "route:injection"),
        # Ages, a festival's tent, a service's van, where a kit is kept.
        ("Pt 30s M at the drop-in, smokes weed", "substance:opioid_pills"),
        ("a 30-year-old who drinks on weekends", "substance:opioid_pills"),
        ("brought to the med tent at the festival, rolling hard", "location:encampment"),
        ("the SEP van was late so she waited at the bus stop", "location:vehicle"),
        ("he keeps the narcan in his car", "location:vehicle"),
        # Selling is not using; a friend staying sober is the friend's goal.
        ("doesnt use, just sells a little weed", "substance:cannabis"),
        ("group of five, one of them staying sober to drive", "goal_stop"),
        # Chills with an abscess and fever are the infection's.
        ("abscess on his arm, fever and chills since yesterday", "withdrawal"),
        # Hours since last use that are many are not being high now.
        ("last used about 20 hrs ago, yawning and cramping", "intoxicated_now"),
        # Others' wishes, dates and supplies.
        ("everyone keeps telling me to go to rehab, i'm not going", "goal_stop"),
        ("speed dating tonight, nervous lol", "substance:amphetamine"),
        ("IM sublocade since Jan, doing well", "route:injection"),
        ("narcan 0.4 IM given by EMS, came around", "route:injection"),
        ("grabbed cookers and alcohol pads from the van", "substance:alcohol"),
        ("Pregnant? No, had her tubes tied years ago.", "pregnant"),
        # A syringe program visit or a rig hints at injecting, but not over another route.
        ("SSP visit: smokes tina on weekends, wanted 10 stems", "route:injection"),
        ("he shoots, i dont. i just smoke the rock. stop asking me for a rig", "route:injection"),
    ],
)
def test_words_that_look_like_a_finding_but_are_not(text: str, code: str) -> None:
    assert code not in present(text)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("her naloxone got stolen at the shelter", "no_naloxone"),
        ("nobody has ever given him naloxone", "no_naloxone"),
        ("chews his gabbies for nerve pain, snorts a bit of coke on fridays", "route:oral"),
        ("me n dre gonna split a bag later", "with_others"),
        ("the guys are all around, they watch out for each other", "with_others"),
        ("overdosed last winter, revived by a stranger", "prior_overdose"),
        ("living out of her van since the eviction", "unhoused"),
        ("says she's gonna go big when her check comes", "intends_to_use"),
        ("shooting up behind the station, commuters walking past", "bystanders_present"),
        # Outreach notes hand out naloxone: "Has narcan x2", "Gave T. 3 narcan".
        ("Has narcan x2, uses with her sister", "has_naloxone"),
        ("Gave T. 3 narcan and a box of rigs.", "has_naloxone"),
        ("cant do this anymore. took all my pills", "suicidal_ideation"),
        ("cant do this anymore. took all my pills", "high_dose"),
        ("sleeping maybe 3 hrs a night since the move", "basic_needs_unmet"),
        ("hasn't slept more than two hours in days", "basic_needs_unmet"),
        ("got choked by a customer last week, still shaken", "violence_risk"),
        ("her boyfriend won't let her leave the apartment", "violence_risk"),
        ("down to 2 bags a day from 6, wants to keep going", "goal_reduce"),
        ("he skin pops now, no veins left", "route:injection"),
        ("SSP visit, took a box of 100 and cottons", "route:injection"),
        ("been sniffing K most nights by myself", "substance:ketamine"),
        ("taking six a day, more than prescribed", "high_dose"),
        ("on the same rig for the 4th day", "equipment_sharing"),
        ("buys what are sold as Xanax and Percocet online", "substance:opioid_pills"),
        # Clinical shorthand.
        ("34M, UDS + fent and BZD, uses MJ daily", "substance:benzodiazepines"),
        ("34M, UDS + fent and BZD, uses MJ daily", "substance:cannabis"),
        ("meth IM most days, no IV", "route:injection"),
        ("quit cold turkey yesterday. hands shaking, cant sleep", "withdrawal"),
    ],
)
def test_ways_people_say_it(text: str, code: str) -> None:
    assert code in present(text)


def test_rule_words_are_read_as_the_tokenizer_splits_them() -> None:
    # "gonna", "w/d" and "co-worker" are several tokens in a text; a rule written with them
    # must still match (the rule files hold such words, and more will be added).
    assert "intends_to_use" in present("gonna use tonight")
    assert "withdrawal" in present("bad w/d since tuesday")
    assert "prior_overdose" not in present("my co-worker overdosed on friday")


def test_a_trigger_reaches_only_the_codes_it_names() -> None:
    # "to start" makes a medicine a wish, but a plan "to start using" is still a plan.
    assert statuses("wants to start using again")["intends_to_use"] == {"present"}
    assert "hypothetical" in statuses("wants to start bupe")["substance:buprenorphine"]


def test_quote_marks_do_not_come_between_the_words_of_a_finding() -> None:
    text = "fent + 'bars' daily, said he took 'a couple' of tabs"
    found = {f.code: f for f in riskset.read(text).findings if f.status is Status.present}
    assert "substance:benzodiazepines" in found
    assert "substance:psychedelics" in found
    # The evidence is still the text exactly as written, quote marks and all.
    for f in found.values():
        assert text[f.start : f.end] == f.text


def test_an_emoji_ends_a_sentence_as_a_full_stop_would() -> None:
    # Without the emoji as a stop, "can't" would reach over it and deny the truck.
    assert "unhoused" in present("i cant even stand 🤮🤮 sleepin in the truck at the rest stop")
    assert "substance:psychedelics" in present("we r so fuckd up rn 🍄🍄")


def test_an_abbreviation_before_a_capital_ends_a_sentence() -> None:
    # "Aug." holds the only stop between the sister's death and the person's drinking.
    assert "substance:alcohol" in present("Her sister OD'd in Aug. T drinking heavy since then.")


def test_the_person_is_who_is_most_often_the_subject_when_pronouns_tie() -> None:
    text = (
        "Woman asking for narcan for her son, says he shoots up in his room and she's "
        "scared she'll find him dead. She doesn't use."
    )
    assert "route:injection" not in present(text)
    assert "mood_anxious" in present(text)


def test_someone_else_overdosing_now_is_the_most_urgent_situation() -> None:
    # The person writing is fine; their brother is not. The plan and the risk are for now.
    a = riskset.assess("my brother is nodding out on the couch and his lips look kinda gray")
    assert a.overdose_risk.level.value == "very_high"
    assert "overdose_response" in {p.strategy for p in a.plan}


def test_a_rule_naming_an_unknown_code_is_refused() -> None:
    from riskset.knowledge import KnowledgeError
    from riskset.knowledge import load as load_knowledge
    from riskset.reading import check_codes, reader_rules

    rules = reader_rules()
    misspelt = rules.rules[0].model_copy(update={"code": "route:injektion"})
    broken = rules.model_copy(update={"rules": [misspelt]})
    with pytest.raises(KnowledgeError, match="route:injektion"):
        check_codes(broken, load_knowledge())


def test_quotes_tell_who_speaks_not_who_the_note_is_about() -> None:
    # A quoted "I" is the person quoted: however many there are, the note is still about her.
    quoted_self = (
        'Dana at the camp. She says "I shoot tranq dope now, I dont care, I am tired, I want '
        'to sleep." She has no narcan.'
    )
    assert {"route:injection", "substance:xylazine", "no_naloxone"} <= present(quoted_self)
    # A quoted "she" is someone the speaker talks about.
    quoted_other = (
        '"Nah, I\'m not using, I\'m here for my girl," Trey said. "She\'s the one with the pills. '
        'Last weekend she took a couple percs at a party." He took a narcan kit.'
    )
    assert "substance:opioid_pills" not in present(quoted_other)


def test_a_stray_quote_mark_quotes_nothing() -> None:
    from riskset.reading import _inside_quotes

    assert _inside_quotes(["she", '"', "i", "shoot", '"', "ok"]) == [
        False, False, True, True, False, False,
    ]  # fmt: skip
    assert _inside_quotes(["she", "\u201c", "i", "shoot"]) == [False] * 4


def test_a_spacy_doc_shows_what_each_component_found() -> None:
    from riskset.reading import load

    text = "denies benzos, shoots fent daily"
    doc = load()(text)
    assert doc._.riskset_reading.findings == riskset.read(text).findings
    assert doc._.riskset_tokens.norms[0] == "denies"
    assert {m.code for m in doc._.riskset_mentions} >= {"route:injection"}


def test_reading_a_batch_leaves_garbage_collection_as_it_was() -> None:
    # The batch pauses the collector while it works (reading makes no reference cycles);
    # whoever called it gets the collector back as they had it.
    import gc

    from riskset.reading import read_many

    texts = ["uses fent daily", "no narcan", "smokes ice"] * 100
    readings = list(read_many(texts))
    assert gc.isenabled()
    assert len(readings) == len(texts)
    gc.disable()
    try:
        list(read_many(texts))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_someone_elses_clause_goes_on_through_and_with_a_verb() -> None:
    # The cousin is still the subject after "and wants"; a denial still stops at the "and".
    cousin = riskset.read("my cousin just got out of prison and wants to use tonight")
    assert "intends_to_use" not in {f.code for f in cousin.findings}
    assert "intends_to_use" in {f.code for f in cousin.about_others}
    assert statuses("denies heroin and wants to use tonight")["intends_to_use"] == {"present"}


def test_clause_bounds_looking_only_at_marked_words_agree_with_looking_at_all() -> None:
    # The normaliser marks the words that may end a clause, so clause_bounds skips the rest;
    # a word the mark misses would silently merge two clauses.
    from riskset.matching import Tokens
    from riskset.reading import load, progress

    nlp = load()
    context = nlp.get_pipe("riskset_context")
    path = Path(__file__).parent / "narratives" / "fresh13.jsonl"
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    for text in texts:
        t = progress(nlp(text)).tokens
        unmarked = Tokens(t.norms, t.texts, t.like_num, t.is_title)
        assert context.clause_bounds(t) == context.clause_bounds(unmarked), text
