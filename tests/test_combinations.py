"""Drug combinations: every pair rated with a reason and a source; names resolve as people write."""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from riskset.cli import app
from riskset.combinations import UnknownName, check, fact_sheet, resolve
from riskset.knowledge import load

runner = CliRunner()
OPIOIDS = [s.id for s in load().substances.values() if s.klass == "opioid"]


def test_every_pair_of_substances_is_rated_with_a_reason_and_source() -> None:
    kb = load()
    for a, b in itertools.combinations(sorted(kb.substances), 2):
        rating = kb.rating(a, b)
        assert rating is not None, (a, b)
        assert rating.why and rating.what_to_do and rating.source, (a, b)


@pytest.mark.parametrize("other", ["alcohol", "benzodiazepines", "ghb", "gabapentin", "xylazine"])
@pytest.mark.parametrize("opioid", OPIOIDS)
def test_opioids_with_depressants_are_dangerous(opioid: str, other: str) -> None:
    rating = load().rating(opioid, other)
    assert rating is not None and rating.risk == "dangerous"


@pytest.mark.parametrize(
    ("a", "b"),
    [("alcohol", "benzodiazepines"), ("alcohol", "ghb"), ("ghb", "benzodiazepines")],
)
def test_depressant_pairs_are_dangerous(a: str, b: str) -> None:
    rating = load().rating(a, b)
    assert rating is not None and rating.risk == "dangerous"


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        ("tramadol", "mdma", "serotonin"),
        ("tramadol", "methamphetamine", "seizure"),
        ("maoi", "cocaine", "blood pressure"),
        ("maoi", "mdma", "serotonin"),
        ("maoi", "ssri_snri", "serotonin"),
        ("cocaine", "alcohol", "cocaethylene"),
    ],
)
def test_flagged_pairs_carry_their_own_reason(a: str, b: str, why: str) -> None:
    rating = load().rating(a, b)
    assert rating is not None and rating.risk in ("dangerous", "unsafe")
    assert why in rating.why.lower()


def test_street_names_make_a_dangerous_stack() -> None:
    result = check(["fetty + bars + lean"])
    assert [n.id for n in result.substances] == ["fentanyl", "benzodiazepines", "codeine"]
    stack = result.combinations[0]
    assert len(stack.substances) == 3 and stack.risk == "dangerous"
    assert "worst pair" in stack.why


@pytest.mark.parametrize(
    ("name", "sid"),
    [
        ("Xanax", "benzodiazepines"),
        ("percs", "opioid_pills"),
        ("fentanil", "fentanyl"),
        ("Zoloft", "ssri_snri"),
        ("molly", "mdma"),
        ("XANAXX", "benzodiazepines"),
        ("tina", "methamphetamine"),
    ],
)
def test_names_resolve(name: str, sid: str) -> None:
    assert resolve(name).id == sid


def test_unknown_name_suggests() -> None:
    with pytest.raises(UnknownName) as err:
        resolve("oxycontn")
    assert "oxycontin" in err.value.suggestions


def test_fact_sheet() -> None:
    sheet = fact_sheet("tranq")
    assert sheet.id == "xylazine" and sheet.overdose_signs and sheet.what_helps and sheet.source
    assert sheet.riskiest_with and sheet.riskiest_with[0].risk == "dangerous"


def test_fact_sheet_names_each_name_once_without_misspellings() -> None:
    # The reader knows "herion" and "tramodol"; a fact sheet should not teach them.
    heroin = fact_sheet("heroin").also_called
    assert "smack" in heroin and "dope" in heroin
    assert not {"herion", "heroine", "heroinn"} & set(heroin)
    assert "tramodol" not in fact_sheet("tramadol").also_called


def test_cli_check_drug_and_interactions() -> None:
    result = runner.invoke(app, ["check", "heroin", "xanax"])
    assert result.exit_code == 0 and "DANGEROUS" in result.stdout
    result = runner.invoke(app, ["check", "heroin", "blorp"])
    assert result.exit_code == 1 and "unknown drug name" in result.stderr
    result = runner.invoke(app, ["drug", "narcan"])
    assert result.exit_code == 1
    result = runner.invoke(app, ["drug", "fetty", "--json"])
    assert json.loads(result.stdout)["id"] == "fentanyl"
    lines = '{"a": "heroin", "b": "beer"}\nnope\n{"a": "coke", "b": "blorp"}\n'
    result = runner.invoke(app, ["interactions", "--jsonl"], input=lines)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("risk") for r in rows] == ["dangerous", None, None]
    assert {"a", "b", "risk", "why", "source"} <= set(rows[0])


def test_assessment_feeds_combinations_into_risk_and_plan() -> None:
    from riskset import assess

    a = assess("been drinking all day and took a couple bars, also sniffing dope")
    assert a.combinations[0].risk == "dangerous"
    assert len(a.combinations[0].substances) == 3
    assert "avoid_mixing" in {p.strategy for p in a.plan}
