"""The web app and JSON API through FastAPI's TestClient: pages, API, bad input, schemathesis."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import checks

from riskset import assess
from riskset.knowledge import load as load_knowledge
from riskset.language import check as language_check
from riskset.web import NARRATIVE_QUESTION, create_app

from .conftest import JESSICA

APP = create_app()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # raise_server_exceptions=False: a 500 must show up as a status here, never as a traceback.
    with TestClient(APP, raise_server_exceptions=False) as c:
        yield c


def visible_text(page: str) -> str:
    """The words a person sees on a page, without tags, scripts or styles."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


# --- assess: HTML and JSON ------------------------------------------------------------------------


def test_home_has_the_narrative_box_and_the_seeds_questions(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert '<textarea id="text" name="text"' in r.text
    for question in load_knowledge().questions:
        assert html.escape(question.asks, quote=False) in r.text
    assert 'class="skip-link" href="#main"' in r.text and '<main id="main"' in r.text


def test_assess_page_shows_the_jessica_result(client: TestClient) -> None:
    r = client.post("/assess", data={"text": JESSICA})
    assert r.status_code == 200
    text = visible_text(r.text)
    assert "What riskset found" in text and "Very high" in text
    assert "Heroin" in text and "Loss of tolerance" in text and "Naloxone" in text
    # The evidence is highlighted in the narrative and labelled.
    assert '<mark class="hl hl-present">heroin</mark>' in r.text
    assert "stopped using for a few months</mark>" in r.text
    # The form comes back filled in, so the worker can change the account.
    assert f">{html.escape(JESSICA)}</textarea>" in r.text.replace("&#39;", "'")


def test_result_links_point_at_entries_on_the_codes_page(client: TestClient) -> None:
    result = client.post("/assess", data={"text": JESSICA}).text
    codes_page = client.get("/codes").text
    targets = set(re.findall(r'href="/codes#([^"]+)"', result))
    assert len(targets) > 10
    for target in targets:
        assert f'id="{target}"' in codes_page, target


def test_result_sections_come_in_order(client: TestClient) -> None:
    story = "He is turning blue and not breathing after fentanyl."
    text = visible_text(client.post("/assess", data={"text": story}).text)
    order = ["Act now", "Overdose risk", "In the account", "Plan"]
    positions = [text.index(words) for words in order]
    assert positions == sorted(positions)


def test_negated_past_and_hypothetical_findings_are_labelled(client: TestClient) -> None:
    story = (
        "He never uses alone. His friend overdosed last year on fentanyl. He might try meth "
        "tonight. He used to inject but now smokes."
    )
    text = visible_text(client.post("/assess", data={"text": story}).text)
    assert "Using alone · not so" in text
    assert "Injecting · in the past" in text
    assert "Methamphetamine · maybe" in text
    assert "About someone else" in text and "Fentanyl · about someone else" in text


def test_htmx_gets_only_the_result(client: TestClient) -> None:
    r = client.post("/assess", data={"text": JESSICA}, headers={"HX-Request": "true"})
    assert r.status_code == 200
    assert "<html" not in r.text and 'id="result-title"' in r.text


def test_questions_alone_or_with_the_narrative(client: TestClient) -> None:
    r = client.post("/assess", data={"drug": ["1", "11"], "overdose_risk": "1"})
    assert r.status_code == 200 and "Loss of tolerance" in r.text and "Naloxone" in r.text
    r = client.post("/assess", data={"text": JESSICA, "place": "3", "drug_text": "also fentanyl"})
    assert r.status_code == 200 and "Encampment" in r.text and "Fentanyl" in r.text
    assert NARRATIVE_QUESTION in {q.id for q in load_knowledge().questions}


def test_api_assess_is_the_cli_json(client: TestClient) -> None:
    r = client.post("/api/v1/assess", json={"text": JESSICA})
    assert r.status_code == 200
    body = r.json()
    assert body == json.loads(assess(JESSICA).model_dump_json())
    codes = {f["code"] for f in body["findings"] if f["status"] == "present"}
    assert {"substance:heroin", "tolerance_loss"} <= codes
    assert "naloxone" in {p["strategy"] for p in body["plan"]}


def test_api_ask_assesses_answers(client: TestClient) -> None:
    answers = {"drug": {"choices": [1, 11]}, "overdose_risk": {"choices": [1, 3]}}
    r = client.post("/api/v1/ask", json={"answers": answers})
    assert r.status_code == 200
    body = r.json()
    assert {"substance:heroin", "tolerance_loss", "using_alone"} <= {
        f["code"] for f in body["findings"]
    }
    assert "naloxone" in {p["strategy"] for p in body["plan"]}


def test_api_questions_and_health(client: TestClient) -> None:
    questions = client.get("/api/v1/questions").json()
    assert [q["id"] for q in questions] == [q.id for q in load_knowledge().questions]
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["knowledge_version"] == load_knowledge().version


# --- handout and codes --------------------------------------------------------------------------


def test_handout_is_the_plan_in_the_persons_words(client: TestClient) -> None:
    r = client.post("/handout", data={"text": JESSICA})
    assert r.status_code == 200
    words = load_knowledge().wording
    text = visible_text(r.text)
    assert words.handout_title in text and words.handout_intro in text
    assert "Naloxone" in text and "Safer use" in text
    # The handout is for the person: it does not repeat the worker's notes.
    assert "Jessica" not in text
    assert "@media print" in client.get("/static/app.css").text


def test_handout_without_an_assessment_goes_back_to_the_start(client: TestClient) -> None:
    r = client.get("/handout", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_codes_page_and_api_list_every_code(client: TestClient) -> None:
    kb = load_knowledge()
    page = client.get("/codes").text
    words = visible_text(page)
    book = client.get("/api/v1/codes").json()
    listed = {c["code"] for s in book["sections"] for c in s["codes"]}
    for code in [*kb.all_codes(), *kb.codes]:
        assert f"<code>{code}</code>" in page, code
        assert code in listed, code
    for strategy in kb.strategies.values():
        assert strategy.source in words
    assert len(book["principles"]) == len(kb.principles)


def test_pages_use_person_first_words(client: TestClient) -> None:
    pages = [
        client.get("/").text,
        client.get("/codes").text,
        client.post("/assess", data={"text": JESSICA}).text,
        client.post("/handout", data={"text": JESSICA}).text,
        client.post("/assess", data={"text": ""}).text,
        client.get("/no-such-page").text,
        client.get("/combinations?names=fetty+%2B+bars&names=lean").text,
        client.get("/substances").text,
        *(client.get(f"/substances/{sid}").text for sid in load_knowledge().substances),
    ]
    for page in pages:
        assert language_check(visible_text(page)) == []


def test_docs_work_offline(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200
    assert "/static/swagger-ui-bundle.js" in r.text
    assert not re.search(r"(src|href)=\"https?://", r.text)
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "htmx.min.js", "app.js", "app.css"):
        assert client.get(f"/static/{name}").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/v1/assess", "/api/v1/ask", "/api/v1/codes"} <= set(schema["paths"])


def test_pages_load_nothing_from_elsewhere(client: TestClient) -> None:
    for page in (client.get("/").text, client.post("/assess", data={"text": JESSICA}).text):
        assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]
    assert client.post("/assess", data={"text": JESSICA}).headers["cache-control"] == "no-store"


# --- check a combination and fact sheets -------------------------------------------------------


def test_check_a_combination_page(client: TestClient) -> None:
    assert "Which substances?" in client.get("/combinations").text
    r = client.get("/combinations", params={"names": ["fetty + bars", "lean"]})
    assert r.status_code == 200
    text = visible_text(r.text)
    assert "dangerous at worst" in text and "What helps:" in text
    assert 'href="/substances/fentanyl"' in r.text


def test_combination_api_is_the_same_model(client: TestClient) -> None:
    from riskset import combinations

    r = client.post("/api/v1/combinations", json={"names": ["fetty", "bars"]})
    assert r.status_code == 200
    assert r.json() == json.loads(combinations.check(["fetty", "bars"]).model_dump_json())


def test_unknown_names_get_suggestions(client: TestClient) -> None:
    r = client.get("/combinations", params={"names": "fetanyl, bars"})
    assert r.status_code == 422 and "Did you mean" in r.text
    assert "/combinations?names=fentanyl%2C%20bars" in r.text
    r = client.post("/api/v1/combinations", json={"names": ["fetanyl", "bars"]})
    assert r.status_code == 422 and r.json()["suggestions"] == ["fentanyl"]
    r = client.get("/api/v1/substances/fetanyl")
    assert r.status_code == 404 and r.json()["suggestions"] == ["fentanyl"]
    r = client.get("/substances/fetanyl")
    assert r.status_code == 404 and 'href="/substances/fentanyl"' in r.text


@pytest.mark.parametrize(
    ("names", "words"),
    [
        (["heroin"], "at least two different substances"),
        (["heroin", "dope"], "at least two different substances"),
        ([], "at least two different substances"),
        (["heroin"] * 13, "at most 12"),
        (["x" * 101, "heroin"], "at most 12"),
    ],
)
def test_combination_api_refuses_bad_names(
    client: TestClient, names: list[str], words: str
) -> None:
    r = client.post("/api/v1/combinations", json={"names": names})
    assert r.status_code == 422 and words in r.json()["detail"]


def test_fact_sheets(client: TestClient) -> None:
    kb = load_knowledge()
    index = client.get("/substances").text
    for sid in kb.substances:
        assert f'href="/substances/{sid}"' in index
    r = client.get("/substances", params={"name": "xanex"})
    assert r.status_code == 200 and "<h1>Benzodiazepines</h1>" in r.text
    assert "An overdose can look like" in r.text and "Riskiest with" in r.text
    assert client.get("/api/v1/substances/bars").json()["id"] == "benzodiazepines"


# --- bad input: always a 4xx with a message, never a 500 ---------------------------------------

TOO_LONG = "heroin " * 3000


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b'{"text": ""}', "application/json", 422, "empty"),
        (b'{"text": "   "}', "application/json", 422, "empty"),
        (json.dumps({"text": TOO_LONG}).encode(), "application/json", 422, "too long"),
        (b'{"text": "caf\xe9"}', "application/json", 400, "not UTF-8"),
        (b"\xff\xfe\x00", "application/json", 400, "not UTF-8"),
        (b"{text: hi", "application/json", 400, "not valid JSON"),
        (b"", "application/json", 400, "empty"),
        (b'{"text": 42}', "application/json", 422, "text: Input should be a valid string"),
        (b'{"text": ["a"]}', "application/json", 422, "valid string"),
        (b'["text"]', "application/json", 422, "valid dictionary"),
        (b"{}", "application/json", 422, "text: Field required"),
        (b'{"text": "hi", "extra": 1}', "application/json", 422, "extra"),
        (b'{"text": "a\\u0000b"}', "application/json", 422, "NUL"),
        (b'{"text": "\\ud800 heroin"}', "application/json", 422, "not valid Unicode"),
        (b'{"text": "heroin"}', "text/plain", 415, "Content-Type: application/json"),
        (b'{"text": "heroin"}', "", 415, "Content-Type: application/json"),
    ],
)
def test_api_assess_refuses_bad_input(
    client: TestClient, body: bytes, content_type: str, status: int, words: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/api/v1/assess", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert words in r.json()["detail"]


@pytest.mark.parametrize(
    ("answers", "words"),
    [
        ({}, "answer at least one question"),
        ({"nope": {"choices": [1]}}, "unknown question"),
        ({"drug": {"choices": [99]}}, "has no choice 99"),
        ({"drug": {"choices": ["x"]}}, "valid integer"),
        ({"drug": {"text": "x" * 20_001}}, "too long"),
        ({"drug": "heroin"}, "valid dictionary"),
    ],
)
def test_api_ask_refuses_bad_answers(client: TestClient, answers: object, words: str) -> None:
    r = client.post("/api/v1/ask", json={"answers": answers})
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]


