"""Tests for training mode: feedback, the case check, group results, the CLI and the web pages."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import typer
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from riskset import language
from riskset.knowledge import load as load_knowledge
from riskset.training import (
    CodeNote,
    Feedback,
    GroupCodeError,
    Misread,
    TraineeAnswer,
    UnknownCase,
    _case_reading,
    _offered,
    check_case,
    feedback,
    get_case,
    group_code,
    group_results,
    read_attempts,
    record_attempt,
    training_data,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "riskset" / "templates"

GOOD_JESSICA = TraineeAnswer(
    risk="Heroin, injected. Her tolerance is lower after months off, so overdose risk is high. "
    "The bag could have fentanyl in it.",
    set="She feels depressed and anxious after the breakup, and is looking to use again.",
    setting="Going back to her encampment in a rush. She got new points at the exchange.",
    plan="Naloxone, don't use alone, start low with a test shot, fentanyl test strips, and "
    "someone to talk to about the breakup if she wants.",
)
POOR_JESSICA = TraineeAnswer(
    risk="she is a junkie who needs to go to rehab",
    plan="She must stop using. I won't help her unless she quits.",
)


@pytest.fixture(autouse=True)
def results_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes group results to its own file, never to the user's data folder."""
    path = tmp_path / "training.jsonl"
    monkeypatch.setenv("RISKSET_TRAINING_FILE", str(path))
    return path


def codes(notes: Sequence[CodeNote | Misread]) -> set[str]:
    return {n.code for n in notes}


# --- feedback -----------------------------------------------------------------------------------


def test_good_answer_on_jessica_catches_the_key() -> None:
    fb = feedback("jessica", GOOD_JESSICA)
    case = get_case("jessica")
    assert fb.score.key_findings == len(case.key.present)
    assert {
        "substance:heroin",
        "route:injection",
        "tolerance_loss",
        "mood_depressed",
        "mood_anxious",
        "location:encampment",
    } <= codes(fb.caught)
    assert fb.score.caught >= len(case.key.present) - 2
    assert fb.misread == []
    assert fb.wording == []
    assert {p.strategy for p in fb.plan_caught} == set(case.key.plan)
    assert fb.plan_missed == []
    assert fb.overdose_risk.named == "high" and fb.overdose_risk.agrees is True
    # The trainee's own words are quoted for what they caught.
    heroin = next(n for n in fb.caught if n.code == "substance:heroin")
    assert heroin.your_words[0].field == "risk"
    assert heroin.your_words[0].text.lower() == "heroin"


def test_risk_is_high_is_not_read_as_being_high() -> None:
    fb = feedback("jessica", GOOD_JESSICA)
    assert "intoxicated_now" not in codes(fb.not_in_key) | codes(fb.misread)


def test_poor_judgemental_answer_is_flagged_with_principles() -> None:
    fb = feedback("jessica", POOR_JESSICA)
    assert fb.caught == []
    assert len(fb.missed) == len(get_case("jessica").key.present)
    flags = {(f.text.lower(), f.kind): f for f in fb.wording}
    junkie = flags[("junkie", "stigmatising")]
    assert junkie.principle == "non_judgemental_non_coercive"
    assert junkie.suggestion and junkie.why
    rehab = flags[("needs to go to rehab", "coercive")]
    assert rehab.principle == "non_judgemental_non_coercive"
    assert rehab.field == "risk" and rehab.principle_text.startswith("Calls for")
    assert ("must stop", "coercive") in flags
    assert flags[("must stop", "coercive")].principle == "quality_of_life"
    assert any(f.rule == "conditional_help" for f in fb.wording)
    principles = {p.id for p in load_knowledge().principles}
    assert all(f.principle in principles for f in fb.wording)
    assert fb.overdose_risk.named is None and fb.overdose_risk.agrees is None


def test_missed_findings_quote_the_case_or_say_there_is_no_span() -> None:
    fb = feedback("jessica", POOR_JESSICA)
    text = get_case("jessica").text
    for note in fb.missed:
        if note.case_words:
            for q in note.case_words:
                assert q.start is not None and q.end is not None
                assert text[q.start : q.end] == q.text
                assert f'"{q.text}"' in note.says
        else:
            assert "found no words" in note.says


def test_a_missed_code_without_a_span_says_so_plainly() -> None:
    # Search the library for a key code the reader finds no words for, so the test follows
    # the reader as it improves.
    for case in load_knowledge().cases:
        reading = _case_reading(case.id)
        found = {f.code for f in reading.findings if f.status.value == "present"}
        unseen = [c for c in case.key.present if c not in found]
        if unseen:
            fb = feedback(case.id, TraineeAnswer())
            note = next(n for n in fb.missed if n.code == unseen[0])
            assert note.case_words == []
            assert note.says == training_data().says.missed_no_span
            return
    pytest.skip("the reader finds words for every key code of every case")


