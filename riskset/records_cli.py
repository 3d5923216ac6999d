"""The records commands, mounted in the main CLI:

    app.add_typer(users_app, name="users")
    app.add_typer(records_app, name="records")
    app.command("report")(report_command)
    app.command("backup")(backup_command)

Every command opens ``--database`` (default: RISKSET_DATABASE_URL, else the SQLite file in
the user's data folder). Whoever runs them holds the database itself, so they act as the
terminal's operator, audited as ``cli:<login name>``. Errors are one line and exit 1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .records import (
    Count,
    EncounterInfo,
    ProgramSettings,
    Records,
    RecordsError,
    Report,
    UserInfo,
    cli_actor,
)

__all__ = ["backup_command", "records_app", "report_command", "users_app"]

users_app = typer.Typer(
    help="Accounts for the encounter records: workers, supervisors and admins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
records_app = typer.Typer(
    help="The anonymous encounter records: list, purge, sites and settings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="Database URL. Default: $RISKSET_DATABASE_URL, else riskset.sqlite3 in your "
        "data folder.",
        show_default=False,
    ),
]
DEFAULT_WEEKS = 4
BAR_WIDTH = 30


def _fail(message: str) -> typer.Exit:
    """One line on stderr and exit 1: never a traceback for something a person can fix."""
    typer.echo(f"riskset: {message}", err=True)
    return typer.Exit(1)


@contextmanager
def _records(database: str | None) -> Iterator[Records]:
    try:
        with Records(database) as records:
            yield records
    except RecordsError as err:
        raise _fail(str(err)) from None


def _day(value: str | None, option: str, default: date) -> date:
    if value is None:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _fail(f"{option}: give a day as YYYY-MM-DD, not {value!r}") from None


def _date_range(date_from: str | None, date_to: str | None) -> tuple[date, date]:
    end = _day(date_to, "--to", date.today())
    start = _day(date_from, "--from", end - timedelta(weeks=DEFAULT_WEEKS) + timedelta(days=1))
    if start > end:
        raise _fail("--from is after --to")
    return start, end


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise _fail("no password given")
    return password


# --------------------------------------------------------------------------------------
# riskset users ...
# --------------------------------------------------------------------------------------


class RoleChoice(StrEnum):
    """The roles of records.ROLES, as an enum so --help lists them and Typer checks them."""

    worker = "worker"
    supervisor = "supervisor"
    admin = "admin"


RoleOption = Annotated[RoleChoice, typer.Option("--role", help="What the account may do.")]
SiteOption = Annotated[
    list[str] | None,
    typer.Option(
        "--site", help="A site the account works at; repeat for more. New sites are created."
    ),
]
PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
]


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name (letters, digits, . _ -).")],
    role: RoleOption = RoleChoice.worker,
    site: SiteOption = None,
    password_stdin: PasswordStdin = False,
    database: Database = None,
) -> None:
    """Create an account; the password is asked twice, or read from stdin."""
    password = _read_password(password_stdin)
    with _records(database) as records:
        user = records.add_user(username, password, role.value, site or [], actor=cli_actor())
    typer.echo(f"added {_describe_user(user)}")


@users_app.command("list")
def users_list(database: Database = None) -> None:
    """List the accounts, their roles and sites."""
    with _records(database) as records:
        users = records.users()
    if not users:
        typer.echo("no accounts yet: create the first with  riskset users add NAME --role admin")
    for user in users:
        typer.echo(_describe_user(user))


@users_app.command("disable")
def users_disable(username: str, database: Database = None) -> None:
    """Stop an account signing in (its records stay)."""
    with _records(database) as records:
        records.set_active(username, False, actor=cli_actor())
    typer.echo(f"disabled {username}")


@users_app.command("enable")
def users_enable(username: str, database: Database = None) -> None:
    """Let a disabled account sign in again."""
    with _records(database) as records:
        records.set_active(username, True, actor=cli_actor())
    typer.echo(f"enabled {username}")


@users_app.command("password")
def users_password(
    username: str, password_stdin: PasswordStdin = False, database: Database = None
) -> None:
    """Set a new password (and sign the account out everywhere)."""
    password = _read_password(password_stdin)
    with _records(database) as records:
        records.set_password(username, password, actor=cli_actor())
    typer.echo(f"password changed for {username}")


def _describe_user(user: UserInfo) -> str:
    sites = ", ".join(user.sites) or "no site"
    state = "" if user.active else "  (disabled)"
    return f"{user.username:<24} {user.role:<10} {sites}{state}"


# --------------------------------------------------------------------------------------
# riskset records ...
# --------------------------------------------------------------------------------------

FromOption = Annotated[
    str | None, typer.Option("--from", help="First day, YYYY-MM-DD (default: 4 weeks ago).")
]
ToOption = Annotated[
    str | None, typer.Option("--to", help="Last day, YYYY-MM-DD (default: today).")
]
ReportSite = Annotated[str | None, typer.Option("--site", help="One site (default: all).")]


@records_app.command("list")
def records_list(
    date_from: FromOption = None,
    date_to: ToOption = None,
    site: ReportSite = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 500,
    database: Database = None,
) -> None:
    """List encounters, oldest first (viewing them is written to the audit log)."""
    start, end = _date_range(date_from, date_to)
    with _records(database) as records:
        rows = records.encounters(
            viewer=cli_actor(), date_from=start, date_to=end, site=site, limit=limit
        )
    if not rows:
        typer.echo(f"no encounters from {start} to {end}")
    for row in rows:
        typer.echo(_describe_encounter(row))


def _describe_encounter(row: EncounterInfo) -> str:
    substances = ",".join(s.removeprefix("substance:") for s in row.substances) or "-"
    supplies = ",".join(f"{kind}={n}" for kind, n in sorted(row.supplies.items())) or "-"
    referrals = ",".join(row.referrals) or "-"
    flag = "  follow-up" if row.follow_up else ""
    return (
        f"{row.day}  {row.site:<16} {row.risk_level or '-':<10} substances={substances}  "
        f"supplies={supplies}  referrals={referrals}{flag}"
    )


@records_app.command("purge")
def records_purge(
    older_than: Annotated[
        int | None,
        typer.Option(
            "--older-than",
            min=0,
            metavar="DAYS",
            help="Delete encounters older than this many days (default: the retention setting).",
        ),
    ] = None,
    database: Database = None,
) -> None:
    """Delete old encounters for good (the program's retention policy)."""
    with _records(database) as records:
        removed = records.purge(older_than, actor=cli_actor())
    typer.echo(f"removed {removed} encounter{'s' if removed != 1 else ''}")


@records_app.command("sites")
def records_sites(
    add: Annotated[list[str] | None, typer.Option("--add", help="Create a site.")] = None,
    database: Database = None,
) -> None:
    """List the sites, or add some."""
    with _records(database) as records:
        for name in add or []:
            records.add_site(name)
        names = records.sites()
    typer.echo("\n".join(names) if names else "no sites yet")


@records_app.command("settings")
def records_settings(
    retention_days: Annotated[
        int | None, typer.Option("--retention-days", min=1, help="Keep encounters this long.")
    ] = None,
    no_retention: Annotated[
        bool, typer.Option("--no-retention", help="Keep encounters until purged by hand.")
    ] = False,
    keep_narratives: Annotated[
        bool | None,
        typer.Option(
            "--keep-narratives/--drop-narratives",
            help="Keep scrubbed narratives with encounters. Dropping deletes those kept so far.",
        ),
    ] = None,
    database: Database = None,
) -> None:
    """Show the program settings, or change them."""
    with _records(database) as records:
        now = records.settings()
        if retention_days is not None or no_retention or keep_narratives is not None:
            days = None if no_retention else (retention_days or now.retention_days)
            keep = now.keep_narratives if keep_narratives is None else keep_narratives
            now = records.update_settings(ProgramSettings(days, keep), actor=cli_actor())
    days_text = f"{now.retention_days} days" if now.retention_days else "until purged by hand"
    typer.echo(f"retention: {days_text}")
    typer.echo(f"narratives: {'kept after scrubbing' if now.keep_narratives else 'not kept'}")


# --------------------------------------------------------------------------------------
# riskset report / riskset backup
# --------------------------------------------------------------------------------------


def report_command(
    date_from: FromOption = None,
    date_to: ToOption = None,
    site: ReportSite = None,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Write one CSV row per encounter instead.")
    ] = False,
    database: Database = None,
) -> None:
    """Encounters per week, by risk level, substance, strategy, supplies and referrals."""
    start, end = _date_range(date_from, date_to)
    with _records(database) as records:
        if as_csv:
            records.export_csv(
                sys.stdout, viewer=cli_actor(), date_from=start, date_to=end, site=site
            )
            return
        report = records.report(viewer=cli_actor(), date_from=start, date_to=end, site=site)
    typer.echo(render_report(report))


