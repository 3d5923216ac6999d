"""The web app and JSON API: FastAPI and Jinja2 pages, with htmx as an optional extra.

Handlers only parse the request, call the core and render what it returns. The HTML pages and the
JSON API show the very same pydantic models (``Assessment``, ``CodeBook`` ...), so a page never
says something the API does not. Every page works with JavaScript off: htmx only swaps a result
in place of a full page load. Nothing is fetched from outside (no CDN, no web fonts), because
outreach workers are often offline or on a poor connection. Nothing a worker types is stored.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import Message as HeaderValue
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypedDict, cast
from urllib.parse import unquote_to_bytes

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, combinations, language, reading
from .assessment import InputError, assess, check_text
from .combinations import ComboCheck, FactSheet, PairRating, UnknownName
from .knowledge import SUBSTANCE_CLASSES, KnowledgeBase, Question, Substance
from .knowledge import load as load_knowledge
from .models import SPECTRUM_ORDER, Assessment, Finding, PlanItem, Status
from .questionnaire import Answer, assess_answers
from .records_web import router as records_router
from .render import FRAME_TITLES, STATUS_WORDS
from .training_web import router as training_router

HERE = Path(__file__).parent
DEFAULT_MAX_TEXT = 20_000
# A reading takes milliseconds; a request still unanswered after this long is stuck or waiting
# behind a flood, and the person is better served by a clear "try again" than by a spinner.
DEFAULT_TIMEOUT = 30.0
TIMEOUT_ENV = "RISKSET_REQUEST_TIMEOUT"
# The questionnaire's first question is answered in the narrative box itself.
NARRATIVE_QUESTION = "issue"
JESSICA = (
    "Jessica has been using heroin on and off for the past 10 years. Jessica stopped using for a "
    "few months while she was with her ex, but they recently broke up. She is feeling depressed "
    "and anxious and is looking to use again. She buys a bag and heads to the syringe exchange "
    "for some new points and heads to her encampment in a rush."
)
# The work is CPU-bound under the GIL anyway, so the core runs one request at a time, under the
# reading pipeline's own lock (spaCy does not promise a pipeline may serve threads at once).
_CORE = reading.LOCK


# --- the models behind both the JSON API and the pages ----------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AssessRequest(_Model):
    text: str = Field(
        description="The situation, in the worker's or the person's own words.",
        examples=[JESSICA],
    )


class AskRequest(_Model):
    answers: dict[str, Answer] = Field(
        description=(
            "Answers by question id (see GET /api/v1/questions). Choices count from 1; "
            "`text` holds words of your own, read like a narrative."
        ),
        examples=[
            {
                "issue": {"text": "Back from 30 days in jail, going to use tonight."},
                "drug": {"choices": [1, 11]},
                "overdose_risk": {"choices": [1, 3]},
            }
        ],
    )


class AssessForm(_Model):
    """What the Assess page sends: the narrative and any answers to the seed's questions."""

    text: str = ""
    answers: dict[str, Answer] = Field(default_factory=dict)


class Problem(_Model):
    """Why a request was refused, in words meant for the person who sent it."""

    detail: str
    errors: list[str] = Field(default_factory=list, description="one line per field at fault")
    suggestions: list[str] = Field(
        default_factory=list, description="known names close to an unknown one"
    )


class CombinationRequest(_Model):
    names: list[str] = Field(
        description=(
            "Two or more substances, in any words: street names, brands and misspellings are "
            'fine, and one entry may hold several ("fetty + bars").'
        ),
        examples=[["fentanyl", "bars", "alcohol"]],
    )


class Health(_Model):
    status: Literal["ok"] = "ok"
    version: str
    knowledge_version: str


CodeKind = Literal["finding", "sign", "substance", "risk_factor", "urgent", "harm", "strategy"]


class CodeInfo(_Model):
    code: str
    kind: CodeKind
    label: str
    group: str = Field(description="frame, substance class, or plan spectrum")
    explanation: str
    details: list[str] = Field(default_factory=list)
    source: str


class CodeSection(_Model):
    id: str
    title: str
    about: str
    codes: list[CodeInfo]


class CodeBook(_Model):
    """Everything riskset can find, weigh, flag or suggest, with what it means and its source."""

    knowledge_version: str
    sections: list[CodeSection]
    principles: list[str]


# --- the core, called the same way from the pages and the API ---------------------------------


@dataclass(frozen=True)
class Settings:
    max_text: int
    timeout: float = DEFAULT_TIMEOUT

    @property
    def max_body(self) -> int:
        # Room for the longest text percent-encoded (up to 12 bytes a character) plus answers.
        return self.max_text * 12 + 64 * 1024


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]


