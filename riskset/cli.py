"""The command line: parse, call the core, render. Every command is listed in the README."""

from __future__ import annotations

import difflib
import gc
import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .assessment import InputError, assess, assess_many, check_text
from .knowledge import KnowledgeError
from .knowledge import load as load_knowledge

# Commands in modules of their own, imported only when used: the records commands pull in
# SQLAlchemy and Alembic, which would double the start-up time of every `riskset assess`.
# name: (module, attribute, help)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "users": ("riskset.records_cli", "users_app", "Accounts: add, list, disable, passwords."),
    "records": ("riskset.records_cli", "records_app", "Encounter records: list, purge, settings."),
    "report": ("riskset.records_cli", "report_command", ""),
    "backup": ("riskset.records_cli", "backup_command", ""),
    "train": ("riskset.training_cli", "train_app", "Practise on the case library, with feedback."),
}


class _LazyGroup(TyperGroup):
    # Typer carries its own private copy of click, so its types are left as Any here.
    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *LAZY_COMMANDS]

    def get_command(self, ctx: Any, name: str) -> Any:
        if name not in self.commands and name in LAZY_COMMANDS:
            self.commands[name] = _import_command(name)
        return super().get_command(ctx, name)


def _import_command(name: str) -> Any:
    import importlib

    module, attribute, help_text = LAZY_COMMANDS[name]
    found = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer()
    if isinstance(found, typer.Typer):
        holder.add_typer(found, name=name, help=help_text or None)
    else:
        holder.command(name)(found)
    holder.command("_")(lambda: None)  # a second command, so Typer makes a group to take it from
    return typer.main.get_group(holder).commands[name]


app = typer.Typer(
    cls=_LazyGroup,
    name="riskset",
    help="Harm reduction assessment: Risk, Set and Setting, read from a worker's own words.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> typer.Exit:
    """One line on stderr and exit 1: never a traceback for something the user can fix."""
    typer.echo(f"riskset: {message}", err=True)
    return typer.Exit(1)


def read_input(text: str | None) -> str:
    if text is None or text == "-":
        if sys.stdin.isatty() and text is None:
            raise fail("give the text to assess, or - to read it from standard input")
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise fail("the input is not UTF-8 text") from err
    return text


@app.command("assess")
def assess_command(
    text: Annotated[
        str | None, typer.Argument(help="The situation, in your own words; - for stdin.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole assessment as JSON.")
    ] = False,
    jsonl: Annotated[
        bool,
        typer.Option("--jsonl", help='Batch: {"id", "text"} lines in, one result line out each.'),
    ] = False,
    handout: Annotated[
        bool, typer.Option("--handout", help="Print the person's plan handout.")
    ] = False,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=32, help="Processes for --jsonl.")
    ] = 1,
) -> None:
    """Assess a situation: findings, overdose risk and why, urgent dangers, harms and a plan."""
    from . import render

    if jsonl:
        _assess_jsonl(workers)
        return
    try:
        assessment = assess(read_input(text))
    except InputError as err:
        raise fail(str(err)) from err
    if as_json:
        typer.echo(assessment.model_dump_json(indent=2))
    elif handout:
        typer.echo(render.handout(assessment), nl=False)
    else:
        typer.echo(render.summary(assessment), nl=False)


def _parse_line(line: str) -> tuple[Any, str | None, str | None]:
    """(id, text, error) for one batch line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return None, None, f"not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(row, dict):
        return None, None, 'each line must be a JSON object like {"id": ..., "text": ...}'
    try:
        return row.get("id"), check_text(row.get("text")), None
    except InputError as err:
        return row.get("id"), None, str(err)


def assess_lines(lines: list[str]) -> list[str]:
    """Batch lines to output lines, in order; bad lines get an error line of their own."""
    parsed = [_parse_line(line) for line in lines]
    good = [text for _, text, error in parsed if error is None and text is not None]
    results = iter(assess_many(good))
    out: list[str] = []
    for rid, _text, error in parsed:
        head = '{"id": ' + json.dumps(rid, ensure_ascii=False)
        if error is not None:
            out.append(head + ', "error": ' + json.dumps(error) + "}")
        else:
            out.append(head + ", " + next(results).model_dump_json(exclude={"text"})[1:])
    return out


def _batches(size: int = 512) -> Iterator[list[str]]:
    batch: list[str] = []
    for raw in sys.stdin.buffer:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = "\0not utf-8"
        if line.strip():
            batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _assess_jsonl(workers: int) -> None:
    from .reading import load

    out = sys.stdout
    if workers == 1:
        load()
        for batch in _batches():
            out.write("\n".join(assess_lines(batch)) + "\n")
            out.flush()
        return
    import multiprocessing

    # Each worker builds its own pipeline once; imap keeps the output in input order.
    with multiprocessing.get_context("fork").Pool(workers, initializer=load) as pool:
        for lines in pool.imap(assess_lines, _batches(256)):
            out.write("\n".join(lines) + "\n")
            out.flush()


@app.command("ask")
def ask_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole assessment as JSON.")
    ] = False,
) -> None:
    """Answer the seed's eight Risk / Set / Setting questions, then see the assessment."""
    from . import render
    from .questionnaire import Answer, assess_answers

    kb = load_knowledge()
    answers: dict[str, Answer] = {}
    typer.echo("Answer what you know; press Enter to skip a question.\n")
    for question in kb.questions:
        typer.echo(f"[{question.frame.title()}] {question.asks}")
        if question.help:
            typer.echo(f"  {question.help}")
        picked: list[int] = []
        if question.choices:
            for i, choice in enumerate(question.choices, 1):
                typer.echo(f"  {i:>2}. {choice.label}")
            picked = _ask_numbers(len(question.choices))
        words = (
            typer.prompt("  In your own words", default="", show_default=False)
            if question.free_text
            else ""
        )
        answers[question.id] = Answer(choices=picked, text=words)
        typer.echo("")
    try:
        assessment = assess_answers(answers)
    except InputError as err:
        raise fail(str(err)) from err
    typer.echo(assessment.model_dump_json(indent=2) if as_json else render.summary(assessment))