def test_misread_of_something_the_case_negates() -> None:
    answer = TraineeAnswer(risk="Molly from a stranger, and he is drinking alcohol too.")
    fb = feedback("theo_festival_molly", answer)
    alcohol = next(m for m in fb.misread if m.code == "substance:alcohol")
    assert alcohol.kind == "not_present"
    assert alcohol.your_words[0].text in {"drinking", "alcohol"}
    assert alcohol.case_words, "the case's own words should be quoted"
    assert {q.status for q in alcohol.case_words} <= {"absent", "historical"}
    text = get_case("theo_festival_molly").text
    assert all(text[q.start : q.end] == q.text for q in alcohol.case_words)


def test_misread_of_a_present_finding_named_as_absent() -> None:
    answer = TraineeAnswer(set="She is not depressed.")
    fb = feedback("jessica", answer)
    low = next(m for m in fb.misread if m.code == "mood_depressed")
    assert low.kind == "named_absent"
    assert low.case_words and low.case_words[0].text == "depressed"


def test_misread_of_a_past_or_negated_finding_read_as_current() -> None:
    # Any finding the case holds only as past, negated, maybe or about someone else, that the
    # key does not list, must come back as a "not current" misread when named as true now.
    kb = load_knowledge()
    for case in kb.cases:
        reading = _case_reading(case.id)
        present = {f.code for f in reading.findings if f.status.value == "present"}
        listed = {*case.key.present, *case.key.not_present}
        for f in reading.findings:
            if f.status.value != "present" and f.code not in present | listed and f.text:
                answer = TraineeAnswer(risk=f"{kb.label(f.code)}.")
                said = feedback(case.id, answer)
                named = [m for m in said.misread if m.code == f.code]
                if named:
                    assert named[0].kind == "not_current"
                    assert named[0].case_words
                    return
    pytest.skip("no case has an unlisted past or negated finding the reader can name back")


def test_general_drug_name_counts_for_the_specific_drug() -> None:
    fb = feedback("dmitri_prison_release", TraineeAnswer(risk="He plans to use opioids again."))
    assert "substance:heroin" in codes(fb.caught)
    assert "substance:opioid" not in codes(fb.misread)


def test_must_not_strategy_offered_is_flagged() -> None:
    answer = TraineeAnswer(plan="Vein care, new syringes, narcan, and refer him to treatment.")
    fb = feedback("pete_no_treatment", answer)
    wrong = {p.strategy: p for p in fb.must_not_offered}
    assert "treatment_referral" in wrong
    assert wrong["treatment_referral"].principle == "non_judgemental_non_coercive"
    assert {"safer_injection", "sterile_supplies", "naloxone"} <= {
        p.strategy for p in fb.plan_caught
    }


def test_negated_plan_items_and_coercion_are_not_counted() -> None:
    answer = TraineeAnswer(
        plan="Respect that he doesn't want methadone; don't force him into anything. Narcan."
    )
    fb = feedback("pete_no_treatment", answer)
    assert "moud" not in {p.strategy for p in fb.must_not_offered}
    assert not [f for f in fb.wording if f.kind == "coercive"]
    assert "naloxone" in {p.strategy for p in fb.plan_caught}


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("She has to quit.", "must_stop"),
        ("He should get clean first.", "get_clean"),
        ("We should make her stop.", "force"),
        ("No needles unless she stops.", "conditional_help"),
        ("If she doesn't stop we call it.", "conditional_help"),
        ("Let him hit rock bottom.", "tough_love"),
        ("It is her own fault.", "blame"),
        ("Convince him to quit.", "persuade_to_stop"),
    ],
)
def test_coercive_and_judgemental_phrasings(text: str, rule: str) -> None:
    fb = feedback("jessica", TraineeAnswer(plan=text))
    assert rule in {f.rule for f in fb.wording}, fb.wording


@pytest.mark.parametrize(
    "text",
    [
        "Ask what she wants; offer treatment as an option only if she asks.",
        "She needs to stop and eat something.",
        "No pressure. The police force is nearby.",
    ],
)
def test_respectful_plans_are_not_flagged_as_coercive(text: str) -> None:
    fb = feedback("jessica", TraineeAnswer(plan=text))
    assert not [f for f in fb.wording if f.kind != "stigmatising"], fb.wording


