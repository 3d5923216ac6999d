"""The records on the web: sign in, record an encounter, see your own, site reports, admin.

Mount with ``app.include_router(records_web.router)``. Every route but the sign-in form needs
a signed-in account of the right role: an anonymous request is sent to the sign-in page (HTML)
or gets 401 (``/records/api/...``), a wrong role gets 403. Every POST needs the session's CSRF
token, in the ``csrf_token`` form field or the ``X-CSRF-Token`` header.

The session is a cookie signed with HMAC-SHA256 (HttpOnly, SameSite=Lax, Secure over https),
keyed by RISKSET_SECRET_KEY or a random key kept in the data folder. It holds the account id,
the account's session epoch (bumped on sign-out and password change, which ends every session
of that account) and the CSRF token; nothing about the people encounters are about.

Sign-in is throttled per account and per client address (``login_limit``): after too many
wrong passwords the form answers 429 with Retry-After until the window has passed.

When the database cannot be used the pages answer 503 (507 when its disk is full) saying
whether anything was saved; the next request tries the database again, so the records come
back by themselves when the database does.

Tests (or the main app) may swap the database with
``app.dependency_overrides[records_web.get_records] = lambda: records``, and the sign-in
throttle likewise through ``get_login_limiter``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import platformdirs
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import FormData

from .assessment import InputError, assess
from .login_limit import LoginLimiter, limiter_from_environment
from .models import Assessment
from .records import (
    REFERRAL_KINDS,
    ROLES,
    SUPPLY_KINDS,
    AccessDenied,
    Count,
    ProgramSettings,
    Records,
    RecordsError,
    RecordsInputError,
    RecordsStorageFull,
    RecordsUnavailable,
    Report,
    Role,
    UserInfo,
    code_label,
)

__all__ = ["get_login_limiter", "get_records", "router"]

PREFIX = "/records"
API = PREFIX + "/api/"
COOKIE = "riskset_records"
SESSION_SECONDS = 12 * 3600  # one working shift; the cookie itself ends with the browser
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_WEEKS = 4
# No scripts at all, and nothing framed: pages that show records should be hard to abuse.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' "
    "data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # shared outreach devices: no records left in the cache
}
NOTICES = {
    "saved": "Encounter saved.",
    "user_added": "Account added.",
    "user_changed": "Account changed.",
    "site_added": "Site added.",
    "settings_saved": "Settings saved.",
    "signed_out": "You are signed out.",
}

_templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


# --------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------


@cache
def _default_records() -> Records:
    return Records()  # opened on first use; a failure is not cached, so it is retried


def get_records() -> Records:
    """The records the routes use (a FastAPI dependency, so it can be overridden)."""
    return _default_records()


RecordsDep = Annotated[Records, Depends(get_records)]


@cache
def _default_login_limiter() -> LoginLimiter:
    return limiter_from_environment()


def get_login_limiter() -> LoginLimiter:
    """The sign-in throttle (a dependency, so tests can give one with their own clock)."""
    return _default_login_limiter()


LimiterDep = Annotated[LoginLimiter, Depends(get_login_limiter)]


# --------------------------------------------------------------------------------------
# Signed session cookie
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebSession:
    csrf: str
    user_id: int | None = None
    epoch: int = 0
    issued: int = 0


@cache
def _stored_key(path: Path) -> bytes:
    """A random key made once and kept (mode 0600) so sessions survive a restart."""
    try:
        key = _read_or_make_key(path)
    except OSError as err:
        raise RecordsUnavailable(
            f"cannot keep the sign-in key in {path}: {err.strerror or err}; make the folder "
            "writable for this account, or set RISKSET_SECRET_KEY"
        ) from None
    if len(key) < 32:  # a short or empty key would let anyone sign session cookies
        raise RecordsUnavailable(
            f"the sign-in key in {path} is damaged: delete the file (a new key is made and "
            "everyone signs in again), or set RISKSET_SECRET_KEY"
        )
    return key


def _read_or_make_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    key = secrets.token_hex(32).encode()
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(key)
            out.flush()
            os.fsync(out.fileno())
    except OSError:
        path.unlink(missing_ok=True)  # a full disk must not leave an empty key for next time
        raise
    return key


def _secret_key() -> bytes:
    if env := os.environ.get("RISKSET_SECRET_KEY", "").strip():
        return env.encode()
    return _stored_key(platformdirs.user_data_path("riskset") / "secret_key")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(payload: bytes) -> str:
    return _b64(hmac.new(_secret_key(), payload, hashlib.sha256).digest())


def encode_session(session: WebSession) -> str:
    payload = json.dumps(asdict(session), separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_signature(payload)}"


def decode_session(value: str | None) -> WebSession | None:
    """The session in a cookie, or None when it is missing, forged, malformed or too old."""
    if not value or value.count(".") != 1:
        return None
    body, signature = value.split(".")
    try:
        payload = _unb64(body)
        if not hmac.compare_digest(signature, _signature(payload)):
            return None
        session = WebSession(**json.loads(payload))
    except (ValueError, TypeError):
        return None
    if session.user_id is not None and time.time() - session.issued > SESSION_SECONDS:
        return None
    return session


def _new_session(user: UserInfo | None = None) -> WebSession:
    # A fresh CSRF token at every sign-in: a token seen before it is worth nothing after.
    return WebSession(
        csrf=secrets.token_urlsafe(32),
        user_id=user.id if user else None,
        epoch=user.session_epoch if user else 0,
        issued=int(time.time()),
    )


def _set_cookie(request: Request, response: Response, session: WebSession) -> None:
    response.set_cookie(
        COOKIE,
        encode_session(session),
        httponly=True,
        samesite="lax",
        path="/",
        secure=request.url.scheme == "https",
    )


def _session(request: Request) -> WebSession | None:
    return decode_session(request.cookies.get(COOKIE))


# --------------------------------------------------------------------------------------
# Refusals, and the route class that turns them (and records errors) into responses
# --------------------------------------------------------------------------------------


class Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _is_api(request: Request) -> bool:
    route = request.scope.get("route")
    path = route.path if isinstance(route, APIRoute) else request.url.path
    return path.startswith(API)


def _refusal_response(request: Request, status: int, message: str) -> Response:
    if _is_api(request):
        return JSONResponse({"detail": message}, status_code=status)
    if status == 401:
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        return RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)
    return _page(request, "records_error.html", {"status": status, "message": message}, status)


_ERROR_STATUS: list[tuple[type[Exception], int]] = [
    (AccessDenied, 403),
    (RecordsInputError, 400),
    (InputError, 400),
    (RecordsError, 500),
]
# A database that went away usually comes back within a minute (a restart, a failover).
RETRY_AFTER_S = 30
_ADMIN = "if it keeps happening, tell your program's admin."


def _what_happened(request: Request, err: RecordsUnavailable) -> str:
    """The first thing a person needs: was their work saved, and what to do now."""
    if isinstance(err, RecordsStorageFull):
        return (
            "The records database is full, so nothing was saved. What was saved before is "
            "safe. Tell your program's admin."
        )
    if err.maybe_saved:
        return (
            "The connection to the records database broke while saving, so it may or may not "
            "have been saved. Look at the records before entering it again."
        )
    if request.method in SAFE_METHODS:
        return f"The records database cannot be used right now. Try again in a minute; {_ADMIN}"
    return (
        "The records database cannot be used right now, so nothing was saved. Try again in a "
        f"minute; {_ADMIN}"
    )


def _unavailable_response(request: Request, err: RecordsUnavailable) -> Response:
    status = 507 if isinstance(err, RecordsStorageFull) else 503
    summary = _what_happened(request, err)
    # The technical detail names the database's file or server, which is nobody's business on
    # a page anyone can reach: it goes to the server's log, where the admin looks.
    logging.getLogger(__name__).error("records unavailable: %s", err)
    response: Response
    if _is_api(request):
        response = JSONResponse({"detail": summary}, status_code=status)
    else:
        context = {"status": status, "message": summary, "detail": "the server's log says why"}
        try:
            response = _page(request, "records_error.html", context, status)
        except RecordsError:  # the session key itself is what cannot be had
            response = _bare_page(request, "records_error.html", context, status)
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def _error_response(request: Request, err: Exception) -> Response:
    try:
        return _answer(request, err)
    except RecordsUnavailable as worse:  # a page needs the session key, which may be unwritable
        return _unavailable_response(request, worse)


def _answer(request: Request, err: Exception) -> Response:
    if isinstance(err, Refusal):
        return _refusal_response(request, err.status, err.message)
    if isinstance(err, RecordsUnavailable):
        return _unavailable_response(request, err)
    status = next(code for kind, code in _ERROR_STATUS if isinstance(err, kind))
    return _refusal_response(request, status, str(err))


class RecordsRoute(APIRoute):
    """Answers refusals and records errors in the form the caller reads (page or JSON), and
    adds the security headers, without needing exception handlers on the main app."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                response = await handler(request)
            except (Refusal, RecordsError, InputError) as err:
                response = _error_response(request, err)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return guarded


