"""Shared fixtures: the seed's Jessica case, and where the shared contract lives."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

# The start-up snapshots the tests make go in a folder of their own, not the user's cache.
os.environ["RISKSET_CACHE_DIR"] = tempfile.mkdtemp(prefix="riskset-test-cache-")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"

JESSICA = (
    "Jessica has been using heroin on and off for the past 10 years. Jessica stopped using for a "
    "few months while she was with her ex, but they recently broke up. She is feeling depressed "
    "and anxious and is looking to use again. She buys a bag and heads to the syringe exchange "
    "for some new points and heads to her encampment in a rush."
)


@pytest.fixture(scope="session")
def contract_codes() -> set[str]:
    """Every code named in the shared contract, codes.md."""
    path = SHARED / "contract" / "codes.md"
    if not path.exists():
        pytest.skip(f"the shared contract is not at {path}")
    text = path.read_text(encoding="utf-8")
    codes: set[str] = set()
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line
        cell = re.match(r"\|\s*`([a-z_:]+)`\s*\|", line)
        if not cell or cell.group(1) in {"present", "absent", "historical", "hypothetical"}:
            continue
        code = cell.group(1)
        if "Substances" in section:
            code = f"substance:{code}"
        elif "Strategies" in section:
            code = f"strategy:{code}"
        codes.add(code)
    for route in re.findall(r"^`(\w+)` \(", text, flags=re.M) + re.findall(r"\), `(\w+)` \(", text):
        codes.add(f"route:{route}")
    return codes
