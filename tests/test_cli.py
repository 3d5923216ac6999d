"""The command line, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from riskset.cli import app

from .conftest import JESSICA, ROOT

runner = CliRunner()


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_assess_prints_a_readable_summary() -> None:
    code, out, _ = run("assess", JESSICA)
    assert code == 0
    assert "Overdose risk:" in out and "Loss of tolerance" in out and "Naloxone" in out


def test_assess_json_is_the_whole_model() -> None:
    code, out, _ = run("assess", "--json", "-", stdin=JESSICA)
    data = json.loads(out)
    assert code == 0 and data["overdose_risk"]["level"] in ("high", "very_high")
    assert {"findings", "plan", "urgent", "combinations", "connected_harms"} <= set(data)


def test_handout_is_in_plain_words() -> None:
    code, out, _ = run("assess", "--handout", JESSICA)
    assert code == 0 and "Your plan" in out and "Naloxone" in out
    assert "tolerance_loss" not in out and "risk:" not in out.lower()


def test_jsonl_batch_keeps_order_and_survives_bad_lines() -> None:
    lines = [
        json.dumps({"id": "a", "text": "smokes fent alone"}),
        "{not json",
        json.dumps({"id": "c", "text": ""}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"id": 5, "text": JESSICA}),
    ]
    code, out, _ = run("assess", "--jsonl", stdin="\n".join(lines) + "\n")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 5
    assert [r.get("id") for r in rows] == ["a", None, "c", None, 5]
    assert "error" in rows[1] and "error" in rows[2] and "error" in rows[3]
    assert rows[4]["overdose_risk"]["level"] in ("high", "very_high")
    assert "findings" in rows[0] and "error" not in rows[0]


def test_empty_text_is_one_line_and_exit_1() -> None:
    code, _, err = run("assess", "   ")
    assert code == 1 and err.count("\n") == 1 and "empty" in err


def test_explain_and_unknown_code() -> None:
    code, out, _ = run("explain", "tolerance_loss")
    assert code == 0 and "Merrall" in out
    code, out, _ = run("explain", "naloxone")
    assert code == 0 and "strategy:naloxone" in out
    code, _, err = run("explain", "tolerence_loss")
    assert code == 1 and "did you mean tolerance_loss" in err


def test_codes_lists_every_code(contract_codes: set[str]) -> None:
    code, out, _ = run("codes", "--json")
    listed = {row["code"] for row in json.loads(out)}
    assert (
        code == 0
        and contract_codes - {c for c in contract_codes if c.startswith("sign:")} <= listed
    )


def test_ask_turns_answers_into_findings() -> None:
    # Issue, drug (heroin + injecting), risk (back after a break), then skip the rest.
    answers = "\n".join(["", "1,11", "", "1", "", "", "", "", ""]) + "\n"
    code, out, _ = run("ask", "--json", stdin=answers)
    data = json.loads(out[out.index("{") :])
    found = {f["code"] for f in data["findings"]}
    assert code == 0 and {"substance:heroin", "route:injection", "tolerance_loss"} <= found


def test_python_dash_m_works_and_bad_utf8_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "riskset", "assess", "-"],
        input=b"\xff\xfe not text",
        capture_output=True,
        cwd=ROOT,
    )
    assert proc.returncode == 1 and b"UTF-8" in proc.stderr and b"Traceback" not in proc.stderr


def test_readme_documents_every_command() -> None:
    readme = (Path(ROOT) / "README.md").read_text(encoding="utf-8")
    group = typer.main.get_group(app)
    commands = group.list_commands(typer.Context(group))
    assert {"assess", "users", "records", "train"} <= set(commands)
    missing = [c for c in commands if f"riskset {c}" not in readme]
    assert missing == []


def test_language_check_reads_context() -> None:
    code, out, _ = run("language", "uses clean needles and has been clean for a year")
    assert code == 0 and out.count('"clean"') == 1 and "try" in out
    lines = '{"id": "a", "text": "the addict relapsed"}\n{"id": "b", "text": "user account"}\n'
    code, out, _ = run("language", "--jsonl", stdin=lines)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [len(r["issues"]) for r in rows] == [2, 0]


def test_scrub_removes_what_identifies_and_keeps_drug_words() -> None:
    text = "Jessica Reyes, DOB 3/14/1988, 555-201-3344, smokes tina behind 12 Elm St"
    code, out, _ = run("scrub", "--jsonl", stdin=json.dumps({"id": 1, "text": text}) + "\n")
    row = json.loads(out)
    assert code == 0 and "Jessica" not in row["text"] and "555" not in row["text"]
    assert "tina" in row["text"] and {r["kind"] for r in row["removed"]} >= {"name", "dob", "phone"}


def test_the_same_narratives_get_the_same_answers_in_every_process() -> None:
    # Python seeds its string hashing afresh in each process; the order of sets must never
    # decide a finding (two triggers with the same words once did, by chance).
    lines = [
        json.loads(line)
        for name in ("labelled.jsonl", "fresh2.jsonl")
        for line in (ROOT / "tests" / "narratives" / name).read_text().splitlines()
    ]
    stdin = "".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in lines)
    outputs = []
    for seed in ("1", "4"):  # (these two orders differed before the fix)
        env = {**os.environ, "PYTHONHASHSEED": seed, "RISKSET_CACHE_DIR": "off"}
        run = subprocess.run(
            [sys.executable, "-m", "riskset", "assess", "--jsonl"],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1]