def render_report(report: Report) -> str:
    """The report as plain text with bars, readable at a glance in a terminal."""
    sites = ", ".join(report.sites) or "no sites"
    lines = [
        f"Encounters at {sites}, {report.date_from} to {report.date_to}",
        f"{report.total} encounters, {report.follow_ups} flagged for follow-up",
    ]
    for title, rows in report.sections():
        lines += ["", title]
        lines += _table(rows, weekly=rows is report.per_week) or ["  (none)"]
    return "\n".join(lines)


def _table(rows: list[Count], *, weekly: bool) -> list[str]:
    top = max((row.count for row in rows), default=0) or 1
    labels = [
        row.key + "  " + row.label.removeprefix("week of ") if weekly else row.label for row in rows
    ]
    width = max((len(label) for label in labels), default=0)
    return [
        f"  {label:<{width}}  {row.count:>6}  {'█' * round(BAR_WIDTH * row.count / top)}"
        for label, row in zip(labels, rows, strict=True)
    ]


def backup_command(
    path: Annotated[Path, typer.Argument(help="The new backup file (must not exist yet).")],
    database: Database = None,
) -> None:
    """Copy the SQLite records database, safely while it is in use (PostgreSQL: pg_dump)."""
    with _records(database) as records:
        target = records.backup(path, actor=cli_actor())
        count = records.count()
    typer.echo(f"backed up {count} encounters to {target}")