def test_teaching_points_carry_principles() -> None:
    fb = feedback("jessica", GOOD_JESSICA)
    case = get_case("jessica")
    assert [t.point for t in fb.teaching_points] == [t.point for t in case.key.teaching_points]
    assert all(t.principle_text for t in fb.teaching_points)
    assert fb.main_issue == case.key.main_issue


def test_empty_answer_gives_a_plain_note() -> None:
    fb = feedback("jessica", TraineeAnswer())
    assert fb.notes and fb.caught == []


def test_unknown_case_suggests_close_ids() -> None:
    with pytest.raises(UnknownCase) as err:
        get_case("jesica")
    assert "jessica" in err.value.suggestions
    with pytest.raises(UnknownCase) as err:
        get_case("walt")
    assert err.value.suggestions == ["walt_pain_pills"]
    assert get_case(" Jessica ").id == "jessica"


def test_answers_have_a_length_limit() -> None:
    with pytest.raises(ValueError):
        TraineeAnswer(risk="x" * 5001)


def test_every_strategy_has_phrases_and_each_phrase_finds_its_strategy() -> None:
    data = training_data()
    assert set(data.strategies) == set(load_knowledge().strategies)
    for sid, phrases in data.strategies.items():
        assert phrases, sid
        for phrase in phrases:
            assert sid in _offered(phrase), (sid, phrase)


def test_feedback_round_trips_as_json() -> None:
    fb = feedback("jessica", GOOD_JESSICA)
    assert Feedback.model_validate_json(fb.model_dump_json()) == fb


# --- the engine against the key -----------------------------------------------------------------


@pytest.mark.parametrize("case_id", [c.id for c in load_knowledge().cases])
def test_every_case_agrees_with_its_key_or_says_why_not(case_id: str) -> None:
    check = check_case(case_id)
    assert check.agrees or check.engine_note.strip(), (
        f"{case_id} differs from its key and has no engine_note: {check.differences()}"
    )
    # A trainer reads the note: one left on a case the engine now gets right misleads them.
    assert not (check.agrees and check.engine_note.strip()), (
        f"{case_id} now agrees with its key; its engine_note is out of date"
    )


@pytest.mark.parametrize("case_id", [c.id for c in load_knowledge().cases if c.key.engine_note])
def test_a_note_about_the_engine_is_only_kept_while_the_engine_still_differs(case_id: str) -> None:
    # A trainer reads the note as the truth about the engine: once the reader learns what the
    # note says it misses, the note must go, or it tells trainers something false.
    check = check_case(case_id)
    assert not check.agrees, f"{case_id} now agrees with its key: remove its engine_note"


def test_case_check_reports_the_differences() -> None:
    check = check_case(get_case("jessica"))
    assert check.case_id == "jessica"
    assert check.risk_level in check.key_levels or not check.risk_agrees
    if not check.agrees:
        assert check.differences()


def test_the_library_is_big_enough() -> None:
    assert len(load_knowledge().cases) >= 25


# --- anonymous group results --------------------------------------------------------------------


def test_group_codes_are_short_codes() -> None:
    assert group_code(" Tuesday-Cohort ") == "tuesday-cohort"
    for bad in ["", "Maria Lopez", "a" * 41, "-x", "x/../y", "tuesday cohort"]:
        with pytest.raises(GroupCodeError):
            group_code(bad)


def test_stored_attempts_hold_no_free_text(results_file: Path) -> None:
    record_attempt("tuesday-cohort", feedback("jessica", POOR_JESSICA))
    line = results_file.read_text(encoding="utf-8")
    row = json.loads(line)
    assert set(row) == {
        "v",
        "group",
        "case",
        "date",
        "caught",
        "missed",
        "misread",
        "plan_caught",
        "plan_missed",
        "must_not_offered",
        "risk_agrees",
        "stigmatising",
        "coercive",
        "judgemental",
    }
    assert "junkie" not in line and "rehab" not in line
    assert row["stigmatising"] == 1 and row["coercive"] >= 2


def test_group_results_aggregate(results_file: Path) -> None:
    record_attempt("tuesday-cohort", feedback("jessica", GOOD_JESSICA))
    record_attempt("tuesday-cohort", feedback("jessica", POOR_JESSICA))
    record_attempt("tuesday-cohort", feedback("theo_festival_molly", GOOD_JESSICA))
    record_attempt("other-group", feedback("jessica", GOOD_JESSICA))
    misread = TraineeAnswer(set="She is not depressed.")
    record_attempt("tuesday-cohort", feedback("jessica", misread))
    with results_file.open("a", encoding="utf-8") as f:
        f.write("not json\n")
    summary = group_results("Tuesday-Cohort", "jessica")
    assert summary.attempts == 3
    assert summary.unreadable_lines == 1
    shares = {s.code: s for s in summary.findings}
    assert shares["substance:heroin"].count == 1
    assert shares["substance:heroin"].share == pytest.approx(1 / 3, abs=0.001)
    assert shares["mood_depressed"].count == 1
    assert summary.misreads[0].code == "mood_depressed"
    assert summary.coercive_wording >= 2
    assert summary.stigmatising_wording == 1
    assert summary.attempts_with_wording_flags == 1
    assert summary.risk_rated == 1 and summary.risk_agreed == 1
    assert group_results("nobody-yet", "jessica").attempts == 0


