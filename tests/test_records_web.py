"""The records web routes, on SQLite and PostgreSQL (see test_records.py for the backends).

The route walks read ``records_web.router.routes`` so a route added later is checked too, and
every route must appear in ROLE_OF, so nobody can add one without saying who may use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from riskset import records_web
from riskset.login_limit import LoginLimiter
from riskset.records import Records, RecordsUnavailable
from tests.test_records import PASSWORD, _staff, db_url

__all__ = ["db_url"]  # the backend fixture, shared with test_records.py

# Who may use each route; None: anyone (the sign-in form).
ROLE_OF: dict[tuple[str, str], str | None] = {
    ("GET", "/records/login"): None,
    ("POST", "/records/login"): None,
    ("POST", "/records/logout"): "worker",
    ("GET", "/records/"): "worker",
    ("GET", "/records/new"): "worker",
    ("POST", "/records/new"): "worker",
    ("GET", "/records/mine"): "worker",
    ("GET", "/records/report"): "supervisor",
    ("GET", "/records/report.csv"): "supervisor",
    ("GET", "/records/admin/users"): "admin",
    ("POST", "/records/admin/users"): "admin",
    ("POST", "/records/admin/users/{username}/active"): "admin",
    ("POST", "/records/admin/users/{username}/password"): "admin",
    ("POST", "/records/admin/users/{username}/sites"): "admin",
    ("POST", "/records/admin/sites"): "admin",
    ("GET", "/records/admin/settings"): "admin",
    ("POST", "/records/admin/settings"): "admin",
    ("GET", "/records/admin/audit"): "admin",
    ("GET", "/records/api/me"): "worker",
    ("POST", "/records/api/encounters"): "worker",
    ("GET", "/records/api/encounters/mine"): "worker",
    ("GET", "/records/api/report"): "supervisor",
    ("GET", "/records/api/users"): "admin",
    ("POST", "/records/api/users"): "admin",
    ("GET", "/records/api/settings"): "admin",
    ("POST", "/records/api/settings"): "admin",
    ("GET", "/records/api/audit"): "admin",
}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _routes() -> list[tuple[str, str]]:
    return sorted(
        (method, route.path)
        for route in records_web.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    )


def _url(path: str) -> str:
    return path.replace("{username}", "worker.north")


@pytest.fixture
def records(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Records]:
    monkeypatch.setenv("RISKSET_SECRET_KEY", "test-only secret key")
    with Records(db_url) as opened:
        _staff(opened)
        yield opened


@pytest.fixture
def app(records: Records) -> FastAPI:
    app = FastAPI()
    app.include_router(records_web.router)
    app.dependency_overrides[records_web.get_records] = lambda: records
    # A throttle per test: sign-ins of one test must not count against the next.
    limiter = LoginLimiter()
    app.dependency_overrides[records_web.get_login_limiter] = lambda: limiter
    return app


class Browser:
    """A TestClient that signs in through the form and remembers the CSRF token."""

    def __init__(self, app: FastAPI, base_url: str = "http://testserver") -> None:
        self.client = TestClient(app, base_url=base_url, follow_redirects=False)
        self.csrf = ""

    def sign_in(self, username: str, password: str = PASSWORD) -> Browser:
        self.csrf = _CSRF.findall(self.client.get("/records/login").text)[0]
        response = self.client.post(
            "/records/login",
            data={"username": username, "password": password, "csrf_token": self.csrf},
        )
        assert response.status_code == 303, response.text
        self.csrf = self.client.get("/records/api/me").json()["csrf_token"]
        return self

    def post(self, path: str, data: dict[str, object] | None = None) -> httpx.Response:
        return self.client.post(path, data={"csrf_token": self.csrf, **(data or {})})


def _as(app: FastAPI, username: str) -> Browser:
    return Browser(app).sign_in(username)


# --------------------------------------------------------------------------------------
# Every route, walked
# --------------------------------------------------------------------------------------


def test_every_route_says_who_may_use_it() -> None:
    assert set(_routes()) == set(ROLE_OF), "add the new route to ROLE_OF with its role"


def test_every_records_page_and_endpoint_refuses_an_anonymous_request(app: FastAPI) -> None:
    anonymous = TestClient(app, follow_redirects=False)
    for method, path in _routes():
        if ROLE_OF[(method, path)] is None:
            continue
        response = anonymous.request(method, _url(path))
        where = f"{method} {path}"
        if path.startswith("/records/api/"):
            assert response.status_code == 401, where
            assert response.json() == {"detail": "Sign in to use the records."}, where
        else:
            assert response.status_code == 303, where
            assert response.headers["location"].startswith("/records/login?next="), where


def test_a_forged_or_expired_cookie_is_anonymous(app: FastAPI, records: Records) -> None:
    browser = _as(app, "admin")
    cookie = browser.client.cookies["riskset_records"]
    body, signature = cookie.split(".")
    forged = records_web._b64(records_web._unb64(body).replace(b'"epoch"', b'"epoch" '))
    for value in (f"{forged}.{signature}", "garbage", f"{body}.{signature[:-2]}xx"):
        client = TestClient(app, follow_redirects=False, cookies={"riskset_records": value})
        assert client.get("/records/api/me").status_code == 401
    old = records_web.WebSession(csrf="x", user_id=1, epoch=0, issued=0)
    client = TestClient(app, cookies={"riskset_records": records_web.encode_session(old)})
    assert client.get("/records/api/me").status_code == 401


def test_a_wrong_role_gets_403_on_every_route_above_it(app: FastAPI) -> None:
    browsers = {"worker": _as(app, "worker.north"), "supervisor": _as(app, "sup.north")}
    rank = {"worker": 0, "supervisor": 1, "admin": 2}
    for (method, path), role in ROLE_OF.items():
        for who, browser in browsers.items():
            if role is None or rank[role] <= rank[who]:
                continue
            response = (
                browser.post(_url(path)) if method == "POST" else browser.client.get(_url(path))
            )
            assert response.status_code == 403, f"{who}: {method} {path}"


def test_every_post_needs_the_sessions_csrf_token(app: FastAPI) -> None:
    admin = _as(app, "admin")
    other = _as(app, "admin")  # another session: its token is not this one's
    for method, path in _routes():
        if method != "POST":
            continue
        for token in ("", other.csrf):
            response = admin.client.post(_url(path), data={"csrf_token": token})
            assert response.status_code == 403, f"{path} with token {token!r}"
            response = admin.client.post(_url(path), headers={"X-CSRF-Token": token or "x"})
            assert response.status_code == 403, f"{path} with header {token!r}"


# --------------------------------------------------------------------------------------
# Sites and roles
# --------------------------------------------------------------------------------------


def test_a_worker_never_sees_another_sites_records(app: FastAPI, records: Records) -> None:
    south = _as(app, "worker.south")
    north = _as(app, "worker.north")
    saved = south.client.post(
        "/records/api/encounters",
        json={"site": "South", "supplies": {"naloxone": 7}, "referrals": ["housing"]},
        headers={"X-CSRF-Token": south.csrf},
    )
    assert saved.status_code == 201, saved.text
    assert north.client.get("/records/api/encounters/mine").json() == []
    assert "South" not in north.client.get("/records/mine").text
    refused = north.post("/records/new", {"site": "South", "supply_naloxone": "1"})
    assert refused.status_code == 403
    for path in (
        "/records/report?site=South",
        "/records/report.csv?site=South",
        "/records/api/report?site=South",
    ):
        assert north.client.get(path).status_code == 403, path
    supervisor = _as(app, "sup.north")
    for path in (
        "/records/report?site=South",
        "/records/report.csv?site=South",
        "/records/api/report?site=South",
    ):
        assert supervisor.client.get(path).status_code == 403, path
    report = supervisor.client.get("/records/api/report").json()
    assert report["sites"] == ["North"] and report["total"] == 0
    assert _as(app, "admin").client.get("/records/api/report").json()["total"] == 1
    assert [row["site"] for row in south.client.get("/records/api/encounters/mine").json()] == [
        "South"
    ]


def test_recording_through_the_form_keeps_no_words(app: FastAPI, records: Records) -> None:
    worker = _as(app, "worker.north")
    form = worker.client.get("/records/new")
    assert form.status_code == 200 and "not kept" in form.text
    response = worker.post(
        "/records/new",
        {
            "site": "North",
            "day": date.today().isoformat(),
            "narrative": "Jessica shot fentanyl alone last night, call her at 555-201-7788",
            "supply_naloxone": "2",
            "referral": ["moud", "housing"],
            "follow_up": "on",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/records/mine?done=saved"
    [row] = worker.client.get("/records/api/encounters/mine").json()
    assert "substance:fentanyl" in row["codes"] and row["risk_level"]
    assert row["supplies"] == {"naloxone": 2} and row["follow_up"] is True
    assert row["narrative"] is None
    page = worker.client.get("/records/mine?done=saved").text
    assert "Encounter saved." in page and "Fentanyl" in page and "Jessica" not in page
    bad = worker.post("/records/new", {"site": "North", "supply_naloxone": "two"})
    assert bad.status_code == 400 and "whole number" in bad.text


def test_report_page_has_charts_and_viewing_and_export_are_audited(
    app: FastAPI, records: Records
) -> None:
    worker = _as(app, "worker.north")
    worker.client.post(
        "/records/api/encounters",
        json={"site": "North", "supplies": {"naloxone": 3}, "follow_up": True},
        headers={"X-CSRF-Token": worker.csrf},
    )
    supervisor = _as(app, "sup.north")
    page = supervisor.client.get("/records/report")
    assert page.status_code == 200
    assert page.text.count("<svg") >= 2 and "Naloxone kits" in page.text
    csv = supervisor.client.get("/records/report.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv.headers["content-disposition"]
    assert csv.text.splitlines()[1].split(",")[2] == "North"
    actions = [(e.actor, e.action) for e in records.audit_log()]
    assert ("sup.north", "view_report") in actions and ("sup.north", "export_csv") in actions
    bad = supervisor.client.get("/records/report?from=yesterday")
    assert bad.status_code == 400 and "YYYY-MM-DD" in bad.text


# --------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------


def test_session_cookie_is_signed_httponly_lax_and_secure_over_https(app: FastAPI) -> None:
    for base, secure in (("http://testserver", False), ("https://testserver", True)):
        browser = Browser(app, base_url=base)
        token = _CSRF.findall(browser.client.get("/records/login").text)[0]
        response = browser.client.post(
            "/records/login",
            data={
                "username": "worker.north",
                "password": PASSWORD,
                "csrf_token": token,
            },
        )
        attributes = [a.strip() for a in response.headers["set-cookie"].lower().split(";")]
        assert "httponly" in attributes and "samesite=lax" in attributes
        assert ("secure" in attributes) is secure


def test_wrong_password_and_open_redirects_are_refused(app: FastAPI) -> None:
    browser = Browser(app)
    token = _CSRF.findall(browser.client.get("/records/login").text)[0]
    wrong = browser.client.post(
        "/records/login",
        data={
            "username": "worker.north",
            "password": "not it",
            "csrf_token": token,
        },
    )
    assert wrong.status_code == 400 and "Wrong username or password" in wrong.text
    for target in ("https://evil.example/", "//evil.example/records/", "/elsewhere"):
        fresh = Browser(app)  # signing in rotates the CSRF token, so each try starts anew
        token = _CSRF.findall(fresh.client.get("/records/login").text)[0]
        response = fresh.client.post(
            "/records/login",
            data={
                "username": "worker.north",
                "password": PASSWORD,
                "csrf_token": token,
                "next": target,
            },
        )
        assert response.headers["location"] == "/records/", target
    assert (
        browser.client.post(
            "/records/login",
            data={
                "username": "worker.north",
                "password": PASSWORD,
                "csrf_token": token,
            },
        ).status_code
        == 403
    )  # a token from another browser's session


def test_signing_out_ends_the_session_everywhere(app: FastAPI) -> None:
    laptop, phone = _as(app, "worker.north"), _as(app, "worker.north")
    assert laptop.post("/records/logout").status_code == 303
    assert laptop.client.get("/records/api/me").status_code == 401
    assert phone.client.get("/records/api/me").status_code == 401


# --------------------------------------------------------------------------------------
# Admin
# --------------------------------------------------------------------------------------


def test_admin_adds_accounts_and_sites_and_changes_settings(app: FastAPI, records: Records) -> None:
    admin = _as(app, "admin")
    assert admin.post("/records/admin/sites", {"name": "East"}).status_code == 303
    added = admin.post(
        "/records/admin/users",
        {
            "username": "new.worker",
            "password": PASSWORD,
            "role": "worker",
            "site": ["East"],
        },
    )
    assert added.status_code == 303
    assert _as(app, "new.worker").client.get("/records/api/me").json()["user"]["sites"] == ["East"]
    weak = admin.post(
        "/records/admin/users", {"username": "x.y", "password": "short", "role": "worker"}
    )
    assert weak.status_code == 400 and "at least" in weak.text
    saved = admin.client.post(
        "/records/api/settings",
        json={"retention_days": 400, "keep_narratives": True},
        headers={"X-CSRF-Token": admin.csrf},
    )
    assert saved.json() == {"retention_days": 400, "keep_narratives": True}
    assert admin.post("/records/admin/settings", {"retention_days": ""}).status_code == 303
    assert records.settings().retention_days is None and not records.settings().keep_narratives
    assert admin.post("/records/admin/users/new.worker/active", {"active": "0"}).status_code == 303
    assert records.authenticate("new.worker", PASSWORD) is None
    users_page = admin.client.get("/records/admin/users").text
    assert "new.worker" in users_page and "disabled" in users_page
    audit = admin.client.get("/records/admin/audit").text
    assert "add_user" in audit and "settings" in audit


def test_pages_carry_security_headers(app: FastAPI) -> None:
    page = TestClient(app).get("/records/login")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"


def test_an_unavailable_database_is_a_clear_503(app: FastAPI) -> None:
    def dead() -> Records:
        raise RecordsUnavailable("cannot use the records database x: connection refused")

    app.dependency_overrides[records_web.get_records] = dead
    client = TestClient(app, follow_redirects=False)
    page = client.get("/records/login")
    assert page.status_code == 503 and "cannot be used right now" in page.text
    api = client.get("/records/api/me")
    assert api.status_code == 503 and "cannot be used right now" in api.json()["detail"]
    # Where the database lives is for the admin's log, not for whoever reads the page.
    assert "connection refused" not in page.text + api.json()["detail"]