def test_the_limit_is_configurable() -> None:
    with TestClient(create_app(max_text=100)) as small:
        r = small.post("/api/v1/assess", json={"text": "x" * 101})
        assert r.status_code == 422 and "the limit is 100" in r.json()["detail"]
        r = small.post("/api/v1/assess", json={"text": "x" * 100_000})
        assert r.status_code == 413 and "too large" in r.json()["detail"]


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        ({"text": ""}, 422, "The text is empty"),
        ({"text": TOO_LONG}, 422, "The text is too long"),
        ({"text": "heroin", "drug": "99"}, 422, "has no choice 99"),
        ({"text": "heroin", "drug": "one"}, 422, "has no choice"),
    ],
)
def test_assess_form_refuses_bad_input_with_a_friendly_page(
    client: TestClient, data: dict[str, str], status: int, words: str
) -> None:
    r = client.post("/assess", data=data)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/html")
    assert "Please check the form" in r.text and words in r.text
    assert 'aria-invalid="true"' in r.text
    # Whatever was typed comes back, so nothing is lost.
    assert f">{data['text']}</textarea>" in r.text


def test_form_that_is_not_utf8_gets_a_friendly_page(client: TestClient) -> None:
    for content_type, body in [
        ("application/x-www-form-urlencoded", b"text=caf%E9"),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\ncaf\xe9\r\n--b--\r\n',
        ),
    ]:
        r = client.post("/assess", content=body, headers={"content-type": content_type})
        assert r.status_code == 400
        assert "not UTF-8" in r.text and "<html" in r.text


