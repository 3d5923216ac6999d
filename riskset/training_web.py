"""Training on the web: case pages with an answer form, feedback, and a group's results.

Mount everything with ``app.include_router(training_web.router)``:

    GET  /training                                 the cases
    GET  /training/{case_id}                       a case and the answer form
    POST /training/{case_id}                       the same page with feedback (form fields
                                                   risk, set, setting, plan, group)
    GET  /training/results?group=CODE&case=ID      a group's anonymous results on a case
    GET  /api/v1/training/cases                    the cases as JSON (no keys)
    GET  /api/v1/training/cases/{case_id}          one case as JSON
    POST /api/v1/training/cases/{case_id}/feedback an answer in, Feedback out
    GET  /api/v1/training/results?group=&case=     GroupSummary

``pages`` (prefix /training) and ``api`` (prefix /api/v1/training) can also be mounted apart.
The pages work without JavaScript and extend the site's base.html. Nothing a trainee writes is
stored: with a group code, only codes and counts are (see riskset.training).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__, reading
from .knowledge import KnowledgeError
from .knowledge import load as load_knowledge
from .training import (
    MAX_ANSWER,
    CaseSummary,
    Feedback,
    GroupSummary,
    TraineeAnswer,
    TrainingError,
    TrainingStoreError,
    UnknownCase,
    case_summaries,
    case_summary,
    feedback,
    get_case,
    group_code,
    group_results,
    record_attempt,
    training_data,
)

__all__ = ["api", "pages", "router"]

HERE = Path(__file__).parent
PAGE_PATH = "/training"
FIELDS: tuple[tuple[str, str, str], ...] = (
    (
        "risk",
        "Risk",
        "What is the main issue? What other harms are connected to it? Which drug, and how "
        "big is the overdose risk?",
    ),
    (
        "set",
        "Set",
        "How is the person feeling? Are they in pain or in withdrawal? Are their basic needs met?",
    ),
    ("setting", "Setting", "Where are they? Who is around them, and how might those people react?"),
    ("plan", "What you would offer", "The strategies you would talk through with the person."),
)
# Feedback reads text: under the reading pipeline's lock, shared with the assessment pages.
_CORE = reading.LOCK
T = TypeVar("T")

pages = APIRouter(prefix=PAGE_PATH, tags=["training pages"], include_in_schema=False)
api = APIRouter(prefix="/api/v1/training", tags=["training"])


class Problem(BaseModel):
    """Why a request was refused, in words meant for the person who sent it."""

    detail: str
    errors: list[str] = Field(default_factory=list)
    suggestions: list[str] = Field(default_factory=list)


class FeedbackRequest(TraineeAnswer):
    """An answer to a case, and optionally the trainer's group code (only counts are kept)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "risk": "Heroin, injected; her tolerance is down after months off. "
                    "Overdose risk is high.",
                    "set": "Depressed and anxious after the breakup.",
                    "setting": "Going back to her encampment, in a rush.",
                    "plan": "Naloxone, test strips, start low, not using alone, someone to "
                    "talk to.",
                    "group": "tuesday-cohort",
                }
            ]
        },
    )

    group: str | None = Field(None, max_length=60, description="the trainer's group code")


async def _core(work: Callable[[], T]) -> T:
    def locked() -> T:
        with _CORE:
            return work()

    return await run_in_threadpool(locked)


# --- rendering ----------------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        # A misspelt name in a template should fail the tests, not render as nothing.
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


ENV = _environment()