router = APIRouter(prefix=PREFIX, route_class=RecordsRoute, tags=["records"])


# --------------------------------------------------------------------------------------
# Who is asking
# --------------------------------------------------------------------------------------


def _signed_in(records: Records, session: WebSession | None) -> UserInfo | None:
    if session is None or session.user_id is None:
        return None
    user = records.user(session.user_id)
    if user is None or not user.active or user.session_epoch != session.epoch:
        return None
    return user


async def _check_csrf(request: Request, session: WebSession | None) -> None:
    sent: object = request.headers.get("x-csrf-token")
    if sent is None and "form" in request.headers.get("content-type", ""):
        sent = (await request.form()).get("csrf_token")
    if (
        session is None
        or not isinstance(sent, str)
        or not hmac.compare_digest(sent.encode(), session.csrf.encode())
    ):
        raise Refusal(
            403, "This form has expired or came from another site. Reload the page and try again."
        )


def _needs(role: Role) -> Callable[..., Coroutine[Any, Any, UserInfo]]:
    """A dependency: the signed-in account, if it has ``role``; CSRF checked on POST."""

    async def signed_in_as(request: Request, records: RecordsDep) -> UserInfo:
        session = _session(request)
        user = await run_in_threadpool(_signed_in, records, session)
        if user is None:
            raise Refusal(401, "Sign in to use the records.")
        if not user.has_role(role):
            raise Refusal(403, f"This needs a {role} account.")
        if request.method not in SAFE_METHODS:
            await _check_csrf(request, session)
        request.state.records_user = user
        request.state.records_session = session
        return user

    return signed_in_as