def test_results_without_a_file_are_empty(results_file: Path) -> None:
    assert list(read_attempts()) == []
    assert group_results("g", "jessica").attempts == 0


# --- the CLI ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    """The training app mounted the way the main CLI mounts it."""
    from riskset.training_cli import train_app

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def other() -> None:
        """Another command, so `train` is a sub-command as in riskset."""

    app.add_typer(train_app, name="train")
    return app


ANSWER_INPUT = (
    "\n".join([GOOD_JESSICA.risk, GOOD_JESSICA.set, GOOD_JESSICA.setting, GOOD_JESSICA.plan]) + "\n"
)


def test_cli_lists_cases(cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["train"])
    assert result.exit_code == 0, result.output
    assert "jessica" in result.output
    assert f"{len(load_knowledge().cases)} cases." in result.output


def test_cli_case_prompts_and_prints_feedback(cli: typer.Typer, results_file: Path) -> None:
    result = CliRunner().invoke(
        cli, ["train", "jessica", "--group", "tuesday-cohort"], input=ANSWER_INPUT
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Jessica has been using heroin" in out
    assert "What you caught" in out and "Teaching points" in out
    assert "Saved for group tuesday-cohort" in out
    assert json.loads(results_file.read_text(encoding="utf-8"))["case"] == "jessica"


def test_cli_case_json(cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["train", "case", "jessica", "--json"], input=ANSWER_INPUT)
    assert result.exit_code == 0, result.output
    # The test runner echoes typed input to stdout; a terminal would not, so skip past it.
    out = result.stdout
    data = json.loads(out[out.index("{\n") :])
    assert data["case_id"] == "jessica" and data["score"]["caught"] >= 9


def test_cli_poor_answer_shows_principles(cli: typer.Typer) -> None:
    text = "\n".join([POOR_JESSICA.risk, "", "", POOR_JESSICA.plan]) + "\n"
    result = CliRunner().invoke(cli, ["train", "jessica"], input=text)
    assert result.exit_code == 0, result.output
    assert "Wording to reconsider" in result.output
    assert "non_judgemental_non_coercive" in result.output


def test_cli_unknown_case_is_one_line_with_suggestions(cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["train", "jesica"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "jessica" in result.stderr and "Traceback" not in result.output


def test_cli_bad_group_is_one_line(cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["train", "jessica", "--group", "Maria Lopez"])
    assert result.exit_code == 1
    assert result.stderr.startswith("riskset: ") and result.stderr.count("\n") == 1


def test_cli_results(cli: typer.Typer) -> None:
    record_attempt("tuesday-cohort", feedback("jessica", GOOD_JESSICA))
    result = CliRunner().invoke(
        cli, ["train", "results", "--group", "tuesday-cohort", "--case", "jessica"]
    )
    assert result.exit_code == 0, result.output
    assert "1 attempt" in result.output and "Heroin" in result.output
    as_json = CliRunner().invoke(
        cli, ["train", "results", "--group", "tuesday-cohort", "--case", "jessica", "--json"]
    )
    assert json.loads(as_json.stdout)["attempts"] == 1
    missing = CliRunner().invoke(cli, ["train", "results", "--group", "x", "--case", "nope"])
    assert missing.exit_code == 1 and missing.stderr.count("\n") == 1
    no_case = CliRunner().invoke(cli, ["train", "results", "--group", "x"])
    assert no_case.exit_code == 1 and no_case.stderr.count("\n") == 1


# --- the web pages and the JSON API -------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> TestClient:
    from riskset import training_web

    app = FastAPI()
    app.include_router(training_web.router)
    return TestClient(app)


def test_web_case_list(client: TestClient) -> None:
    page = client.get("/training")
    assert page.status_code == 200
    assert 'href="/training/jessica"' in page.text
    assert 'lang="en"' in page.text


def test_web_case_page_has_a_labelled_form(client: TestClient) -> None:
    page = client.get("/training/jessica")
    assert page.status_code == 200
    assert "Jessica has been using heroin" in page.text
    for name in ("risk", "set", "setting", "plan", "group"):
        assert f'for="answer-{name}"' in page.text and f'id="answer-{name}"' in page.text
    assert "<script" not in page.text.split("</head>")[1]


def test_web_post_shows_feedback(client: TestClient, results_file: Path) -> None:
    form = {**POOR_JESSICA.model_dump(), "group": "tuesday-cohort"}
    page = client.post("/training/jessica", data=form)
    assert page.status_code == 200
    assert "What you missed" in page.text and "Wording to reconsider" in page.text
    assert "junkie" in page.text and "Saved for group tuesday-cohort" in page.text
    # What the trainee wrote comes back, escaped, so they can revise it.
    assert "needs to go to rehab</textarea>" in page.text
    assert "junkie" not in results_file.read_text(encoding="utf-8")


def test_web_post_escapes_the_answer(client: TestClient) -> None:
    page = client.post("/training/jessica", data={"risk": "<script>alert(1)</script>"})
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text


def test_web_bad_group_still_gives_feedback(client: TestClient) -> None:
    page = client.post("/training/jessica", data={"risk": "heroin", "group": "Maria Lopez"})
    assert page.status_code == 200
    assert "Not saved for the group" in page.text and "What you caught" in page.text


def test_web_unknown_case_is_404_with_suggestions(client: TestClient) -> None:
    page = client.get("/training/jesica")
    assert page.status_code == 404
    assert 'href="/training/jessica"' in page.text


def test_web_results_page(client: TestClient) -> None:
    record_attempt("tuesday-cohort", feedback("jessica", GOOD_JESSICA))
    page = client.get("/training/results", params={"group": "tuesday-cohort", "case": "jessica"})
    assert page.status_code == 200
    assert "1 attempt" in page.text and "Heroin" in page.text
    assert client.get("/training/results").status_code == 200
    bad = client.get("/training/results", params={"group": "Maria Lopez", "case": "jessica"})
    assert bad.status_code == 422 and 'role="alert"' in bad.text


def test_api_cases_hide_the_key(client: TestClient) -> None:
    cases = client.get("/api/v1/training/cases").json()
    assert len(cases) == len(load_knowledge().cases)
    assert "key" not in cases[0]
    one = client.get("/api/v1/training/cases/jessica")
    assert one.status_code == 200 and one.json()["id"] == "jessica"
    missing = client.get("/api/v1/training/cases/jesica")
    assert missing.status_code == 404 and "jessica" in missing.json()["suggestions"]


def test_api_feedback_and_results(client: TestClient) -> None:
    body = {**GOOD_JESSICA.model_dump(), "group": "api-group"}
    got = client.post("/api/v1/training/cases/jessica/feedback", json=body)
    assert got.status_code == 200, got.text
    assert Feedback.model_validate(got.json()).case_id == "jessica"
    results = client.get(
        "/api/v1/training/results", params={"group": "api-group", "case": "jessica"}
    )
    assert results.status_code == 200 and results.json()["attempts"] == 1
    bad = client.post(
        "/api/v1/training/cases/jessica/feedback", json={"risk": "x", "group": "no good"}
    )
    assert bad.status_code == 422 and bad.json()["detail"]
    unknown = client.post("/api/v1/training/cases/nope/feedback", json={"risk": "x"})
    assert unknown.status_code == 404


# --- riskset's own words pass its own language check --------------------------------------------


def _template_text(path: Path) -> str:
    text = re.sub(r"{#.*?#}|{%.*?%}|{{.*?}}", " ", path.read_text(encoding="utf-8"), flags=re.S)
    return re.sub(r"<[^>]+>", " ", text)


def _training_strings() -> list[str]:
    from riskset.training_cli import PROMPTS
    from riskset.training_web import FIELDS

    data = training_data()
    says = data.says.model_dump()
    strings = [v for v in says.values() if isinstance(v, str)]
    strings += list(says["case_status"].values())
    strings += [s for r in data.wording for s in (r.why, r.suggestion)]
    strings += [s for _, title, q in PROMPTS for s in (title, q)]
    strings += [s for _, title, q in FIELDS for s in (title, q)]
    strings += [c.key.engine_note for c in load_knowledge().cases if c.key.engine_note]
    strings += [_template_text(p) for p in sorted(TEMPLATES.glob("training_*.html"))]
    return strings


def test_training_texts_pass_the_language_check() -> None:
    problems = [(s[:60], [i.text for i in language.check(s)]) for s in _training_strings()]
    assert [p for p in problems if p[1]] == []
