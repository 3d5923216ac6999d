"""The training commands, mounted in the main CLI as ``app.add_typer(train_app, name="train")``:

    riskset train                                  list the cases
    riskset train CASE_ID [--group CODE] [--json]  read a case, answer, get feedback
    riskset train results --group CODE --case ID   a group's anonymous results on a case

Errors are one line on stderr and exit 1, never a traceback.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from .knowledge import KnowledgeError
from .knowledge import load as load_knowledge
from .training import (
    MAX_ANSWER,
    CodeNote,
    Feedback,
    GroupSummary,
    Misread,
    PlanNote,
    Quote,
    Share,
    TraineeAnswer,
    TrainingError,
    UnknownCase,
    WordingFlag,
    YourWords,
    feedback,
    get_case,
    group_code,
    group_results,
    record_attempt,
)

__all__ = ["render_feedback", "render_results", "train_app"]

WIDTH = 88
CASE_COMMAND = "case"
# The seed's own questions for each frame, so the prompts teach the frame as they ask.
PROMPTS: tuple[tuple[str, str, str], ...] = (
    (
        "risk",
        "Risk",
        "What is the main issue, what harms are connected, which drug, how big is "
        "the overdose risk?",
    ),
    ("set", "Set", "How is the person feeling? In pain, in withdrawal? Are their basic needs met?"),
    ("setting", "Setting", "Where are they, and who is around them?"),
    ("plan", "What would you offer", "The strategies you would talk through with the person."),
)


class _CaseIdGroup(TyperGroup):
    """``riskset train jessica`` works like ``riskset train case jessica``.

    A first word that is not a command is taken as a case id, so trainees can type the case
    name straight after ``train`` while ``results`` stays a command of its own.
    """

    # Typer carries its own private copy of click, so its types are left as Any here.
    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return CASE_COMMAND, self.commands[CASE_COMMAND], args
        return super().resolve_command(ctx, args)


train_app = typer.Typer(
    cls=_CaseIdGroup,
    help="Practise Risk, Set and Setting on cases, with feedback from the case's expert key. "
    "Run with no arguments to list the cases, or give a case id: riskset train jessica.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> typer.Exit:
    """One line on stderr and exit 1: never a traceback for something a person can fix."""
    typer.echo(f"riskset: {message}", err=True)
    return typer.Exit(1)


def _wrap(text: str, indent: str = "  ", first: str | None = None) -> str:
    return textwrap.fill(
        " ".join(text.split()),
        width=WIDTH,
        initial_indent=first if first is not None else indent,
        subsequent_indent=indent,
    )


@train_app.callback(invoke_without_command=True)
def list_cases(ctx: typer.Context) -> None:
    """List the cases (when no case id or command is given)."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        cases = load_knowledge().cases
    except KnowledgeError as err:
        raise _fail(str(err)) from err
    width = max(len(c.id) for c in cases)
    for case in cases:
        typer.echo(f"{case.id:<{width}}  {case.title}")
    typer.echo(f"\n{len(cases)} cases. Start one with: riskset train CASE_ID [--group CODE]")