def _check_words(text: str, limit: int) -> str:
    check_text(text, limit)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        # Lone surrogates can arrive through JSON escapes; the language pipeline cannot read them.
        raise InputError("the text holds characters that are not valid Unicode") from err
    return text


def assess_text(text: str, limit: int) -> Assessment:
    _check_words(text, limit)
    with _CORE:
        return assess(text)


def assess_ask(answers: dict[str, Answer], limit: int) -> Assessment:
    if not any(a.choices or a.text.strip() for a in answers.values()):
        raise InputError("no answers: answer at least one question")
    for answer in answers.values():
        if answer.text.strip():
            _check_words(answer.text, limit)
    with _CORE:
        return assess_answers(answers)


def assess_form(form: AssessForm, limit: int) -> Assessment:
    """A narrative alone reads exactly as the API reads it; with answers, it answers question 1."""
    if not form.answers:
        if not form.text.strip():
            raise InputError("the text is empty: describe the situation, or answer a question")
        return assess_text(form.text, limit)
    # The narrative goes first, so its evidence offsets are the same as when it stands alone.
    narrative = {NARRATIVE_QUESTION: Answer(text=form.text)} if form.text.strip() else {}
    return assess_ask({**narrative, **form.answers}, limit)


def form_from(data: FormData) -> AssessForm:
    """The Assess form's fields: ``text``, one checkbox list per question, ``<id>_text`` words."""
    answers: dict[str, Answer] = {}
    for question in asked_questions():
        choices = [_choice_number(question.id, v) for v in data.getlist(question.id)]
        words = _text_field(data, f"{question.id}_text")
        if choices or words.strip():
            answers[question.id] = Answer(choices=choices, text=words)
    return AssessForm(text=_text_field(data, "text"), answers=answers)


def _text_field(data: FormData, name: str) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise InputError(f"{name} must be typed text, not a file")
    return value


def _choice_number(question: str, value: object) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 6:
        return int(value)
    raise InputError(f"question {question!r} has no choice {str(value)[:20]!r}")


def asked_questions() -> list[Question]:
    """The questions shown beside the narrative box (which itself answers the first one)."""
    return [q for q in load_knowledge().questions if q.id != NARRATIVE_QUESTION]


MAX_NAMES = 12
MAX_NAME = 100


class NoSuchSubstance(UnknownName):
    """An unknown name where a page or resource was asked for by it: a 404, not a 422."""


def check_combination(names: list[str]) -> ComboCheck:
    if len(names) > MAX_NAMES or any(len(n) > MAX_NAME for n in names):
        raise InputError(f"name at most {MAX_NAMES} substances, each under {MAX_NAME} characters")
    try:
        return combinations.check(names)
    except UnknownName:
        raise
    except ValueError as err:
        raise InputError(str(err)) from err


def fact_sheet(name: str) -> FactSheet:
    if len(name) > MAX_NAME:
        raise InputError(f"the name is too long (the limit is {MAX_NAME} characters)")
    try:
        return combinations.fact_sheet(name)
    except UnknownName as err:
        raise NoSuchSubstance(err.name, err.suggestions) from err


def unknown_detail(err: UnknownName) -> str:
    close = known_names(err)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown drug name {err.name!r}{hint}"


def known_names(err: UnknownName) -> list[str]:
    """The substance ids behind the suggestions, once each: misspellings are not worth showing."""
    return list(dict.fromkeys(combinations.resolve(s).id for s in err.suggestions))


# --- what the codes mean ------------------------------------------------------------------------


@functools.cache
def code_book(kb: KnowledgeBase) -> CodeBook:
    """Built once per knowledge base: it only changes when the data files do."""
    sections = [
        *_finding_sections(kb),
        CodeSection(
            id="substances",
            title="Substances",
            about="Each substance riskset recognises, with its street names and what helps.",
            codes=[_substance_info(s) for s in kb.substances.values()],
        ),
        _factor_section(kb),
        _urgent_section(kb),
        _harm_section(kb),
        _strategy_section(kb),
    ]
    return CodeBook(
        knowledge_version=kb.version,
        sections=sections,
        principles=[p.text for p in kb.principles],
    )


CLASS_TITLES = {
    "opioid": "Opioids",
    "stimulant": "Stimulants",
    "depressant": "Depressants",
    "dissociative": "Dissociatives",
    "psychedelic": "Psychedelics",
    "cannabinoid": "Cannabinoids",
    "other": "Other medicines and substances",
}

FRAME_ABOUT = {
    "risk": "What is being used, how, and what raises or lowers the danger.",
    "set": "How the person is feeling, in body and mind, and what they want.",
    "setting": "Where it happens and who is around.",
    "sign": "Signs that call for action now.",
}