async def _csrf_only(request: Request) -> None:
    await _check_csrf(request, _session(request))


Worker = Annotated[UserInfo, Depends(_needs("worker"))]
Supervisor = Annotated[UserInfo, Depends(_needs("supervisor"))]
Admin = Annotated[UserInfo, Depends(_needs("admin"))]


# --------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------


def _page(
    request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200
) -> HTMLResponse:
    session = getattr(request.state, "records_session", None) or _session(request)
    fresh = session is None
    session = session or _new_session()
    user = getattr(request.state, "records_user", None)
    notice = NOTICES.get(request.query_params.get("done", ""))
    full = {
        "user": user,
        "csrf": session.csrf,
        "prefix": PREFIX,
        "notice": notice,
        "label": code_label,
    }
    response = _templates.TemplateResponse(request, name, full | (context or {}), status)
    if fresh:  # the sign-in form needs a CSRF token before anyone has signed in
        _set_cookie(request, response, session)
    return response


def _bare_page(request: Request, name: str, context: dict[str, Any], status: int) -> HTMLResponse:
    """A page with no session at all: no account named, no form to post."""
    full = {"user": None, "csrf": "", "prefix": PREFIX, "notice": None, "label": code_label}
    return _templates.TemplateResponse(request, name, full | context, status)


