"""`make bench`: reading speed, cold start, peak memory, and accuracy on every labelled set.

Prints figures; asserts nothing (speed depends on the machine; tests check behaviour).
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
import subprocess  # nosec B404 # runs only this project's own riskset command
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RISKSET = [str(ROOT / ".venv" / "bin" / "riskset")]
SETS = [
    ROOT.parent / "shared" / "data" / "dev-narratives.jsonl",
    ROOT / "tests" / "narratives" / "labelled.jsonl",
    ROOT / "tests" / "narratives" / "heldout.jsonl",
    ROOT / "tests" / "narratives" / "fresh.jsonl",
    ROOT / "tests" / "narratives" / "fresh2.jsonl",
    ROOT / "tests" / "narratives" / "fresh3.jsonl",
    ROOT / "tests" / "narratives" / "fresh4.jsonl",
    ROOT / "tests" / "narratives" / "fresh5.jsonl",
    ROOT / "tests" / "narratives" / "fresh6.jsonl",
    ROOT / "tests" / "narratives" / "fresh7.jsonl",
    ROOT / "tests" / "narratives" / "fresh8.jsonl",
    ROOT / "tests" / "narratives" / "fresh9.jsonl",
    ROOT / "tests" / "narratives" / "fresh10.jsonl",
    ROOT / "tests" / "narratives" / "fresh11.jsonl",
    ROOT / "tests" / "narratives" / "fresh12.jsonl",
    ROOT / "tests" / "narratives" / "fresh13.jsonl",
    ROOT / "tests" / "narratives" / "fresh14.jsonl",
    ROOT / "tests" / "narratives" / "blind.jsonl",
]


def rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def batch(n: int) -> str:
    texts = [r["text"] for p in SETS[1:] if p.exists() for r in rows(p)]
    lines = [json.dumps({"id": i, "text": texts[i % len(texts)]}) for i in range(n)]
    return "\n".join(lines) + "\n"


def in_process_rates(stdin: str) -> tuple[float, float]:
    """Narratives a second in this process with the pipeline built: reading only (findings,
    as ``riskset.read``), and the whole assessment written as JSON lines (as ``assess --jsonl``).
    The best of three runs, so another program's burst of work counts less."""
    from riskset.cli import assess_lines
    from riskset.reading import load, read_many

    lines = stdin.splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    load()
    assess_lines(lines[:20])  # build the pipeline first: this measures steady reading

    def rate(work: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            work()
            best = min(best, time.perf_counter() - start)
        return len(lines) / best

    return rate(lambda: list(read_many(texts))), rate(lambda: assess_lines(lines))


def cli_rate(stdin: str, workers: int) -> tuple[float, float]:
    """Narratives a second through `riskset assess --jsonl`, start-up included, and peak MB."""
    start = time.perf_counter()
    proc = subprocess.run(  # nosec B603 # the venv's riskset, fixed arguments, no shell
        [*RISKSET, "assess", "--jsonl", "--workers", str(workers)],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    if len(proc.stdout.splitlines()) != len(stdin.splitlines()):
        # Not an assert: python -O would drop it and print a rate over lines never answered.
        raise SystemExit("riskset assess --jsonl did not answer every line it was sent")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return len(stdin.splitlines()) / seconds, peak_mb


def cold_start(runs: int = 5, snapshot: bool = True) -> float:
    """Median seconds of a one-narrative `riskset assess TEXT` in a new process."""
    env = dict(os.environ)
    if not snapshot:
        env["RISKSET_CACHE_DIR"] = "off"
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(  # nosec B603 # the venv's riskset, fixed arguments, no shell
            [*RISKSET, "assess", "just got out of jail, using tonight, no narcan"],
            capture_output=True,
            check=True,
            env=env,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_spacy_seconds(runs: int = 5) -> float:
    """What importing spaCy alone costs a new process: the floor under any cold start."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import spacy"], check=True)  # nosec B603
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def accuracy() -> None:
    scorer_path = ROOT.parent / "shared" / "tools" / "score_narratives.py"
    if not scorer_path.exists():
        print("accuracy: the shared scorer is not beside the project; skipped")
        return
    spec = importlib.util.spec_from_file_location("score_narratives", scorer_path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the shared scorer at {scorer_path}")
    scorer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scorer)
    from riskset.cli import assess_lines

    print(f"{'set':<24}{'n':>5}{'P':>7}{'R':>7}{'F1':>7}{'neg':>5}{'risk':>7}{'plan':>7}{'not':>5}")
    for path in SETS:
        if not path.exists():
            continue
        gold = rows(path)
        out = assess_lines([json.dumps({"id": g["id"], "text": g["text"]}) for g in gold])
        f = scorer.score(gold, [json.loads(line) for line in out])
        print(
            f"{path.name:<24}{len(gold):>5}{f['precision']:>7.3f}{f['recall']:>7.3f}"
            f"{f['f1']:>7.3f}{f['negation_errors']:>5}{f['risk_agreement']:>7.3f}"
            f"{f['plan_recall']:>7.3f}{f['must_not_violations']:>5}"
        )


def main() -> None:
    n = int(os.environ.get("BENCH_N", "3000"))
    stdin = batch(n)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} (load slows every figure)")
    reading, assessing = in_process_rates(stdin)
    print(f"in one process, pipeline built: reading {reading:,.0f} narratives/s (riskset.read)")
    print(f"in one process, pipeline built: assessing {assessing:,.0f} narratives/s (JSON lines)")
    for workers in (1, 2):
        rate, peak = cli_rate(stdin, workers)
        print(
            f"riskset assess --jsonl --workers {workers}, {n} narratives, start-up included: "
            f"{rate:,.0f} narratives/s, peak memory {peak:,.0f} MB"
        )
    cold_start(runs=1)  # the first run after a change builds the start-up snapshot
    print(f"cold start, one narrative (`riskset assess TEXT`, median of 5): {cold_start():.2f} s")
    print(f"  the same without the start-up snapshot: {cold_start(snapshot=False):.2f} s")
    print(f"  of which importing spaCy alone: {import_spacy_seconds():.2f} s")
    accuracy()


if __name__ == "__main__":
    main()
