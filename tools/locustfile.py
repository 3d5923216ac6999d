"""The clients `make load` runs (tools/load.py starts locust on this file; it is not run alone).

Each client is an outreach worker's phone: mostly narratives to assess (through the JSON API and
through the Assess page's form), some reading of the public pages, and a monitor's /healthz.
Every answer is checked for what a person would see, not only its status, and every request's
exact time is written to $RISKSET_LOAD_TIMINGS (one JSON line each) for tools/load.py to
summarise: locust's own percentiles come from times rounded to 10 ms above 100 ms and to 100 ms
above 1 s, too coarse to compare a health check with an assessment.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any, TextIO

from locust import FastHttpUser, between, events, task
from locust.contrib.fasthttp import ResponseContextManager

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (  # the names load.py reports on, and how it talks to this file
    ASSESS_API,
    ASSESS_PAGE,
    HEALTHZ,
    PAGES,
    READ_API,
    ROOT,
    THINK_ENV,
    TIMINGS_ENV,
)

NARRATIVES = ROOT / "tests" / "narratives" / "labelled.jsonl"

PAGE_PATHS = [
    "/",
    "/codes",
    "/substances",
    "/substances/heroin",
    "/substances/fentanyl",
    "/substances/alcohol",
    "/combinations?names=heroin&names=xanax",
    "/combinations?names=fentanyl%2C+alcohol",
    "/combinations?names=cocaine&names=alcohol&names=ketamine",
    "/training",
    "/records/login",
]
READ_PATHS = [
    "/api/v1/questions",
    "/api/v1/codes",
    "/api/v1/substances/methamphetamine",
]


def narratives() -> list[str]:
    lines = NARRATIVES.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


TEXTS = narratives()


def think_time() -> tuple[float, float]:
    """Seconds a client waits between requests, as "LOW,HIGH" (0,0 is a client that never rests)."""
    low, high = (float(x) for x in os.environ.get(THINK_ENV, "0,0").split(","))
    return low, high


class Worker(FastHttpUser):
    wait_time = between(*think_time())

    @task(6)
    def assess_api(self) -> None:
        body = {"text": random.choice(TEXTS)}  # nosec B311 # picks test traffic, not secrets
        with self.client.post(
            "/api/v1/assess", json=body, name=ASSESS_API, catch_response=True
        ) as r:
            expect(r, r.status_code == 200 and "overdose_risk" in (r.text or ""))

    @task(1)
    def assess_page(self) -> None:
        form = {"text": random.choice(TEXTS)}  # nosec B311 # picks test traffic, not secrets
        with self.client.post("/assess", data=form, name=ASSESS_PAGE, catch_response=True) as r:
            expect(r, r.status_code == 200 and "What riskset found" in (r.text or ""))

    @task(3)
    def read_page(self) -> None:
        path = random.choice(PAGE_PATHS)  # nosec B311 # picks test traffic, not secrets
        with self.client.get(path, name=PAGES, catch_response=True) as r:
            expect(r, r.status_code == 200 and "</html>" in (r.text or ""), path)

    @task(1)
    def read_api(self) -> None:
        path = random.choice(READ_PATHS)  # nosec B311 # picks test traffic, not secrets
        with self.client.get(path, name=READ_API, catch_response=True) as r:
            expect(r, r.status_code == 200 and (r.text or "")[:1] in "[{", path)

    @task(2)
    def healthz(self) -> None:
        with self.client.get("/healthz", name=HEALTHZ, catch_response=True) as r:
            expect(r, r.status_code == 200 and '"ok"' in (r.text or ""))


def expect(r: ResponseContextManager, good: bool, path: str = "") -> None:
    """A failure names what came back, so the report says what went wrong, not only how often."""
    # locust's own methods carry no type hints.
    if good:
        r.success()  # type: ignore[no-untyped-call]
    else:
        where = f" {path}" if path else ""
        what = f"HTTP {r.status_code}{where}: {(r.text or '')[:120]!r}"
        r.failure(what)  # type: ignore[no-untyped-call]


class _Timings:
    """Opened lazily, so importing this file (e.g. for a lint) writes nothing."""

    out: TextIO | None = None


def record(
    name: str, response_time: float, exception: BaseException | None, start_time: float, **_: Any
) -> None:
    path = os.environ.get(TIMINGS_ENV)
    if not path:
        return
    if _Timings.out is None:
        _Timings.out = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed on quitting)
    error = None if exception is None else str(exception)[:200]
    _Timings.out.write(json.dumps([name, start_time, response_time, error]) + "\n")


def close_timings(**_: Any) -> None:
    if _Timings.out is not None:
        _Timings.out.close()


events.request.add_listener(record)  # type: ignore[no-untyped-call]
events.quitting.add_listener(close_timings)  # type: ignore[no-untyped-call]