def _nav() -> list[tuple[str, str]]:
    """The site's menu, with Training in it, so these pages look like the rest of riskset."""
    try:
        # Imported here, not at the top: web.py is the module that mounts this router.
        from .web import NAV
    except ImportError:  # pragma: no cover - web.py is part of the package
        NAV = [("/", "Assess")]
    nav = [(str(href), str(label)) for href, label in NAV]
    if all(href != PAGE_PATH for href, _ in nav):
        nav.insert(max(len(nav) - 1, 1), (PAGE_PATH, "Training"))
    return nav


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    kb = load_knowledge()
    html = ENV.get_template(template).render(
        base=request.scope.get("root_path", ""),
        path=PAGE_PATH,
        nav=_nav(),
        kb=kb,
        words=kb.wording,
        version=__version__,
        fields=FIELDS,
        max_answer=MAX_ANSWER,
        training_says=training_data().says,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def _error_page(request: Request, status: int, err: Exception) -> HTMLResponse:
    suggestions = err.suggestions if isinstance(err, UnknownCase) else []
    return _page(
        request, "training_error.html", status, detail=_sentence(str(err)), suggestions=suggestions
    )


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else text


def _status(err: Exception) -> int:
    if isinstance(err, UnknownCase):
        return 404
    if isinstance(err, TrainingStoreError | KnowledgeError):
        return 500
    return 422


def _problem(err: Exception, errors: list[str] | None = None) -> JSONResponse:
    suggestions = err.suggestions if isinstance(err, UnknownCase) else []
    body = Problem(detail=str(err), errors=errors or [], suggestions=suggestions)
    return JSONResponse(body.model_dump(), status_code=_status(err))


def _form_text(form: Any, name: str) -> str:
    value = form.get(name, "")
    # A file upload in place of a text field is not an answer.
    return value if isinstance(value, str) else ""


# --- pages --------------------------------------------------------------------------------------


@pages.get("", response_class=HTMLResponse)
def cases_page(request: Request) -> HTMLResponse:
    return _page(request, "training_cases.html", cases=case_summaries())


@pages.get("/results", response_class=HTMLResponse)
def results_page(
    request: Request,
    group: Annotated[str, Query(max_length=60)] = "",
    case: Annotated[str, Query(max_length=100)] = "",
) -> HTMLResponse:
    context: dict[str, Any] = {"cases": case_summaries(), "group": group, "case": case}
    if not (group.strip() and case.strip()):
        return _page(request, "training_results.html", summary=None, error=None, **context)
    try:
        summary = group_results(group, case)
    except (TrainingError, KnowledgeError) as err:
        status = _status(err)
        return _page(
            request,
            "training_results.html",
            status,
            summary=None,
            error=_sentence(str(err)),
            **context,
        )
    return _page(request, "training_results.html", summary=summary, error=None, **context)


@pages.get("/{case_id}", response_class=HTMLResponse)
def case_page(request: Request, case_id: str) -> HTMLResponse:
    try:
        case = get_case(case_id)
    except TrainingError as err:
        return _error_page(request, _status(err), err)
    blank = {name: "" for name, _, _ in FIELDS}
    return _page(
        request,
        "training_case.html",
        case=case,
        form={**blank, "group": ""},
        fb=None,
        error=None,
        group_note=None,
    )


@pages.post("/{case_id}", response_class=HTMLResponse)
async def case_answer(request: Request, case_id: str) -> HTMLResponse:
    try:
        case = get_case(case_id)
    except TrainingError as err:
        return _error_page(request, _status(err), err)
    form = await request.form()
    values = {name: _form_text(form, name) for name, _, _ in FIELDS}
    values["group"] = _form_text(form, "group")[:60]
    context: dict[str, Any] = {"case": case, "form": values, "fb": None, "group_note": None}
    try:
        answer = TraineeAnswer.model_validate({k: values[k] for k, _, _ in FIELDS})
    except ValidationError:
        error = f"Each answer can be up to {MAX_ANSWER:,} characters of text."
        return _page(request, "training_case.html", 422, error=error, **context)
    fb = await _core(lambda: feedback(case.id, answer))
    group_note = _save(values["group"], fb) if values["group"].strip() else None
    context.update(fb=fb, group_note=group_note)
    return _page(request, "training_case.html", error=None, **context)


def _save(group: str, fb: Feedback) -> tuple[bool, str]:
    """(saved, what to tell the trainee) for the group results."""
    try:
        code = group_code(group)
        record_attempt(code, fb)
    except TrainingError as err:
        return False, f"Not saved for the group: {_sentence(str(err))}"
    return True, f"Saved for group {code}: counts only, none of your words."


# --- JSON ---------------------------------------------------------------------------------------

PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not UTF-8 or not valid JSON."},
    404: {"model": Problem, "description": "No case has that id; see `suggestions`."},
    413: {"model": Problem, "description": "The body is too large."},
    415: {"model": Problem, "description": "The body is not sent as JSON."},
    422: {"model": Problem, "description": "The request needs changing; see `detail`."},
}


@api.get("/cases", response_model=list[CaseSummary])
def cases_json() -> list[CaseSummary]:
    """Every case as a trainee sees it: title, tags and text, without the expert key."""
    return case_summaries()


@api.get("/cases/{case_id}", response_model=CaseSummary, responses=PROBLEMS)
def case_json(case_id: str) -> CaseSummary | JSONResponse:
    try:
        case = get_case(case_id)
    except TrainingError as err:
        return _problem(err)
    return case_summary(case)


@api.post("/cases/{case_id}/feedback", response_model=Feedback, responses=PROBLEMS)
async def feedback_json(case_id: str, body: FeedbackRequest) -> Feedback | JSONResponse:
    """Feedback on an answer, held against the case's key. With `group`, counts are kept."""
    try:
        case = get_case(case_id)
        code = group_code(body.group) if body.group is not None else None
    except TrainingError as err:
        return _problem(err)
    answer = TraineeAnswer.model_validate(body.model_dump(exclude={"group"}))
    fb = await _core(lambda: feedback(case.id, answer))
    if code is not None:
        try:
            record_attempt(code, fb)
        except TrainingError as err:
            return _problem(err)
    return fb


@api.get("/results", response_model=GroupSummary, responses=PROBLEMS)
def results_json(
    group: Annotated[str, Query(max_length=60, description="the group code")],
    case: Annotated[str, Query(max_length=100, description="the case id")],
) -> GroupSummary | JSONResponse:
    """A group's anonymous results on one case."""
    try:
        return group_results(group, case)
    except (TrainingError, KnowledgeError) as err:
        return _problem(err)


# Last, after every route exists: include_router copies the routes it finds.
router = APIRouter()
router.include_router(pages)
router.include_router(api)