def _redirect(path: str, done: str = "") -> RedirectResponse:
    return RedirectResponse(PREFIX + path + (f"?done={done}" if done else ""), status_code=303)


def _safe_next(target: str) -> str:
    # Only back into the records: an open redirect would let a link phish the sign-in.
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, records: RecordsDep, next: str = "") -> Response:
    if _signed_in(records, _session(request)):
        return RedirectResponse(_safe_next(next), status_code=303)
    return _page(request, "records_login.html", {"next": next})


@router.post("/login", dependencies=[Depends(_csrf_only)])
async def login(request: Request, records: RecordsDep, limiter: LimiterDep) -> Response:
    form = await request.form()
    username, password = _text(form, "username"), _text(form, "password")
    address = _client_address(request)
    # Refused before the password is looked at: past the limit even the right one waits.
    if (wait := limiter.attempt(address, username)) is not None:
        return _too_many_tries(request, _text(form, "next"), wait)
    try:
        user = await run_in_threadpool(records.authenticate, username, password)
    except RecordsUnavailable:
        limiter.abandoned(address, username)
        raise
    if user is None:
        context = {"next": _text(form, "next"), "error": "Wrong username or password."}
        return _page(request, "records_login.html", context, 400)
    limiter.succeeded(address, username)
    response = RedirectResponse(_safe_next(_text(form, "next")), status_code=303)
    _set_cookie(request, response, _new_session(user))
    return response


def _client_address(request: Request) -> str:
    # Behind a reverse proxy this is the proxy unless the server trusts its forwarded-for
    # header (uvicorn does for proxies on this machine).
    return request.client.host if request.client else "unknown"


