"""Timeouts: a request that takes too long gets a clear 503 in time; every other one is untouched.

The slow request is a real one (the Assess page, the JSON API) with the core made slow for one
marked narrative, so what is cut off is exactly what a person would be waiting for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from riskset import web
from riskset.assessment import assess as real_assess
from riskset.models import Assessment
from riskset.web import TIMEOUT_ENV, create_app

from .conftest import JESSICA

# Roomy enough for a cold first request on a busy test machine; STUCK is well past it, yet short.
LIMIT = 1.0
STUCK = 1.6
SLOW = f"{JESSICA} SLOW"


@pytest.fixture
def slow_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader gets stuck on the marked narrative only; every other text reads as usual."""

    def assess(text: str) -> Assessment:
        if text.endswith(" SLOW"):
            time.sleep(STUCK)
        return real_assess(text)

    monkeypatch.setattr("riskset.web.assess", assess)


@pytest.fixture
def client(slow_core: None) -> Iterator[TestClient]:
    with TestClient(create_app(timeout=LIMIT), raise_server_exceptions=False) as c:
        yield c
    # A stuck reading goes on in its thread after the 503; the next test starts once it is done.
    with web._CORE:
        pass


def test_a_stuck_api_request_gets_a_json_503_in_time(client: TestClient) -> None:
    began = time.monotonic()
    r = client.post("/api/v1/assess", json={"text": SLOW})
    waited = time.monotonic() - began
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    assert r.json()["detail"] == (
        "no answer came within 1 second, so riskset stopped trying; please try again soon"
    )
    # The answer comes at the deadline, not when the stuck reading finally ends.
    assert LIMIT <= waited < STUCK
    assert r.headers["cache-control"] == "no-store"  # the usual headers still apply


def test_a_stuck_assess_page_gets_a_friendly_503_page(client: TestClient) -> None:
    began = time.monotonic()
    r = client.post("/assess", data={"text": SLOW})
    waited = time.monotonic() - began
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("text/html")
    assert "That took too long" in r.text
    assert "No answer came within 1 second, so riskset stopped trying; please try again soon." in (
        r.text
    )
    assert "<nav" in r.text  # a whole page, so the person can go on from it
    assert LIMIT <= waited < STUCK


def test_htmx_gets_only_the_message_to_swap_in(client: TestClient) -> None:
    r = client.post("/assess", data={"text": SLOW}, headers={"HX-Request": "true"})
    assert r.status_code == 503
    assert "That took too long" in r.text and "<html" not in r.text


def test_normal_requests_are_unaffected(client: TestClient) -> None:
    r = client.post("/api/v1/assess", json={"text": JESSICA})
    assert r.status_code == 200 and r.json()["overdose_risk"]["level"] == "very_high"
    page = client.post("/assess", data={"text": JESSICA})
    assert page.status_code == 200 and "Very high" in page.text
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/substances/heroin").status_code == 200


def test_after_a_timeout_the_next_person_gets_their_own_answer(client: TestClient) -> None:
    assert client.post("/api/v1/assess", json={"text": SLOW}).status_code == 503
    with web._CORE:  # the stuck reading ends, and its late answer goes nowhere
        pass
    r = client.post("/api/v1/assess", json={"text": "Mixing xanax and alcohol tonight, alone."})
    assert r.status_code == 200
    assert "SLOW" not in r.text and "xanax" in r.json()["text"]


def test_a_slow_but_timely_request_is_answered_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def assess(text: str) -> Assessment:
        time.sleep(0.5)
        return real_assess(text)

    monkeypatch.setattr("riskset.web.assess", assess)
    with TestClient(create_app(timeout=LIMIT)) as c:
        r = c.post("/api/v1/assess", json={"text": JESSICA})
    assert r.status_code == 200 and r.json()["overdose_risk"]["level"] == "very_high"


def test_the_limit_can_be_set_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, slow_core: None
) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    with TestClient(create_app()) as c:
        r = c.post("/api/v1/assess", json={"text": SLOW})
    assert r.status_code == 503 and "no answer came within 0.5 seconds" in r.json()["detail"]
    with web._CORE:  # as in the client fixture: let the stuck reading end
        pass


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan"])
def test_a_bad_limit_in_the_environment_is_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=f"{TIMEOUT_ENV} must be a number of seconds above 0"):
        create_app()