def _finding_sections(kb: KnowledgeBase) -> list[CodeSection]:
    titles = {**FRAME_TITLES, "sign": "Urgent signs"}
    return [
        CodeSection(
            id=f"frame-{frame}",
            title=title,
            about=FRAME_ABOUT[frame],
            codes=[
                CodeInfo(
                    code=c.code,
                    kind="sign" if frame == "sign" else "finding",
                    label=c.label,
                    group=frame,
                    explanation=c.why,
                    source=c.source,
                )
                for c in kb.codes.values()
                if c.frame == frame
            ],
        )
        for frame, title in titles.items()
    ]


def _substance_info(s: Substance) -> CodeInfo:
    words = respectful(s.aliases)
    details = [f"Words riskset recognises for it: {', '.join(words)}" if words else ""]
    details += [
        f"Taken by: {', '.join(s.routes)}" if s.routes else "",
        f"An overdose can look like: {'; '.join(s.overdose_signs)}" if s.overdose_signs else "",
        s.route_notes,
        f"What helps: {'; '.join(s.what_helps)}" if s.what_helps else "",
    ]
    return CodeInfo(
        code=s.code,
        kind="substance",
        label=s.label,
        group=s.klass,
        explanation=s.note or f"{s.label}: {s.klass.replace('_', ' ')}.",
        details=[d for d in details if d],
        source=s.source,
    )


def respectful(words: Iterable[str]) -> list[str]:
    """The words the language check does not flag: the reader knows more than a page should say."""
    return [w for w in words if not language.check(w)]


def _factor_section(kb: KnowledgeBase) -> CodeSection:
    return CodeSection(
        id="risk-factors",
        title="Overdose risk factors",
        about="What raises (or lowers) the overdose risk level, and by how much.",
        codes=[
            CodeInfo(
                code=f.id,
                kind="risk_factor",
                label=f.id.replace("_", " ").capitalize(),
                group="raises" if f.weight > 0 else "lowers",
                explanation=f.says,
                details=[f"Weight: {f.weight:+d}"],
                source=f.source,
            )
            for f in kb.risk.factors
        ],
    )


def _urgent_section(kb: KnowledgeBase) -> CodeSection:
    return CodeSection(
        id="urgent",
        title="Urgent flags",
        about="Situations that come first, with what to do right now.",
        codes=[
            CodeInfo(
                code=u.id,
                kind="urgent",
                label=u.title,
                group="urgent",
                explanation=" ".join(u.what_to_do),
                source=u.source,
            )
            for u in kb.urgent
        ],
    )


def _harm_section(kb: KnowledgeBase) -> CodeSection:
    return CodeSection(
        id="harms",
        title="Connected harms",
        about="Other harms that can come with the main issue.",
        codes=[
            CodeInfo(
                code=h.id,
                kind="harm",
                label=h.label,
                group="harm",
                explanation=h.why,
                source=h.source,
            )
            for h in kb.harms
        ],
    )


def _strategy_section(kb: KnowledgeBase) -> CodeSection:
    labels = kb.wording.spectrum_labels
    ordered = sorted(
        kb.strategies.values(), key=lambda s: (SPECTRUM_ORDER.index(s.spectrum), s.priority)
    )
    return CodeSection(
        id="strategies",
        title="Plan strategies",
        about="What riskset can suggest, across the spectrum from safer use to stopping.",
        codes=[
            CodeInfo(
                code=s.code,
                kind="strategy",
                label=s.label,
                group=s.spectrum,
                explanation=s.says,
                details=[
                    f"Part of: {labels.get(s.spectrum, s.spectrum)} ({s.level.replace('_', ' ')})",
                    *(f"Offered when: {t.why}" for t in s.triggers),
                ],
                source=s.source,
            )
            for s in ordered
        ],
    )


def anchor(kind: str, code: str) -> str:
    """The id of a code on the codes page, so results can link to it."""
    prefix = "" if kind in ("finding", "sign", "substance", "strategy") else f"{kind}-"
    return prefix + code.replace(":", "-")


# --- views of an assessment for the templates ---------------------------------------------------


class Tag(NamedTuple):
    label: str
    note: str
    style: str


class Piece(NamedTuple):
    """A stretch of the narrative: plain, or evidence for findings, with labels where they end."""

    text: str
    style: str
    tags: tuple[Tag, ...]


# Which look wins where evidence for several findings overlaps: the most pressing one.
STYLE_ORDER = ("sign", "present", "historical", "hypothetical", "absent", "other")


def finding_style(f: Finding, other: bool = False) -> str:
    if other:
        return "other"
    return "sign" if f.frame == "sign" else f.status.value


def finding_note(f: Finding, other: bool = False) -> str:
    if other:
        return "about someone else"
    if f.status is Status.present:
        return ""
    cue = f": “{f.cue}”" if f.cue else ""
    return f"{STATUS_WORDS[f.status]}{cue}"


