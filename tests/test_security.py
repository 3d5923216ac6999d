"""Security under hostile input, for the whole app as ``create_app()`` builds it (issue 9).

The route walks read every route of ``create_app()``, however FastAPI keeps included routers,
so a route added anywhere is checked: a new state-changing route must check the CSRF token or
be listed in CSRF_EXEMPT with its reason, and a new route under /records must refuse anonymous
requests. Records run on a temporary SQLite file (the backend does not change what the web
layer refuses; test_records_web.py covers PostgreSQL).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import fastapi.routing
import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient

from riskset import records as records_module
from riskset import records_web
from riskset.records import Records
from riskset.training import case_summaries
from riskset.web import create_app
from tests.conftest import JESSICA
from tests.test_records import PASSWORD
from tests.test_records_web import _CSRF, Browser, _as, records

__all__ = ["records"]  # the fixture, shared with test_records_web.py

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes that change state without a CSRF token, and why that is safe. A cross-site page can
# only send a form (urlencoded, multipart or text/plain) or JSON after a CORS preflight that
# riskset never grants; BodyGuard answers 415 to anything but JSON under /api/.
JSON_ONLY = "JSON only, so a cross-site form cannot send it; it changes nothing stored"
CSRF_EXEMPT: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/assess"): JSON_ONLY,
    ("POST", "/api/v1/ask"): JSON_ONLY,
    ("POST", "/api/v1/combinations"): JSON_ONLY,
    ("POST", "/api/v1/training/cases/{case_id}/feedback"): (
        "JSON only, and anonymous: there is no session to ride, anyone may send it directly"
    ),
    ("POST", "/assess"): "public and stores nothing: the answer goes back to whoever sent it",
    ("POST", "/handout"): "public and stores nothing: the answer goes back to whoever sent it",
    ("POST", "/training/{case_id}"): (
        "anonymous: no session to ride, anyone may post the same form directly, and only a "
        "group's counts are kept"
    ),
}
# Under /records, only signing in itself works without an account.
ANONYMOUS_RECORDS = {("GET", "/records/login"), ("POST", "/records/login")}
# Swagger UI's page boots with one inline script; it shows nothing a person typed.
INLINE_SCRIPT_ALLOWED = {"/docs"}
# Values that keep a records URL (site names, dates) from leaking to another site.
SAFE_REFERRER = {"no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"}
HOSTILE = (
    'She shot <script>alert("x")</script> fentanyl alone "><img src=x onerror=alert(1)> '
    "</textarea><b>heroin</b>"
)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'records.sqlite3'}"


@pytest.fixture(autouse=True)
def _cheap_password_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every sign-in verifies a hash: at argon2's default cost (about half a second here) this
    # file would take minutes. The cost is not what these tests are about.
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(records_module, "_hasher", cheap)


@pytest.fixture
def app(records: Records) -> FastAPI:
    app = create_app()
    app.dependency_overrides[records_web.get_records] = lambda: records
    return app


def _client(app: FastAPI, **cookies: str) -> TestClient:
    return TestClient(app, follow_redirects=False, raise_server_exceptions=False, cookies=cookies)


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, included routers and mounts too."""
    # Newer FastAPI keeps an included router as one branch of app.routes; its contexts list
    # the routes inside with their full paths. Older FastAPI copies the routes up instead.
    walk: Callable[[list[object]], Iterator[object]] | None = getattr(
        fastapi.routing, "iter_route_contexts", None
    )
    routes = list(walk(list(app.routes))) if walk else list(app.routes)
    found = set()
    for route in routes:
        path = str(getattr(route, "path", ""))
        for method in getattr(route, "methods", None) or {"GET"}:  # a mount answers GET
            found.add((str(method), path))
    return sorted(found)


def _url(path: str) -> str:
    case = case_summaries()[0].id
    return path.replace("{username}", "worker.north").replace("{case_id}", case)