def test_broken_multipart_gets_a_friendly_page(client: TestClient) -> None:
    r = client.post("/assess", content=b"--x\r\n", headers={"content-type": "multipart/form-data"})
    assert 400 <= r.status_code < 500 and "<html" in r.text


def test_handout_refuses_empty_input(client: TestClient) -> None:
    r = client.post("/handout", data={"text": ""})
    assert r.status_code == 422 and "The text is empty" in r.text


def test_errors_are_html_for_people_and_json_for_the_api(client: TestClient) -> None:
    r = client.get("/no-such-page")
    assert r.status_code == 404 and "Page not found" in r.text
    r = client.get("/api/v1/no-such-thing")
    assert r.status_code == 404 and r.json()["detail"] == "there is nothing at this address"
    r = client.delete("/api/v1/assess")
    assert r.status_code == 405 and "does not accept" in r.json()["detail"]
    r = client.post("/assess", data={"text": ""}, headers={"HX-Request": "true"})
    assert r.status_code == 422 and "<html" not in r.text and "The text is empty" in r.text


def test_a_crash_is_a_plain_500_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("riskset.web.assess", broken)
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        api = c.post("/api/v1/assess", json={"text": JESSICA})
        page = c.post("/assess", data={"text": JESSICA})
    assert api.status_code == 500 and "unexpected problem" in api.json()["detail"]
    assert page.status_code == 500 and "unexpected problem" in page.text
    assert "secret internals" not in api.text + page.text and "Traceback" not in page.text


# --- schemathesis: whatever the schema allows, no server error ----------------------------------

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_has_no_server_errors(case: schemathesis.Case) -> None:
    case.call_and_validate(
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
        ]
    )