def highlight(a: Assessment) -> list[Piece]:
    """Cut the narrative at every evidence boundary, so overlapping evidence still reads right."""
    text = a.text
    spans = [
        (f, other)
        for f, other in [
            *((f, False) for f in (*a.signs, *a.findings)),
            *((f, True) for f in a.about_others),
        ]
        if f.start is not None and f.end is not None and 0 <= f.start < f.end <= len(text)
    ]
    cuts = sorted(
        {
            0,
            len(text),
            *(cast(int, f.start) for f, _ in spans),
            *(cast(int, f.end) for f, _ in spans),
        }
    )
    return _merged([_piece(text, lo, hi, spans) for lo, hi in itertools.pairwise(cuts)])


def _merged(pieces: list[Piece]) -> list[Piece]:
    """Join neighbours that look the same with no label between them: one mark, not two."""
    out: list[Piece] = []
    for piece in pieces:
        if out and out[-1].style == piece.style and not out[-1].tags:
            out[-1] = Piece(out[-1].text + piece.text, piece.style, piece.tags)
        else:
            out.append(piece)
    return out


def _piece(text: str, lo: int, hi: int, spans: list[tuple[Finding, bool]]) -> Piece:
    covering = [
        finding_style(f, o) for f, o in spans if cast(int, f.start) <= lo and hi <= cast(int, f.end)
    ]
    style = min(covering, key=STYLE_ORDER.index) if covering else ""
    tags: list[Tag] = []
    for f, other in spans:
        tag = Tag(f.label, finding_note(f, other), finding_style(f, other))
        if f.end == hi and tag not in tags:
            tags.append(tag)
    return Piece(text[lo:hi], style, tuple(tags))


def findings_by_frame(a: Assessment) -> list[tuple[str, list[Finding]]]:
    groups = [
        (title, [f for f in a.findings if f.frame == frame])
        for frame, title in FRAME_TITLES.items()
    ]
    groups.append(("Urgent signs", list(a.signs)))
    return [(title, items) for title, items in groups if items]


def plan_groups(plan: list[PlanItem], kb: KnowledgeBase) -> list[tuple[str, list[PlanItem]]]:
    """Like the CLI summary: what to do right now first, then the plan by spectrum."""
    groups = [("Right now", [p for p in plan if p.urgent])]
    groups += [
        (title, [p for p in plan if p.spectrum == spectrum and not p.urgent])
        for spectrum, title in kb.wording.spectrum_labels.items()
    ]
    return [(title, items) for title, items in groups if items]


def handout_groups(plan: list[PlanItem], kb: KnowledgeBase) -> list[tuple[str, list[PlanItem]]]:
    """Like the CLI handout: the whole plan by spectrum, in the person's words."""
    groups = [
        (title, [p for p in plan if p.spectrum == spectrum])
        for spectrum, title in kb.wording.spectrum_labels.items()
    ]
    return [(title, items) for title, items in groups if items]


def substance_names(kb: KnowledgeBase, ids: Iterable[str]) -> str:
    return " + ".join(kb.label(f"substance:{s}") for s in ids)


# --- rendering and problems ---------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """Enough of a request to answer it, even from middleware that has no ``Request``."""

    path: str
    root: str
    htmx: bool

    @classmethod
    def of(cls, scope: Scope) -> Where:
        headers = dict(scope.get("headers") or [])
        return cls(
            scope.get("path", "/"),
            scope.get("root_path", ""),
            headers.get(b"hx-request") == b"true",
        )

    @property
    def api(self) -> bool:
        # "/api/" anywhere, so routers mounted under their own prefix answer in JSON too.
        return "/api/" in self.path or self.path in ("/openapi.json", "/healthz")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        # A misspelt name in a template should fail the tests, not render as nothing.
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        anchor=anchor, finding_note=finding_note, finding_style=finding_style, version=__version__
    )
    return env


ENV = _environment()
NAV = [
    ("/", "Assess"),
    ("/combinations", "Combinations"),
    ("/substances", "Fact sheets"),
    ("/codes", "Codes"),
    ("/training", "Training"),
    ("/records/", "Records"),
    ("/docs", "API"),
]