def _too_many_tries(request: Request, next_page: str, wait: int) -> Response:
    minutes = max(1, -(-wait // 60))
    error = (
        "Too many wrong sign-ins for this account or from this device. Wait "
        f"{minutes} minute{'s' if minutes != 1 else ''} and try again, or ask your program's "
        "admin to set a new password."
    )
    response = _page(request, "records_login.html", {"next": next_page, "error": error}, 429)
    response.headers["Retry-After"] = str(wait)
    return response


@router.post("/logout")
def logout(user: Worker, records: RecordsDep) -> Response:
    records.end_sessions(user)
    response = _redirect("/login", "signed_out")
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/")
def home(user: Worker) -> Response:
    return _redirect("/report" if user.has_role("supervisor") else "/new")


@router.get("/new", response_class=HTMLResponse)
def new_page(request: Request, user: Worker, records: RecordsDep) -> Response:
    return _page(request, "records_new.html", _new_context(records, user))


def _new_context(records: Records, user: UserInfo, **extra: Any) -> dict[str, Any]:
    return {
        "sites": records.visible_sites(user),
        "supply_kinds": SUPPLY_KINDS,
        "referral_kinds": REFERRAL_KINDS,
        "keep_narratives": records.settings().keep_narratives,
        "today": date.today().isoformat(),
        "form": {},
    } | extra


@router.post("/new", response_class=HTMLResponse)
async def new_submit(request: Request, user: Worker, records: RecordsDep) -> Response:
    form = await request.form()
    try:
        entry = _encounter_from_form(form)
        await run_in_threadpool(_save_encounter, records, user, entry)
    except (RecordsInputError, InputError) as err:
        context = await run_in_threadpool(_new_context, records, user, form=dict(form))
        return _page(request, "records_new.html", context | {"error": str(err)}, 400)
    return _redirect("/mine", "saved")


class EncounterIn(BaseModel):
    """An encounter as the API takes it. Give a ``narrative`` to have riskset assess it, or
    an ``assessment`` made earlier; either may be left out (supplies only)."""

    model_config = ConfigDict(extra="forbid")

    site: str
    day: date | None = None
    supplies: dict[str, int] = Field(default_factory=dict)
    referrals: list[str] = Field(default_factory=list)
    follow_up: bool = False
    narrative: str | None = None
    assessment: Assessment | None = None


def _encounter_from_form(form: FormData) -> EncounterIn:
    supplies: dict[str, int] = {}
    for kind, label in SUPPLY_KINDS.items():
        raw = _text(form, f"supply_{kind}").strip() or "0"
        if not raw.isdigit():
            raise RecordsInputError(f"{label}: give a whole number")
        supplies[kind] = int(raw)
    day_text = _text(form, "day").strip()
    try:
        day = date.fromisoformat(day_text) if day_text else None
    except ValueError:
        raise RecordsInputError(f"the day {day_text!r} is not a date") from None
    return EncounterIn(
        site=_text(form, "site"),
        day=day,
        supplies=supplies,
        referrals=[r for r in form.getlist("referral") if isinstance(r, str)],
        follow_up=_text(form, "follow_up") == "on",
        narrative=_text(form, "narrative") or None,
    )


def _save_encounter(records: Records, user: UserInfo, entry: EncounterIn) -> int:
    assessment = entry.assessment
    if assessment is None and entry.narrative and entry.narrative.strip():
        assessment = assess(entry.narrative)
    return records.add_encounter(
        assessment,
        site=entry.site,
        worker=user,
        day=entry.day,
        supplies=entry.supplies,
        referrals=entry.referrals,
        follow_up=entry.follow_up,
        narrative=entry.narrative,
    )


@router.get("/mine", response_class=HTMLResponse)
def mine_page(request: Request, user: Worker, records: RecordsDep) -> Response:
    rows = records.my_encounters(user)
    return _page(
        request,
        "records_mine.html",
        {"rows": rows, "supply_kinds": SUPPLY_KINDS, "referral_kinds": REFERRAL_KINDS},
    )


# ---- reports --------------------------------------------------------------------------

FromQuery = Annotated[str | None, Query(alias="from")]


def _range(date_from: str | None, date_to: str | None) -> tuple[date, date]:
    try:
        end = date.fromisoformat(date_to) if date_to else date.today()
        start = (
            date.fromisoformat(date_from)
            if date_from
            else end - timedelta(weeks=DEFAULT_WEEKS) + timedelta(days=1)
        )
    except ValueError:
        raise RecordsInputError("give days as YYYY-MM-DD") from None
    if (end - start).days > 3660:
        raise RecordsInputError("a report covers at most ten years")
    return start, end


@router.get("/report", response_class=HTMLResponse)
def report_page(
    request: Request,
    user: Supervisor,
    records: RecordsDep,
    date_from: FromQuery = None,
    to: str | None = None,
    site: str | None = None,
) -> Response:
    start, end = _range(date_from, to)
    site = site or None
    report = records.report(viewer=user, date_from=start, date_to=end, site=site)
    query = f"from={start}&to={end}" + (f"&site={quote(site)}" if site else "")
    return _page(
        request,
        "records_report.html",
        {
            "report": report,
            "charts": _charts(report),
            "sites": records.visible_sites(user),
            "site": site or "",
            "csv_url": f"{PREFIX}/report.csv?{query}",
        },
    )


@router.get("/report.csv")
def report_csv(
    user: Supervisor,
    records: RecordsDep,
    date_from: FromQuery = None,
    to: str | None = None,
    site: str | None = None,
) -> Response:
    start, end = _range(date_from, to)
    out = io.StringIO()
    records.export_csv(out, viewer=user, date_from=start, date_to=end, site=site or None)
    name = f"riskset-encounters-{start}-{end}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# ---- admin ----------------------------------------------------------------------------


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(request: Request, user: Admin, records: RecordsDep) -> Response:
    return _page(request, "records_users.html", _users_context(records))


def _users_context(records: Records, **extra: Any) -> dict[str, Any]:
    return {
        "users": records.users(),
        "all_sites": records.sites(),
        "roles": ROLES,
        "form": {},
    } | extra


@router.post("/admin/users", response_class=HTMLResponse)
async def users_add(request: Request, user: Admin, records: RecordsDep) -> Response:
    form = await request.form()
    try:
        await run_in_threadpool(
            records.add_user,
            _text(form, "username"),
            _text(form, "password"),
            _text(form, "role"),
            _texts(form, "site"),
            actor=user,
        )
    except RecordsInputError as err:
        context = await run_in_threadpool(_users_context, records, form=dict(form))
        return _page(request, "records_users.html", context | {"error": str(err)}, 400)
    return _redirect("/admin/users", "user_added")


@router.post("/admin/users/{username}/active")
async def users_active(
    request: Request, username: str, user: Admin, records: RecordsDep
) -> Response:
    form = await request.form()
    active = _text(form, "active") == "1"
    await run_in_threadpool(records.set_active, username, active, actor=user)
    return _redirect("/admin/users", "user_changed")


@router.post("/admin/users/{username}/password")
async def users_password(
    request: Request, username: str, user: Admin, records: RecordsDep
) -> Response:
    form = await request.form()
    await run_in_threadpool(records.set_password, username, _text(form, "password"), actor=user)
    return _redirect("/admin/users", "user_changed")


@router.post("/admin/users/{username}/sites")
async def users_sites(
    request: Request, username: str, user: Admin, records: RecordsDep
) -> Response:
    form = await request.form()
    await run_in_threadpool(records.set_user_sites, username, _texts(form, "site"), actor=user)
    return _redirect("/admin/users", "user_changed")


@router.post("/admin/sites")
async def sites_add(request: Request, user: Admin, records: RecordsDep) -> Response:
    form = await request.form()
    name = await run_in_threadpool(records.add_site, _text(form, "name"))
    await run_in_threadpool(records.audit, user, "add_site", name)
    return _redirect("/admin/users", "site_added")


@router.get("/admin/settings", response_class=HTMLResponse)
def settings_page(request: Request, user: Admin, records: RecordsDep) -> Response:
    return _page(request, "records_settings.html", {"settings": records.settings()})


@router.post("/admin/settings", response_class=HTMLResponse)
async def settings_save(request: Request, user: Admin, records: RecordsDep) -> Response:
    form = await request.form()
    days = _text(form, "retention_days").strip()
    if days and not days.isdigit():
        raise RecordsInputError("the retention period is a number of days")
    new = ProgramSettings(int(days) if days else None, _text(form, "keep_narratives") == "on")
    await run_in_threadpool(records.update_settings, new, actor=user)
    return _redirect("/admin/settings", "settings_saved")


@router.get("/admin/audit", response_class=HTMLResponse)
def audit_page(request: Request, user: Admin, records: RecordsDep) -> Response:
    return _page(request, "records_audit.html", {"entries": records.audit_log(limit=500)})


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _texts(form: FormData, name: str) -> list[str]:
    return [v for v in form.getlist(name) if isinstance(v, str) and v]


# --------------------------------------------------------------------------------------
# JSON API (same session cookie; POSTs send the CSRF token from /api/me as X-CSRF-Token)
# --------------------------------------------------------------------------------------


@router.get("/api/me")
def api_me(request: Request, user: Worker) -> dict[str, Any]:
    session = request.state.records_session
    return {"user": asdict(user), "csrf_token": session.csrf if session else None}


@router.post("/api/encounters", status_code=201)
def api_add_encounter(entry: EncounterIn, user: Worker, records: RecordsDep) -> dict[str, int]:
    return {"id": _save_encounter(records, user, entry)}


@router.get("/api/encounters/mine")
def api_my_encounters(user: Worker, records: RecordsDep) -> list[dict[str, Any]]:
    return [asdict(row) for row in records.my_encounters(user)]


@router.get("/api/report")
def api_report(
    user: Supervisor,
    records: RecordsDep,
    date_from: FromQuery = None,
    to: str | None = None,
    site: str | None = None,
) -> dict[str, Any]:
    start, end = _range(date_from, to)
    return asdict(records.report(viewer=user, date_from=start, date_to=end, site=site or None))


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str
    password: str
    role: Role = "worker"
    sites: list[str] = Field(default_factory=list)


@router.get("/api/users")
def api_users(user: Admin, records: RecordsDep) -> list[dict[str, Any]]:
    return [asdict(u) for u in records.users()]


@router.post("/api/users", status_code=201)
def api_add_user(new: UserIn, user: Admin, records: RecordsDep) -> dict[str, Any]:
    added = records.add_user(new.username, new.password, new.role, new.sites, actor=user)
    return asdict(added)


class SettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retention_days: int | None = None
    keep_narratives: bool = False


@router.get("/api/settings")
def api_settings(user: Admin, records: RecordsDep) -> dict[str, Any]:
    return asdict(records.settings())


@router.post("/api/settings")
def api_save_settings(new: SettingsIn, user: Admin, records: RecordsDep) -> dict[str, Any]:
    saved = records.update_settings(ProgramSettings(**new.model_dump()), actor=user)
    return asdict(saved)


@router.get("/api/audit")
def api_audit(user: Admin, records: RecordsDep) -> list[dict[str, Any]]:
    return [asdict(entry) for entry in records.audit_log(limit=500)]


# --------------------------------------------------------------------------------------
# Charts: server-rendered SVG, readable at a glance and without any script
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chart:
    title: str
    svg: Markup
    rows: list[Count]


def _charts(report: Report) -> list[Chart]:
    charts = [
        Chart(
            "Encounters per week",
            column_chart("Encounters per week", report.per_week),
            report.per_week,
        )
    ]
    for title, rows in report.sections()[1:]:
        charts.append(Chart(title, bar_chart(title, rows), rows))
    return charts


def bar_chart(title: str, rows: Sequence[Count], width: int = 720) -> Markup:
    """Horizontal bars, longest first: the reader compares lengths along one baseline."""
    if not rows:
        return Markup('<p class="empty">None in this period.</p>')
    label_w, row_h, room = 250, 26, 56
    top = max(row.count for row in rows) or 1
    height = row_h * len(rows) + 6
    parts = [_svg_open(title, width, height)]
    for i, row in enumerate(rows):
        y = i * row_h + 3
        length = round((width - label_w - room) * row.count / top)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{escape(_short(row.label))}'
            f'</text><rect x="{label_w}" y="{y + 4}" width="{length}" height="{row_h - 9}">'
            f"<title>{escape(row.label)}: {row.count}</title></rect>"
            f'<text x="{label_w + length + 6}" y="{y + 17}">{row.count}</text>'
        )
    svg = "".join(parts) + "</svg>"
    return Markup(svg)  # nosec B704 # all text in parts is escape()d


def column_chart(title: str, rows: Sequence[Count], width: int = 720) -> Markup:
    """One column per week, with quiet weeks left as gaps so trends read left to right."""
    if not rows:
        return Markup('<p class="empty">No weeks in this period.</p>')
    base, top_pad, left = 170, 18, 8
    slot = (width - left * 2) / len(rows)
    top = max(row.count for row in rows) or 1
    every = max(1, round(len(rows) / 12))  # at most a dozen week labels, so none overlap
    parts = [_svg_open(title, width, base + 40)]
    for i, row in enumerate(rows):
        x = left + i * slot
        tall = round((base - top_pad) * row.count / top)
        parts.append(
            f'<rect x="{x + slot * 0.15:.1f}" y="{base - tall}" width="{slot * 0.7:.1f}" '
            f'height="{tall}"><title>{escape(row.key)} ({escape(row.label)}): {row.count}'
            "</title></rect>"
        )
        if len(rows) <= 26 and row.count:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{base - tall - 4}" '
                f'text-anchor="middle">{row.count}</text>'
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{base + 18}" text-anchor="middle" '
                f'class="axis">{escape(row.key[5:])}</text>'
            )
    parts.append(f'<line x1="{left}" y1="{base}" x2="{width - left}" y2="{base}"/>')
    svg = "".join(parts) + "</svg>"
    return Markup(svg)  # nosec B704 # all text in parts is escape()d


def _svg_open(title: str, width: int, height: int) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
    )


def _short(label: str, limit: int = 34) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"
