"""Reading accuracy on the project's own labelled narratives (never the shared dev set).

The floors are the figures measured when they were last raised; a change that reads worse fails.
`make bench` prints the current figures for every set.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from riskset.cli import assess_lines

from .conftest import SHARED

HERE = Path(__file__).parent / "narratives"
FLOORS = {
    "labelled.jsonl": {
        "f1": 0.94,
        "negation_errors": 12,
        "risk_agreement": 0.83,
        "plan_recall": 0.93,
    },
    "heldout.jsonl": {
        "f1": 0.94,
        "negation_errors": 11,
        "risk_agreement": 0.87,
        "plan_recall": 0.89,
    },
    # Written blind to the rules in session 2; read 0.817 F1 before any rule saw it.
    "fresh.jsonl": {
        "f1": 0.89,
        "negation_errors": 12,
        "risk_agreement": 0.86,
        "plan_recall": 0.87,
    },
    # Written blind to the rules in session 3; read 0.829 F1 (34 negation errors) before.
    "fresh2.jsonl": {
        "f1": 0.92,
        "negation_errors": 12,
        "risk_agreement": 0.85,
        "plan_recall": 0.92,
    },
    # Written blind at the end of session 3; read 0.803 F1 (40 negation errors) before.
    "fresh3.jsonl": {
        "f1": 0.93,
        "negation_errors": 14,
        "risk_agreement": 0.87,
        "plan_recall": 0.93,
    },
    # Written blind in session 4; read 0.835 F1 (61 negation errors) before it was tuned on.
    "fresh4.jsonl": {
        "f1": 0.93,
        "negation_errors": 22,
        "risk_agreement": 0.81,
        "plan_recall": 0.95,
    },
    # Written blind at the end of session 4; never tuned on (0.847 F1).
    "fresh5.jsonl": {
        "f1": 0.86,
        "negation_errors": 27,
        "risk_agreement": 0.81,
        "plan_recall": 0.85,
    },
    # Written blind at the end of session 4, informal texts and self-checks; read 0.799 F1
    # (60 negation errors) before it was tuned on.
    "fresh6.jsonl": {
        "f1": 0.90,
        "negation_errors": 28,
        "risk_agreement": 0.8,
        "plan_recall": 0.86,
    },
    # Written blind at the end of session 4, worker notes in clinical shorthand; read 0.781
    # F1 (45 negation errors) on first reading, then tuned on in session 5.
    "fresh7.jsonl": {
        "f1": 0.89,
        "negation_errors": 26,
        "risk_agreement": 0.81,
        "plan_recall": 0.89,
    },
    # Written blind in session 5 in the development set's styles; read 0.858 F1 (36 negation
    # errors) before it was tuned on.
    "fresh8.jsonl": {
        "f1": 0.89,
        "negation_errors": 24,
        "risk_agreement": 0.90,
        "plan_recall": 0.92,
    },
    # Written blind in session 5, ordinary language in the development set's styles; read
    # 0.847 F1 (29 negation errors) before it was tuned on.
    "fresh9.jsonl": {
        "f1": 0.91,
        "negation_errors": 22,
        "risk_agreement": 0.89,
        "plan_recall": 0.92,
    },
    # Written blind in session 6 in the development set's styles; read 0.875 F1 (24 negation
    # errors) before it was tuned on.
    "fresh10.jsonl": {
        "f1": 0.92,
        "negation_errors": 20,
        "risk_agreement": 0.89,
        "plan_recall": 0.91,
    },
    # Written blind in session 6 by new writers; read 0.820 F1 (52 negation errors) before it
    # was tuned on.
    "fresh11.jsonl": {
        "f1": 0.88,
        "negation_errors": 32,
        "risk_agreement": 0.83,
        "plan_recall": 0.89,
    },
    # Written blind in session 7 by two new writers (phone styles; workers' notes full of word
    # traps); read 0.877 F1 (49 negation errors) before it was tuned on.
    "fresh12.jsonl": {
        "f1": 0.94,
        "negation_errors": 18,
        "risk_agreement": 0.92,
        "plan_recall": 0.94,
    },
    # Written blind in session 7 (text and chat messages that call for a plan; rarely heard
    # voices); read 0.801 F1 (60 negation errors) before it was tuned on.
    "fresh13.jsonl": {
        "f1": 0.85,
        "negation_errors": 42,
        "risk_agreement": 0.80,
        "plan_recall": 0.90,
    },
    # Written blind at the end of session 7 in the development styles, and kept blind.
    "fresh14.jsonl": {
        "f1": 0.86,
        "negation_errors": 51,
        "risk_agreement": 0.77,
        "plan_recall": 0.90,
    },
    # Never inspected: only its figures are ever looked at.
    "blind.jsonl": {
        "f1": 0.88,
        "negation_errors": 25,
        "risk_agreement": 0.87,
        "plan_recall": 0.91,
    },
}


def scorer() -> ModuleType:
    path = SHARED / "tools" / "score_narratives.py"
    if not path.exists():
        pytest.skip(f"the shared scorer is not at {path}")
    spec = importlib.util.spec_from_file_location("score_narratives", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def figures(name: str) -> dict[str, Any]:
    gold = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines()]
    lines = [json.dumps({"id": g["id"], "text": g["text"]}) for g in gold]
    out = [json.loads(line) for line in assess_lines(lines)]
    result: dict[str, Any] = scorer().score(gold, out)
    return result


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_reading_holds_its_floor(name: str) -> None:
    got = figures(name)
    floor = FLOORS[name]
    assert got["missing_outputs"] == 0
    assert got["f1"] >= floor["f1"], got
    assert got["negation_errors"] <= floor["negation_errors"], got
    assert got["risk_agreement"] >= floor["risk_agreement"], got
    assert got["plan_recall"] >= floor["plan_recall"], got


def test_labelled_sets_are_big_enough_and_use_known_codes() -> None:
    rows = [json.loads(line) for line in (HERE / "labelled.jsonl").read_text().splitlines()]
    assert len(rows) >= 150
    with_context = [r for r in rows if r["absent"]]
    assert len(with_context) >= len(rows) / 3
