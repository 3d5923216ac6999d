"""riskset's own words pass its own language check: knowledge base, handouts and pages.

Sources are left out: a citation keeps its title as published ("National Institute on Drug
Abuse").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from riskset import assess
from riskset.knowledge import load
from riskset.language import check
from riskset.render import handout, summary
from riskset.web import create_app

from .conftest import JESSICA

SKIP_KEYS = {"source", "sources", "url", "id", "code", "pair", "when", "aliases", "plain_names"}


def texts(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in SKIP_KEYS:
                yield from texts(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from texts(item, f"{where}[{i}]")


def knowledge_texts() -> list[tuple[str, str]]:
    kb = load()
    found: list[tuple[str, str]] = []
    groups: dict[str, Any] = {
        "codes": list(kb.codes.values()),
        "substances": list(kb.substances.values()),
        "strategies": list(kb.strategies.values()),
        "harms": kb.harms,
        "urgent": kb.urgent,
        "risk": kb.risk.factors,
        "questions": kb.questions,
        "interactions": [*kb.interactions.class_ratings, *kb.interactions.pair_ratings],
        "wording": [kb.wording],
    }
    for name, items in groups.items():
        for item in items:
            found += texts(item.model_dump(), name)
    return found


def test_every_knowledge_base_text_passes() -> None:
    flagged = [(where, i.text) for where, t in knowledge_texts() for i in check(t)]
    assert flagged == []


def test_handout_and_summary_pass() -> None:
    a = assess(JESSICA)
    assert check(handout(a)) == []
    assert [i.text for i in check(summary(a).replace(JESSICA, ""))] == []


@pytest.mark.parametrize(
    "path", ["/", "/codes", "/combinations?names=heroin+xanax", "/substances/fentanyl", "/training"]
)
def test_pages_pass(path: str) -> None:
    page = TestClient(create_app()).get(path)
    assert page.status_code == 200
    visible = re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", page.text, flags=re.S)
    assert [i.text for i in check(visible)] == []