def page(where: Where, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    kb = load_knowledge()
    html = ENV.get_template(template).render(
        base=where.root, path=where.path, nav=NAV, kb=kb, words=kb.wording, **context
    )
    return HTMLResponse(html, status_code=status)


STATUS_TITLES = {
    400: "That request could not be read",
    404: "Page not found",
    405: "That does not work here",
    413: "That is too much text",
    415: "That kind of content is not accepted",
    422: "Something needs changing",
    500: "Something went wrong on our side",
    503: "That took too long",
}


def problem(
    where: Where,
    status: int,
    detail: str,
    errors: Iterable[str] = (),
    suggestions: Iterable[str] = (),
) -> Response:
    """The one way a refusal is answered: JSON for the API, a friendly page for people."""
    if where.api:
        body = Problem(detail=detail, errors=list(errors), suggestions=list(suggestions))
        return JSONResponse(body.model_dump(), status_code=status)
    title = STATUS_TITLES.get(status, "That did not work")
    template = "_problem.html" if where.htmx else "error.html"
    return page(where, template, status, title=title, detail=_sentence(detail), code=status)


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else text


def _validation_lines(err: RequestValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        where = ".".join(str(part) for part in e.get("loc", ()) if part != "body") or "body"
        lines.append(f"{where}: {e.get('msg', 'is not valid')}")
    return lines


async def on_validation_error(request: Request, exc: Exception) -> Response:
    err = cast(RequestValidationError, exc)
    lines = _validation_lines(err)
    summary = "the request does not match what this endpoint expects"
    return problem(Where.of(request.scope), 422, f"{summary}: {'; '.join(lines)}", lines)


async def on_input_error(request: Request, exc: Exception) -> Response:
    return problem(Where.of(request.scope), 422, str(exc))


async def on_unknown_name(request: Request, exc: Exception) -> Response:
    err = cast(UnknownName, exc)
    status = 404 if isinstance(err, NoSuchSubstance) else 422
    return problem(
        Where.of(request.scope), status, unknown_detail(err), suggestions=known_names(err)
    )


HTTP_WORDS = {
    404: "there is nothing at this address",
    405: "this address does not accept that method",
}


async def on_http_error(request: Request, exc: Exception) -> Response:
    err = cast(StarletteHTTPException, exc)
    detail = HTTP_WORDS.get(err.status_code) or str(err.detail)
    response = problem(Where.of(request.scope), err.status_code, detail)
    response.headers.update(err.headers or {})
    return response


async def on_crash(request: Request, exc: Exception) -> Response:
    # The traceback goes to the server log only; the person gets a plain apology.
    detail = (
        "riskset hit an unexpected problem; please try again, or report it if it keeps happening"
    )
    response = problem(Where.of(request.scope), 500, detail)
    # Starlette answers a crash outside every middleware, SecurityHeaders included.
    for name, value in security_headers(request.scope):
        response.headers.setdefault(name.decode(), value.decode())
    return response


# --- middleware ---------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _ClientGone(Exception):
    pass


class BodyGuard:
    """Refuse bodies that are too large, not UTF-8, or (for the API) not JSON, before parsing.

    Doing it here, once, gives every route the same clear 4xx instead of a framework message or
    a 500 from deep inside the form or JSON parser.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        where = Where.of(scope)
        try:
            body = await self._read(scope, receive)
            _check_body(where, _content_type(scope), body)
        except _Refused as err:
            await problem(where, err.status, err.detail)(scope, receive, send)
            return
        except _ClientGone:
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body:
            raise _Refused(413, self._too_big())
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                raise _Refused(413, self._too_big())
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_big(self) -> str:
        return f"the request is too large (the limit is {self.max_body:,} bytes)"


def _content_type(scope: Scope) -> str:
    raw = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
    header = HeaderValue()
    header["content-type"] = raw
    return header.get_content_type() if raw else ""


def _check_body(where: Where, content_type: str, body: bytes) -> None:
    if where.api:
        _check_json(content_type, body)
    elif content_type == "application/x-www-form-urlencoded":
        _utf8(unquote_to_bytes(body.replace(b"+", b" ")))
    elif content_type == "multipart/form-data":
        _utf8(body)


def _check_json(content_type: str, body: bytes) -> None:
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise _Refused(415, "send the body as JSON, with the header Content-Type: application/json")
    if not body.strip():
        raise _Refused(400, 'the body is empty: send JSON such as {"text": "..."}')
    text = _utf8(body)
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise _Refused(
            400, f"the body is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from err


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Refused(400, "the request is not UTF-8 text") from err


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# Pages load nothing from elsewhere; the API docs page (Swagger UI) needs one inline script.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'"
)


def security_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """Headers every response carries; POST answers hold a narrative, so no cache keeps them."""
    extra = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy", (DOCS_CSP if scope["path"] == "/docs" else CSP).encode()),
    ]
    if scope["method"] != "GET":
        extra.append((b"cache-control", b"no-store"))
    return extra


class SecurityHeaders:
    """Adds ``security_headers`` to every response that does not set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *(h for h in extra if h[0] not in present),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Deadline:
    """A request not answered within ``seconds`` gets a 503 that says so, instead of hanging.

    The late work cannot be stopped once it runs in a thread (Python cannot interrupt one), so it
    finishes on its own and its answer is dropped; work still waiting for a thread is cancelled.
    A response already under way is left to finish: the person is getting their answer.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reply = _Reply(send)
        # A task of its own, so waiting for it can stop at the deadline even while it sits in
        # a thread, which no cancellation reaches.
        work = asyncio.ensure_future(self.app(scope, receive, reply.send))
        try:
            await asyncio.wait({work}, timeout=self.seconds)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if work.done() or reply.started:
            await work
            return
        reply.late = True
        _abandon(work)
        await problem(Where.of(scope), 503, self._detail())(scope, receive, send)

    def _detail(self) -> str:
        seconds = f"{self.seconds:g} second{'' if self.seconds == 1 else 's'}"
        return f"no answer came within {seconds}, so riskset stopped trying; please try again soon"


class _Reply:
    """Passes the app's answer on, unless the deadline has passed and a 503 went instead."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.late = False

    async def send(self, message: Message) -> None:
        if self.late:
            return
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


_LATE: set[asyncio.Future[None]] = set()


def _abandon(work: asyncio.Future[None]) -> None:
    # Held until done (a task nobody references may be collected midway), and a late crash still
    # reaches the log, since nobody is left to answer it.
    _LATE.add(work)
    work.add_done_callback(_forget)
    work.cancel()


def _forget(work: asyncio.Future[None]) -> None:
    _LATE.discard(work)
    if not work.cancelled() and (err := work.exception()) is not None:
        logging.getLogger(__name__).error("a request that timed out then failed", exc_info=err)


def request_timeout() -> float:
    """$RISKSET_REQUEST_TIMEOUT seconds, else the default: worker processes read it themselves."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds above 0, not {raw!r}")
    return seconds


# --- the JSON API -------------------------------------------------------------------------------

PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not UTF-8 or not valid JSON."},
    413: {"model": Problem, "description": "The body is too large."},
    415: {"model": Problem, "description": "The body is not sent as JSON."},
    422: {"model": Problem, "description": "The input cannot be assessed (empty, too long ...)."},
    503: {"model": Problem, "description": "No answer within the time limit (30 s by default)."},
}

api = APIRouter(prefix="/api/v1", tags=["assessment"])


@api.post("/assess", response_model=Assessment, responses=PROBLEMS, summary="Assess a narrative")
def api_assess(body: AssessRequest, settings: SettingsDep) -> Assessment:
    """Assess a narrative: the same `Assessment` as `riskset assess --json`."""
    return assess_text(body.text, settings.max_text)


@api.post(
    "/ask", response_model=Assessment, responses=PROBLEMS, summary="Assess answers to the questions"
)
def api_ask(body: AskRequest, settings: SettingsDep) -> Assessment:
    """Assess answers to the seed's eight Risk / Set / Setting questions."""
    return assess_ask(body.answers, settings.max_text)


@api.get("/questions", response_model=list[Question], summary="The Risk, Set and Setting questions")
def api_questions() -> list[Question]:
    """The seed's eight Risk / Set / Setting questions, with their choices (numbered from 1)."""
    return load_knowledge().questions


@api.post(
    "/combinations", response_model=ComboCheck, responses=PROBLEMS, summary="Check a combination"
)
def api_combinations(body: CombinationRequest) -> ComboCheck:
    """Check a combination: every pair rated, worst first, with a stack of downers on top."""
    return check_combination(body.names)


@api.get(
    "/substances/{name}",
    summary="A substance's fact sheet",
    response_model=FactSheet,
    responses={404: {"model": Problem, "description": "No substance by that name."}},
)
def api_fact_sheet(name: str) -> FactSheet:
    """One substance's fact sheet, by any of its names."""
    return fact_sheet(name)


@api.get("/codes", response_model=CodeBook, summary="What the codes mean")
def api_codes() -> CodeBook:
    """Every finding, substance, risk factor, flag, harm and strategy, with its source."""
    return code_book(load_knowledge())


# --- the pages ----------------------------------------------------------------------------------

pages = APIRouter(include_in_schema=False)


def assess_response(
    where: Where, form: AssessForm, settings: Settings, status: int = 200, **context: Any
) -> HTMLResponse:
    """The Assess page, or for htmx only the part that holds the result."""
    template = "_result.html" if where.htmx else "assess.html"
    return page(
        where,
        template,
        status,
        form=form,
        questions=numbered_questions(),
        frame_titles=FRAME_TITLES,
        narrative_question=_narrative_question(),
        narrative_number=_narrative_number(),
        max_text=settings.max_text,
        **context,
    )


def numbered_questions() -> list[tuple[int, Question]]:
    """The seed's questions numbered as the seed lists them, less the narrative box's own."""
    return [
        (n, q) for n, q in enumerate(load_knowledge().questions, 1) if q.id != NARRATIVE_QUESTION
    ]


def _narrative_question() -> Question:
    return next(q for q in load_knowledge().questions if q.id == NARRATIVE_QUESTION)


def _narrative_number() -> int:
    return 1 + [q.id for q in load_knowledge().questions].index(NARRATIVE_QUESTION)


@pages.get("/")
def home(request: Request, settings: SettingsDep) -> HTMLResponse:
    return assess_response(Where.of(request.scope), AssessForm(), settings)


def result_context(a: Assessment) -> dict[str, Any]:
    kb = load_knowledge()
    return dict(
        a=a,
        level_label=kb.wording.level_labels[a.overdose_risk.level],
        pieces=highlight(a),
        frames=findings_by_frame(a),
        plan=plan_groups(a.plan, kb),
        combos=[(substance_names(kb, c.substances), c) for c in a.combinations],
    )


@pages.post("/assess")
async def assess_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    where = Where.of(request.scope)
    data = await request.form()
    # If the rest of the form is at fault, the narrative still comes back: nothing typed is lost.
    typed = data.get("text", "")
    form = AssessForm(text=typed if isinstance(typed, str) else "")
    try:
        form = form_from(data)
        a = await run_in_threadpool(assess_form, form, settings.max_text)
    except InputError as err:
        return assess_response(where, form, settings, 422, error=_sentence(str(err)))
    return assess_response(where, form, settings, **result_context(a))


@pages.post("/handout")
async def handout_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    where = Where.of(request.scope)
    try:
        form = form_from(await request.form())
        a = await run_in_threadpool(assess_form, form, settings.max_text)
    except InputError as err:
        return cast(HTMLResponse, problem(where, 422, str(err)))
    kb = load_knowledge()
    return page(where, "handout.html", a=a, form=form, groups=handout_groups(a.plan, kb))


@pages.get("/assess")
@pages.get("/handout")
def back_to_start(request: Request) -> RedirectResponse:
    # Results come from a POST (the narrative stays out of URLs and logs); a GET starts over.
    return RedirectResponse(f"{request.scope.get('root_path', '')}/", status_code=303)


@pages.get("/combinations")
def combinations_page(
    request: Request, names: Annotated[list[str] | None, Query()] = None
) -> HTMLResponse:
    where = Where.of(request.scope)
    typed = ", ".join(n.strip() for n in names or [] if n.strip())
    if not typed:
        return page(where, "combinations.html", typed="")
    try:
        result = check_combination(names or [])
    except UnknownName as err:
        retry = [(sid, typed.replace(err.name, sid, 1)) for sid in known_names(err)]
        return page(
            where,
            "combinations.html",
            422,
            typed=typed,
            error=_sentence(f"unknown drug name {err.name!r}"),
            retry=retry,
        )
    except InputError as err:
        return page(where, "combinations.html", 422, typed=typed, error=_sentence(str(err)))
    kb = load_knowledge()
    rows = [(substance_names(kb, c.substances), c) for c in result.combinations]
    return page(where, "combinations.html", typed=typed, result=result, rows=rows)


@pages.get("/substances")
def substances_page(request: Request, name: str = "") -> HTMLResponse:
    if name.strip():
        return substance_page(request, name.strip())
    kb = load_knowledge()
    groups = [
        (CLASS_TITLES.get(k, k.title()), [s for s in kb.substances.values() if s.klass == k])
        for k in SUBSTANCE_CLASSES
    ]
    return page(Where.of(request.scope), "substances.html", groups=[g for g in groups if g[1]])


@pages.get("/substances/{name}")
def substance_page(request: Request, name: str) -> HTMLResponse:
    where = Where.of(request.scope)
    try:
        sheet = fact_sheet(name)
    except NoSuchSubstance as err:
        return page(
            where,
            "substances.html",
            404,
            groups=[],
            missing=name,
            suggestions=[
                (sid, load_knowledge().label(f"substance:{sid}")) for sid in known_names(err)
            ],
        )
    kb = load_knowledge()
    return page(
        where,
        "substance.html",
        sheet=sheet,
        also_called=respectful(sheet.also_called),
        pairs=pair_groups(sheet, kb),
    )


Partners = list[tuple[str, str]]


def pair_groups(sheet: FactSheet, kb: KnowledgeBase) -> list[tuple[Partners, PairRating]]:
    """Pairs that share one rating (a class rating, mostly) shown once, with every partner named."""
    groups: dict[tuple[str, str, str, str], Partners] = {}
    first: dict[tuple[str, str, str, str], PairRating] = {}
    for p in sheet.riskiest_with:
        key = (p.risk, p.why, p.what_to_do, p.source)
        groups.setdefault(key, []).append((p.b, kb.label(f"substance:{p.b}")))
        first.setdefault(key, p)
    return [(partners, first[key]) for key, partners in groups.items()]


@pages.get("/codes")
def codes_page(request: Request) -> HTMLResponse:
    return page(Where.of(request.scope), "codes.html", book=code_book(load_knowledge()))


@pages.get("/docs")
def docs_page(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    swagger = get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="riskset API",
        swagger_js_url=f"{root}/static/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/static/swagger-ui.css",
        swagger_favicon_url=f"{root}/static/favicon.svg",
        # No badge from the online validator (the page must not reach outside), and no links
        # nested inside the operation buttons, which screen readers cannot tell apart.
        swagger_ui_parameters={"validatorUrl": None, "deepLinking": False},
    )
    # Swagger UI's own page has no language and some low-contrast colours: patch both here.
    html = bytes(swagger.body).decode("utf-8").replace("<html>", '<html lang="en">', 1)
    html = html.replace(
        "</head>", f'<link rel="stylesheet" href="{root}/static/docs.css">\n</head>', 1
    )
    return HTMLResponse(html)


service = APIRouter(tags=["service"])


@service.get("/healthz", response_model=Health, summary="Health check")
def healthz() -> Health:
    return Health(version=__version__, knowledge_version=load_knowledge().version)


# --- the app ------------------------------------------------------------------------------------


def _warm_up() -> None:
    # Loading the language pipeline takes seconds: do it before the first person waits for it.
    load_knowledge()
    reading.load()
    # The codes (built once, running the language check over every name) and the templates take
    # about a second and a half together the first time; under `make load` the first visitors
    # after a start all waited ~2.7 s for them behind one another.
    code_book(load_knowledge())
    for name in ENV.list_templates(extensions=["html"]):
        ENV.get_template(name)
    gc.freeze()  # all of the above lives as long as the server: no collection need walk it


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await run_in_threadpool(_warm_up)
    yield


Handler = Callable[[Request, Exception], Awaitable[Response]]


def create_app(max_text: int = DEFAULT_MAX_TEXT, timeout: float | None = None) -> FastAPI:
    """The riskset web app; ``max_text`` is the most characters one text may have.

    ``timeout`` is the most seconds a request may take (default: ``request_timeout()``).
    """
    app = FastAPI(
        title="riskset",
        version=__version__,
        description=(
            "Harm reduction assessment: Risk, Set and Setting, read from a worker's own words. "
            "Every refusal is a 4xx with a `detail` that says what to change; a request not "
            "answered in time gets a 503 with a `detail` too."
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    seconds = request_timeout() if timeout is None else timeout
    app.state.settings = Settings(max_text=max_text, timeout=seconds)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api)
    app.include_router(service)
    app.include_router(pages)
    # Records pages and their JSON need a signed-in session: not part of the open API.
    app.include_router(records_router, include_in_schema=False)
    app.include_router(training_router)
    handlers: dict[type[Exception], Handler] = {
        RequestValidationError: on_validation_error,
        InputError: on_input_error,
        UnknownName: on_unknown_name,
        StarletteHTTPException: on_http_error,
        Exception: on_crash,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
    app.add_middleware(BodyGuard, max_body=app.state.settings.max_body)
    # Outside BodyGuard, so a body sent too slowly counts against the deadline too.
    app.add_middleware(Deadline, seconds=app.state.settings.timeout)
    app.add_middleware(SecurityHeaders)
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the web app with uvicorn until interrupted; ``workers`` processes share the port."""
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    print(f"riskset is starting at http://{shown}:{port}/  (Ctrl+C stops it)", flush=True)
    limits = server_limits(request_timeout())
    if workers > 1:
        # Each worker process builds its own app, so it is named rather than passed.
        uvicorn.run(
            "riskset.web:create_app", factory=True, host=host, port=port, workers=workers, **limits
        )
    else:
        uvicorn.run(create_app(), host=host, port=port, **limits)


class ServerLimits(TypedDict):
    timeout_keep_alive: int
    limit_concurrency: int
    timeout_graceful_shutdown: int


def server_limits(timeout: float) -> ServerLimits:
    """uvicorn's own limits, per process, chosen rather than left to its defaults."""
    return ServerLimits(
        # Idle keep-alive connections close after 5 s: phones reconnect cheaply, and an idle
        # connection holds a slot that a person waiting for an answer could use.
        timeout_keep_alive=5,
        # Beyond this many connections and requests at once, uvicorn answers a plain 503 at once
        # instead of queueing work the deadline would cut anyway. Each request may hold a body of
        # up to Settings.max_body (~0.3 MB), so this also keeps a flood under ~150 MB.
        limit_concurrency=500,
        # Stopping waits for open requests, but no longer than a request may take.
        timeout_graceful_shutdown=math.ceil(timeout) + 5,
    )