@train_app.command(CASE_COMMAND)
def case_command(
    case_id: Annotated[
        str | None, typer.Argument(help="The case to work on (see riskset train).")
    ] = None,
    group: Annotated[
        str | None,
        typer.Option("--group", help="Your trainer's group code: only counts are kept."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the feedback as JSON.")] = False,
) -> None:
    """Read a case, write what you see under Risk, Set and Setting, and get feedback."""
    if case_id is None:
        raise _fail("give a case id; riskset train lists them")
    try:
        case = get_case(case_id)
        code = group_code(group) if group is not None else None
    except UnknownCase as err:
        raise _fail(f"{err} (riskset train lists the cases)") from err
    except (TrainingError, KnowledgeError) as err:
        raise _fail(str(err)) from err
    # With --json the case and the prompts go to stderr, so stdout holds only the JSON.
    typer.echo(f"\n{case.title}\n\n{_wrap(case.text, indent='')}", err=as_json)
    answer = _ask(err=as_json)
    try:
        result = feedback(case.id, answer)
        if code is not None:
            record_attempt(code, result)
    except (TrainingError, KnowledgeError) as err:
        raise _fail(str(err)) from err
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        typer.echo(render_feedback(result), nl=False)
        if code is not None:
            typer.echo(f"\nSaved for group {code}: counts only, none of your words.")


def _ask(err: bool) -> TraineeAnswer:
    parts: dict[str, str] = {}
    for field, title, question in PROMPTS:
        typer.echo("\n" + _wrap(question, indent=""), err=err)
        parts[field] = typer.prompt(title, default="", show_default=False, err=err)
    try:
        return TraineeAnswer.model_validate(parts)
    except ValidationError as err_:
        raise _fail(f"each answer must be plain text of up to {MAX_ANSWER:,} characters") from err_


@train_app.command("results")
def results_command(
    group: Annotated[str | None, typer.Option("--group", help="The group code.")] = None,
    case_id: Annotated[str | None, typer.Option("--case", help="The case id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """A group's anonymous results on one case."""
    # Checked here rather than by typer, so a missing option is one line and exit 1 too.
    if group is None or case_id is None:
        raise _fail("give both --group CODE and --case CASE_ID")
    try:
        summary = group_results(group, case_id)
    except (TrainingError, KnowledgeError) as err:
        raise _fail(str(err)) from err
    if as_json:
        typer.echo(summary.model_dump_json(indent=2))
    else:
        typer.echo(render_results(summary), nl=False)


# --- rendering ----------------------------------------------------------------------------------


def _words(words: Iterable[YourWords]) -> str:
    return ", ".join(f'"{w.text}" ({w.field})' for w in words)


def _quotes(quotes: Iterable[Quote]) -> str:
    return "; ".join(f'"{q.text}" ({q.says})' for q in quotes)


def _section(title: str, lines: list[str]) -> list[str]:
    return [f"\n{title}", *lines] if lines else []


def _code_lines(notes: list[CodeNote], with_case: bool) -> list[str]:
    lines = []
    for n in notes:
        head = f"- {n.label} [{n.frame}]"
        if n.your_words:
            head += f": you wrote {_words(n.your_words)}"
        lines.append(_wrap(head, first="  ", indent="    "))
        if with_case or not n.your_words:
            lines.append(_wrap(n.says, indent="    "))
    return lines


def _misread_lines(misreads: list[Misread]) -> list[str]:
    lines = []
    for m in misreads:
        lines.append(_wrap(f"- {m.label}: you wrote {_words(m.your_words)}", indent="    "))
        lines.append(_wrap(m.says, indent="    "))
        if m.case_words:
            lines.append(_wrap(f"The case: {_quotes(m.case_words)}", indent="    "))
    return lines


def _plan_lines(notes: list[PlanNote], show_says: bool) -> list[str]:
    lines = []
    for p in notes:
        head = f"- {p.label}" + (f": {_words(p.your_words)}" if p.your_words else "")
        lines.append(_wrap(head, first="  ", indent="    "))
        if show_says:
            lines.append(_wrap(p.says, indent="    "))
        if p.principle:
            lines.append(_wrap(f"Principle ({p.principle}): {p.principle_text}", indent="    "))
    return lines


def _wording_lines(flags: list[WordingFlag]) -> list[str]:
    lines = []
    for f in flags:
        lines.append(_wrap(f'- "{f.text}" ({f.field}, {f.kind})', first="  ", indent="    "))
        lines.append(_wrap(f"{f.why} Instead: {f.suggestion}.", indent="    "))
        lines.append(_wrap(f"Principle ({f.principle}): {f.principle_text}", indent="    "))
    return lines


def render_feedback(fb: Feedback) -> str:
    """The feedback as plain text for a terminal."""
    s = fb.score
    lines = [f"\nFeedback: {fb.title}"]
    lines += [_wrap(note, indent="") for note in fb.notes]
    lines += _section(
        f"What you caught ({s.caught} of {s.key_findings})", _code_lines(fb.caught, with_case=False)
    )
    lines += _section(f"What you missed ({len(fb.missed)})", _code_lines(fb.missed, True))
    lines += _section(f"What you misread ({s.misread})", _misread_lines(fb.misread))
    lines += _section("Not in the key", _code_lines(fb.not_in_key, with_case=True))
    lines += ["\nOverdose risk", _wrap(fb.overdose_risk.says)]
    lines += _section(
        f"Plan: offered ({s.plan_caught} of {s.plan_items})",
        _plan_lines(fb.plan_caught, show_says=False),
    )
    lines += _section("Plan: not offered", _plan_lines(fb.plan_missed, show_says=True))
    lines += _section("Plan: also offered", _plan_lines(fb.plan_also, show_says=False))
    lines += _section(
        "Offered, but not right for this person", _plan_lines(fb.must_not_offered, show_says=True)
    )
    lines += _section("Wording to reconsider", _wording_lines(fb.wording))
    lines += ["\nThe key's main issue", _wrap(fb.main_issue)]
    lines += _section(
        "Connected harms", [_wrap(h, first="  - ", indent="    ") for h in fb.connected_harms]
    )
    lines += _section(
        "Teaching points",
        [
            _wrap(f"{t.point} ({t.principle})", first="  - ", indent="    ")
            for t in fb.teaching_points
        ],
    )
    return "\n".join(lines) + "\n"


def _share_lines(shares: list[Share], attempts: int) -> list[str]:
    return [
        f"  {round(sh.share * 100):>3}%  {sh.label} ({sh.count} of {attempts})" for sh in shares
    ]


def render_results(summary: GroupSummary) -> str:
    """A group's results as plain text for a terminal."""
    head = f"Group {summary.group} on {summary.title}"
    if summary.attempts == 0:
        return f"{head}\nNo attempts yet.\n"
    n = summary.attempts
    lines = [head, f"{n} attempt{'s' if n != 1 else ''}, {summary.first} to {summary.last}"]
    lines += _section("Key findings: share who caught each", _share_lines(summary.findings, n))
    lines += _section("Plan: share who offered each", _share_lines(summary.plan, n))
    lines += _section("Most common misreads", _share_lines(summary.misreads, n))
    lines += _section(
        "Offered though not right for this person", _share_lines(summary.must_not_offered, n)
    )
    lines += [
        "\nOverdose risk",
        f"  {summary.risk_agreed} of {summary.risk_rated} who rated it agreed with the key",
        "\nWording",
        f"  coercive phrasings: {summary.coercive_wording}",
        f"  judgemental phrasings: {summary.judgemental_wording}",
        f"  stigmatising terms: {summary.stigmatising_wording}",
        f"  attempts with any of these: {summary.attempts_with_wording_flags} of {n}",
    ]
    if summary.unreadable_lines:
        lines.append(f"\n{summary.unreadable_lines} line(s) of the results file could not be read.")
    return "\n".join(lines) + "\n"