def _directives(csp: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in csp.split(";"):
        if words := part.split():
            out[words[0].lower()] = words[1:]
    return out


def _assert_secure(response: httpx.Response, where: str) -> None:
    headers = response.headers
    csp = _directives(headers.get("content-security-policy", ""))
    assert csp, f"{where}: no Content-Security-Policy"
    scripts = csp.get("script-src", csp.get("default-src"))
    assert scripts is not None, f"{where}: the CSP does not limit scripts"
    assert "*" not in scripts and "'unsafe-eval'" not in scripts, f"{where}: {scripts}"
    if urlsplit(str(response.request.url)).path not in INLINE_SCRIPT_ALLOWED:
        assert "'unsafe-inline'" not in scripts, f"{where}: inline scripts allowed"
    framing = csp.get("frame-ancestors")
    denied = headers.get("x-frame-options", "").upper() in {"DENY", "SAMEORIGIN"}
    assert denied or framing in (["'none'"], ["'self'"]), f"{where}: may be framed"
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("referrer-policy") in SAFE_REFERRER, where


# --------------------------------------------------------------------------------------
# (a) Security headers on every kind of response
# --------------------------------------------------------------------------------------


def test_every_kind_of_response_carries_the_security_headers(app: FastAPI) -> None:
    anonymous = _client(app)
    worker = _as(app, "worker.north").client
    supervisor = _as(app, "sup.north").client
    too_big = "x" * (app.state.settings.max_body + 1)
    cases: list[tuple[str, TestClient, str, str, dict[str, object], int]] = [
        ("home page", anonymous, "GET", "/", {}, 200),
        ("codes page", anonymous, "GET", "/codes", {}, 200),
        ("result page", anonymous, "POST", "/assess", {"data": {"text": JESSICA}}, 200),
        ("training page", anonymous, "GET", "/training", {}, 200),
        ("API docs", anonymous, "GET", "/docs", {}, 200),
        ("JSON read", anonymous, "GET", "/api/v1/questions", {}, 200),
        ("JSON answer", anonymous, "POST", "/api/v1/combinations",
         {"json": {"names": ["heroin", "alcohol"]}}, 200),
        ("OpenAPI", anonymous, "GET", "/openapi.json", {}, 200),
        ("stylesheet", anonymous, "GET", "/static/app.css", {}, 200),
        ("script file", anonymous, "GET", "/static/htmx.min.js", {}, 200),
        ("redirect", anonymous, "GET", "/assess", {}, 303),
        ("404 page", anonymous, "GET", "/no-such-page", {}, 404),
        ("404 JSON", anonymous, "GET", "/api/v1/no-such-thing", {}, 404),
        ("405", anonymous, "DELETE", "/", {}, 405),
        ("400 bad JSON", anonymous, "POST", "/api/v1/assess",
         {"content": "{", "headers": {"content-type": "application/json"}}, 400),
        ("413", anonymous, "POST", "/api/v1/assess", {"json": {"text": too_big}}, 413),
        ("415", anonymous, "POST", "/api/v1/assess", {"data": {"text": "x"}}, 415),
        ("422", anonymous, "POST", "/api/v1/assess", {"json": {"text": ""}}, 422),
        ("sign-in page", anonymous, "GET", "/records/login", {}, 200),
        ("records sign-in redirect", anonymous, "GET", "/records/new", {}, 303),
        ("records 401", anonymous, "GET", "/records/api/me", {}, 401),
        ("records page", worker, "GET", "/records/new", {}, 200),
        ("records JSON", worker, "GET", "/records/api/me", {}, 200),
        ("records 403", worker, "GET", "/records/admin/users", {}, 403),
        ("records CSV", supervisor, "GET", "/records/report.csv", {}, 200),
    ]  # fmt: skip
    for name, client, method, path, options, status in cases:
        response = client.request(method, path, **options)  # type: ignore[arg-type]
        assert response.status_code == status, f"{name}: {response.status_code}"
        _assert_secure(response, name)


def test_narratives_and_records_are_never_kept_in_a_cache(app: FastAPI) -> None:
    # Outreach phones and drop-in computers are shared: the next person must not find them.
    anonymous = _client(app)
    worker = _as(app, "worker.north").client
    for response in (
        anonymous.post("/assess", data={"text": JESSICA}),
        anonymous.post("/handout", data={"text": JESSICA}),
        anonymous.post("/api/v1/assess", json={"text": JESSICA}),
        worker.get("/records/mine"),
        worker.get("/records/api/encounters/mine"),
    ):
        assert response.status_code == 200, response.request.url
        assert "no-store" in response.headers.get("cache-control", ""), response.request.url


def test_an_unexpected_error_still_carries_the_security_headers(app: FastAPI) -> None:
    @app.get("/crash-for-test")
    def crash() -> None:
        raise RuntimeError("a bug somewhere in a handler")

    response = _client(app).get("/crash-for-test")
    assert response.status_code == 500 and "unexpected problem" in response.text
    _assert_secure(response, "500 page")


# --------------------------------------------------------------------------------------
# (b) Sessions: fixation, sign-out, password change
# --------------------------------------------------------------------------------------


def test_signing_in_replaces_the_session_that_came_before_it(app: FastAPI) -> None:
    # Fixation: someone who planted their own pre-sign-in cookie in a shared browser must not
    # share the account that is then signed in with it, nor know its CSRF token.
    victim = Browser(app)
    form = victim.client.get("/records/login")
    planted = victim.client.cookies["riskset_records"]
    before = records_web.decode_session(planted)
    assert before is not None and before.user_id is None
    token = _CSRF.findall(form.text)[0]
    signed_in = victim.client.post(
        "/records/login",
        data={"username": "admin", "password": PASSWORD, "csrf_token": token},
    )
    assert signed_in.status_code == 303
    fresh = victim.client.cookies["riskset_records"]
    after = records_web.decode_session(fresh)
    assert fresh != planted and after is not None and after.user_id is not None
    assert after.csrf != before.csrf
    assert victim.client.get("/records/api/me").status_code == 200
    attacker = _client(app, riskset_records=planted)
    assert attacker.get("/records/api/me").status_code == 401
    assert attacker.get("/records/admin/users").headers["location"].startswith("/records/login")
    forged = victim.client.post("/records/admin/sites", data={"name": "X", "csrf_token": token})
    assert forged.status_code == 403


def test_a_copied_cookie_stops_working_once_its_owner_signs_out(app: FastAPI) -> None:
    owner = _as(app, "worker.north")
    copied = _client(app, riskset_records=owner.client.cookies["riskset_records"])
    assert copied.get("/records/api/me").status_code == 200
    signed_out = owner.post("/records/logout")
    assert signed_out.status_code == 303
    assert "riskset_records=" in signed_out.headers["set-cookie"]  # the browser forgets it
    # ... and the server does too: the copy someone kept is refused.
    assert copied.get("/records/api/me").status_code == 401
    assert copied.get("/records/mine").headers["location"].startswith("/records/login")


def test_a_new_password_or_a_disabled_account_ends_its_sessions(app: FastAPI) -> None:
    admin = _as(app, "admin")
    changes: list[tuple[str, str, dict[str, object]]] = [
        ("worker.north", "password", {"password": "a whole new passphrase"}),
        ("worker.south", "active", {"active": "0"}),
    ]
    for who, change, form in changes:
        worker = _as(app, who)
        assert worker.client.get("/records/api/me").status_code == 200
        assert admin.post(f"/records/admin/users/{who}/{change}", form).status_code == 303
        assert worker.client.get("/records/api/me").status_code == 401, change


# --------------------------------------------------------------------------------------
# (c) CSRF on every state-changing route of the app
# --------------------------------------------------------------------------------------


def test_every_state_changing_route_checks_the_csrf_token_or_says_why_not(app: FastAPI) -> None:
    changing = {(m, p) for m, p in _routes(app) if m in STATE_CHANGING}
    assert set(CSRF_EXEMPT) <= changing, "CSRF_EXEMPT names a route that no longer exists"
    # Signing out last: it ends the session the other requests are made in.
    checked = sorted(changing - set(CSRF_EXEMPT), key=lambda r: (r[1] == "/records/logout", r))
    assert checked, "no route checks a CSRF token"
    admin, other = _as(app, "admin"), _as(app, "admin")  # the top role: only the token refuses
    for method, path in checked:
        url = _url(path)
        # Under /api/ a form is already refused as not JSON (415): refused all the same.
        form_refusals = {403, 415} if "/api/" in path else {403}
        for token in (None, "", other.csrf):
            headers = {} if token is None else {"X-CSRF-Token": token}
            sent = admin.client.request(method, url, json={}, headers=headers)
            assert sent.status_code == 403, f"{method} {path}, header token {token!r}"
            sent = admin.client.request(method, url, data={"csrf_token": token or ""})
            assert sent.status_code in form_refusals, f"{method} {path}, form token {token!r}"
        # The same request with the session's own token gets past the check.
        sent = admin.client.request(method, url, json={}, headers={"X-CSRF-Token": admin.csrf})
        assert sent.status_code != 403, f"{method} {path} refuses its own token"
    anonymous = _client(app)
    for (method, path), why in CSRF_EXEMPT.items():
        if why.startswith("JSON only"):
            sent = anonymous.request(method, _url(path), data={"text": "x"})
            assert sent.status_code == 415, f"{method} {path} takes a form: {why}"


# --------------------------------------------------------------------------------------
# (d) Every route under /records, wherever it was added, refuses anonymous requests
# --------------------------------------------------------------------------------------


def test_every_records_route_of_the_app_refuses_anonymous_requests(app: FastAPI) -> None:
    routes = [(m, p) for m, p in _routes(app) if p.startswith("/records")]
    assert set(routes) >= ANONYMOUS_RECORDS, "the sign-in routes moved: update this test"
    anonymous = _client(app)
    checked = 0
    for method, path in routes:
        if (method, path) in ANONYMOUS_RECORDS:
            continue
        # JSON, so that BodyGuard's 415 for a form under /api/ does not hide what follows.
        body: dict[str, object] | None = {} if method in STATE_CHANGING else None
        response = anonymous.request(method, _url(path), json=body)
        where = f"{method} {path}"
        if path.startswith("/records/api/"):
            assert response.status_code == 401, where
            assert response.json() == {"detail": "Sign in to use the records."}, where
        else:
            assert response.status_code == 303, where
            assert response.headers["location"].startswith("/records/login?next="), where
        checked += 1
    assert checked >= 20, "fewer records routes than expected: is the router still mounted?"
    assert anonymous.get("/records/login").status_code == 200


# --------------------------------------------------------------------------------------
# (e) Hostile input to the web
# --------------------------------------------------------------------------------------


def test_static_files_cannot_reach_outside_their_folder(app: FastAPI) -> None:
    client = _client(app)
    assert client.get("/static/app.css").status_code == 200
    for path in (
        "/static/../web.py",
        "/static/..%2Fweb.py",
        "/static/%2e%2e/web.py",
        "/static/%2e%2e%2fweb.py",
        "/static/..%5cweb.py",
        "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/app.css%00.js",
        "/static/%ff",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "create_app" not in response.text and "root:" not in response.text, path


def test_substance_names_cannot_traverse_or_inject(app: FastAPI) -> None:
    client = _client(app)
    for path in (
        "/substances/..%2F..%2Fetc%2Fpasswd",
        "/substances/%2e%2e",
        "/substances/%00",
        "/substances/%ff%fe",
        "/api/v1/substances/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/substances/%ed%a0%80",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "root:" not in response.text, path
    for response in (
        client.get("/substances/<img src=x onerror=alert(1)>"),
        client.get("/substances", params={"name": "<img src=x onerror=alert(1)>"}),
        client.get("/combinations", params={"names": ["<img src=x onerror=alert(1)>", "heroin"]}),
    ):
        assert response.status_code in (404, 422), response.request.url
        assert "<img src=x" not in response.text, response.request.url
        assert "&lt;img src=x" in response.text, response.request.url


def _same_site(location: str) -> bool:
    # Browsers drop tabs and line breaks from a URL before they follow it.
    seen = re.sub(r"[\t\r\n]", "", location)
    parts = urlsplit(seen)
    return not parts.scheme and not parts.netloc and seen.startswith("/records/")


def test_sign_in_never_sends_anyone_to_another_site(app: FastAPI) -> None:
    targets = [
        "https://evil.example/",
        "//evil.example/records/",
        "/\\evil.example",
        "\\\\evil.example",
        "/records/\\\\evil.example",
        " //evil.example",
        "https:evil.example",
        "javascript:alert(1)",
        "/records/\r\nSet-Cookie: planted=1",
        "/records/%0d%0aSet-Cookie:%20planted=1",
        "\t//evil.example",
    ]
    for target in targets:
        browser = Browser(app)
        page = browser.client.get("/records/login", params={"next": target})
        token = _CSRF.findall(page.text)[0]
        response = browser.client.post(
            "/records/login",
            data={"username": "worker.north", "password": PASSWORD, "csrf_token": token,
                  "next": target},
        )  # fmt: skip
        assert response.status_code == 303, repr(target)
        assert _same_site(response.headers["location"]), repr(target)
        assert "planted" not in str(response.headers.get_list("set-cookie")), repr(target)
        # Signed in, the sign-in page sends straight on: the same rule holds.
        again = browser.client.get("/records/login", params={"next": target})
        assert again.status_code == 303 and _same_site(again.headers["location"]), repr(target)
    kept = _as(app, "worker.north").client.get("/records/login", params={"next": "/records/mine"})
    assert kept.headers["location"] == "/records/mine"  # a real target still works


def test_the_sign_in_form_escapes_the_address_it_returns_to(app: FastAPI) -> None:
    page = _client(app).get("/records/login", params={"next": '"><script>alert(1)</script>'})
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text
    assert "&lt;script&gt;alert(1)" in page.text


def test_markup_in_a_narrative_is_shown_as_words_never_run(app: FastAPI) -> None:
    client = _client(app)
    worker = _as(app, "worker.north")
    pages = {
        "result page": client.post("/assess", data={"text": HOSTILE}),
        "htmx result": client.post(
            "/assess", data={"text": HOSTILE}, headers={"HX-Request": "true"}
        ),
        "answers": client.post("/assess", data={"text": HOSTILE, "drug_text": HOSTILE}),
        "handout": client.post("/handout", data={"text": HOSTILE}),
        # A form with a mistake comes back filled in, narrative and all.
        "records form": worker.post(
            "/records/new", {"site": "North", "narrative": HOSTILE, "supply_naloxone": "two"}
        ),
    }
    for name, response in pages.items():
        assert response.status_code in (200, 400), name
        for raw in ("<script>alert", "<img src=x", "</textarea><b>"):
            assert raw not in response.text, f"{name}: {raw}"
        assert "&lt;script&gt;alert(" in response.text, f"{name}: the narrative is not shown"


def test_very_long_addresses_and_headers_get_a_4xx_from_the_app(app: FastAPI) -> None:
    client = _client(app)
    long = "a" * 60_000  # httpx sends at most 64 kB of address; the server test goes beyond
    cases = [
        (client.get("/" + long), 404),
        (client.get("/substances/" + long), 422),
        (client.get("/api/v1/substances/" + long), 422),
        (client.get("/combinations", params={"names": [long, "b"]}), 422),
        (client.get("/records/new?next=" + long), 303),
        (client.get("/records/api/me", headers={"cookie": "riskset_records=" + "a." * 9_000}), 401),
        (client.get("/records/api/me", headers={"x-csrf-token": "x" * 100_000}), 401),
    ]
    for response, status in cases:
        assert response.status_code == status, str(response.request.url)[:80]


@pytest.fixture
def server(app: FastAPI) -> Iterator[int]:
    """The app behind a real uvicorn on a loopback port, where HTTP itself is parsed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="critical")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.started, "uvicorn did not start"
    yield port
    running.should_exit = True
    thread.join(10)
    sock.close()


def _status_of(port: int, request: bytes) -> int:
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        # The server may answer and close before it has read all of an oversized request.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split(b" ", 2)[1])


def test_oversized_or_malformed_requests_get_a_4xx_from_the_server(server: int) -> None:
    close = b"Connection: close\r\n\r\n"
    # uvicorn refuses (400) a request head that is still incomplete past 16 kB: whether one of
    # 20 to 100 kB arrives at once depends on the moment, so either refusal is right for those.
    cases = {
        "1 MB header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 1_000_000 + b"\r\n"
                        + close, {400}),
        "1 MB address": (b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n" + close,
                         {400}),
        "100 kB address": (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n" + close,
                           {400, 404}),
        "100 kB cookie": (b"GET /records/api/me HTTP/1.1\r\nHost: x\r\nCookie: riskset_records="
                          + b"\xff" * 100_000 + b"\r\n" + close, {400, 401}),
        "2000 headers": (b"GET /records/api/me HTTP/1.1\r\nHost: x\r\n"
                         + b"".join(b"X-%d: y\r\n" % i for i in range(2000)) + close, {400, 401}),
        "bare CR in a header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n" + close, {400}),
        "no Host": (b"GET / HTTP/1.1\r\n" + close, {400}),
    }  # fmt: skip
    for name, (request, statuses) in cases.items():
        assert _status_of(server, request) in statuses, name