def _ask_numbers(count: int) -> list[int]:
    while True:
        raw = typer.prompt("  Numbers, separated by commas", default="", show_default=False)
        try:
            numbers = [int(p) for p in raw.replace(" ", ",").split(",") if p]
        except ValueError:
            typer.echo("  Please type numbers like 1,3 or press Enter to skip.")
            continue
        if all(1 <= n <= count for n in numbers):
            return numbers
        typer.echo(f"  Choose between 1 and {count}.")


@app.command("explain")
def explain_command(
    code: Annotated[str, typer.Argument(help="A code, e.g. tolerance_loss.")],
) -> None:
    """What a code means, why it matters, and its source."""
    kb = load_knowledge()
    full = _resolve_code(code)
    if full.startswith("substance:"):
        s = kb.substances[full.removeprefix("substance:")]
        lines = [f"{full}: {s.label} ({s.klass})", f"  Routes: {', '.join(s.routes) or '-'}"]
        lines += [
            f"  Overdose looks like: {'; '.join(s.overdose_signs)}",
            f"  Route: {s.route_notes}",
        ]
        lines += [f"  What helps: {'; '.join(s.what_helps)}", f"  Source: {s.source}"]
    elif full.startswith("strategy:"):
        st = kb.strategies[full.removeprefix("strategy:")]
        lines = [f"{full}: {st.label}", f"  {st.says}"]
        lines += [
            f"  Spectrum: {st.spectrum.replace('_', ' ')}; level: {st.level.replace('_', ' ')}"
        ]
        lines += [
            f"  Offered when: {'; '.join(t.why for t in st.triggers)}",
            f"  Source: {st.source}",
        ]
    else:
        entry = kb.codes[full]
        lines = [
            f"{full}: {entry.label} ({entry.frame})",
            f"  {entry.why}",
            f"  Source: {entry.source}",
        ]
    typer.echo("\n".join(lines))


def _resolve_code(code: str) -> str:
    kb = load_knowledge()
    every = kb.all_codes()
    for candidate in (code, f"substance:{code}", f"strategy:{code}"):
        if candidate in every or candidate in kb.codes:
            return candidate
    close = difflib.get_close_matches(code, [*every, *kb.codes], n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `riskset codes`"
    raise fail(f"unknown code {code!r}{hint}")


@app.command("codes")
def codes_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the codes as JSON.")] = False,
) -> None:
    """Every finding and strategy code riskset uses, with its label."""
    kb = load_knowledge()
    rows = [(code, kb.label(code)) for code in kb.all_codes()]
    if as_json:
        typer.echo(json.dumps([{"code": c, "label": label} for c, label in rows], indent=2))
        return
    width = max(len(c) for c, _ in rows)
    typer.echo("\n".join(f"{c:<{width}}  {label}" for c, label in rows))


@app.command("check")
def check_command(
    names: Annotated[list[str], typer.Argument(help='Two or more drugs, e.g. fetty bars "lean".')],
    as_json: Annotated[bool, typer.Option("--json", help="Print the check as JSON.")] = False,
) -> None:
    """Check a combination: every pair rated, worst first, with why and what helps."""
    from . import render
    from .combinations import UnknownName, check

    try:
        result = check(names)
    except (UnknownName, ValueError) as err:
        raise fail(str(err)) from err
    typer.echo(result.model_dump_json(indent=2) if as_json else render.combo_check(result))


@app.command("drug")
def drug_command(
    name: Annotated[str, typer.Argument(help="A drug name, street name or brand.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the fact sheet as JSON.")] = False,
) -> None:
    """A substance's fact sheet: what overdose looks like, routes, what helps, riskiest mixes."""
    from . import render
    from .combinations import UnknownName, fact_sheet

    try:
        sheet = fact_sheet(name)
    except UnknownName as err:
        raise fail(str(err)) from err
    typer.echo(sheet.model_dump_json(indent=2) if as_json else render.fact_sheet(sheet))


@app.command("interactions")
def interactions_command(
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help='Batch: {"a", "b"} lines in, one rating line out each.')
    ] = True,
) -> None:
    """Rate pairs in bulk: {"a", "b"} lines in, {"a", "b", "risk", "why", "source"} lines out."""
    from .combinations import UnknownName, rate_pair

    for raw in sys.stdin:
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in "ab"):
                raise ValueError('each line must be an object like {"a": "heroin", "b": "xanax"}')
            out: dict[str, Any] = rate_pair(row["a"], row["b"]).model_dump(exclude={"what_to_do"})
        except json.JSONDecodeError as err:
            out = {"error": f"not valid JSON ({err.msg} at column {err.colno})"}
        except (UnknownName, ValueError, LookupError) as err:
            out = {"a": row.get("a"), "b": row.get("b"), "error": str(err)}
        typer.echo(json.dumps(out, ensure_ascii=False))


def _text_jsonl(handle: Any) -> None:
    """{"id", "text"} lines in; handle(text) gives the rest of each output line, in order."""
    for raw in sys.stdin.buffer:
        try:
            rid, text, error = _parse_line(raw.decode("utf-8"))
        except UnicodeDecodeError:
            rid, text, error = None, None, "the line is not UTF-8 text"
        if not raw.strip():
            continue
        out: dict[str, Any] = {"id": rid}
        if error is not None or text is None:
            out["error"] = error
        else:
            out.update(handle(text))
        typer.echo(json.dumps(out, ensure_ascii=False))


@app.command("language")
def language_command(
    text: Annotated[str | None, typer.Argument(help="Text to check; - for stdin.")] = None,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help='Batch: {"id", "text"} lines in, {"id", "issues"} out.')
    ] = False,
) -> None:
    """Find stigmatising words and suggest person-first ones ("clean needles" is fine)."""
    from .language import check

    def issues(t: str) -> dict[str, Any]:
        return {"issues": [i.model_dump() for i in check(t)]}

    if jsonl:
        _text_jsonl(issues)
        return
    words = read_input(text)
    found = check(words)
    if not found:
        typer.echo("No stigmatising language found.")
    for issue in found:
        typer.echo(
            f'"{issue.text}" ({issue.start}-{issue.end}): try "{issue.suggestion}". {issue.why}'
        )


@app.command("scrub")
def scrub_command(
    text: Annotated[str | None, typer.Argument(help="Text to scrub; - for stdin.")] = None,
    jsonl: Annotated[
        bool,
        typer.Option("--jsonl", help='Batch: {"id", "text"} in, {"id", "text", "removed"} out.'),
    ] = False,
) -> None:
    """Remove names, phone numbers, emails, addresses, birth dates and IDs from text."""
    from .scrub import scrub

    def scrubbed(t: str) -> dict[str, Any]:
        result = scrub(t)
        return {"text": result.text, "removed": [r.model_dump() for r in result.removed]}

    if jsonl:
        _text_jsonl(scrubbed)
        return
    typer.echo(scrub(read_input(text)).text)


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, max=32, help="Server processes (each holds its own reader).")
    ] = 1,
) -> None:
    """Start the web app (assess, handout, combinations, codes, JSON API); prints its address."""
    from .web import request_timeout, serve

    try:
        request_timeout()  # a mistyped limit is a one-line message, not a traceback per worker
    except ValueError as err:
        raise fail(str(err)) from err
    try:
        serve(host, port, workers)
    except OSError as err:
        raise fail(f"cannot listen on {host}:{port}: {err.strerror or err}") from err


@app.command("demo")
def demo_command() -> None:
    """Assess the seed's Jessica case and show the result: a first look at riskset."""
    from . import render

    kb = load_knowledge()
    jessica = next(c for c in kb.cases if c.id == "jessica")
    typer.echo(f"The seed's case study, Jessica:\n\n{render._wrap(jessica.text, '  ')}\n")
    typer.echo(render.summary(assess(jessica.text)))
    typer.echo(
        'Try your own: riskset assess "...", or answer the eight questions with riskset ask.'
    )


def main() -> None:
    try:
        app()
    except KnowledgeError as err:
        typer.echo(f"riskset: the knowledge base is broken: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    finally:
        # The process ends here. Frozen, the pipeline and the knowledge base are left out of
        # the interpreter's collections at exit, which otherwise walk them all and add a
        # seventh to a one-narrative `riskset assess`.
        gc.freeze()
