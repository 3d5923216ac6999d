"""Show where riskset's reading of labelled narratives differs from the labels.

.venv/bin/python tools/diagnose.py tests/narratives/labelled.jsonl [ID ...] [--code CODE]
"""

from __future__ import annotations

import argparse
import json

import riskset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gold")
    ap.add_argument("ids", nargs="*")
    ap.add_argument("--code", help="only narratives where this code is missed or spurious")
    ap.add_argument("--risk", action="store_true", help="also show overdose-risk disagreements")
    args = ap.parse_args()
    with open(args.gold, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for g in rows:
        if args.ids and g["id"] not in args.ids:
            continue
        a = riskset.assess(g["text"])
        pred = {f.code: f for f in a.findings if f.status == "present"}
        others = {f.code: f for f in a.findings if f.status != "present"}
        gold = [set(x.split("|")) for x in g["present"]]
        optional = {c for x in g.get("optional", []) for c in x.split("|")}
        missed = ["|".join(sorted(s)) for s in gold if not s & set(pred)]
        allgold = set().union(*gold) if gold else set()
        spurious = [c for c in pred if c not in allgold and c not in optional]
        risk_bad = a.overdose_risk.level.value not in g["overdose_risk"]
        plan = {p.strategy for p in a.plan}
        lacks = [s for s in g.get("must_plan", []) if s not in plan]
        if args.code and args.code not in " ".join(missed + spurious):
            continue
        if not (missed or spurious or (args.risk and risk_bad) or args.ids):
            continue
        print(f"== {g['id']} ({g['style']})\n   {g['text']}")
        for m in missed:
            seen = [
                f"{others[c].status.value}:{others[c].text!r} cue={others[c].cue!r}"
                for c in m.split("|")
                if c in others
            ]
            print(f"   MISSED {m} {' '.join(seen)}")
        for c in spurious:
            f = pred[c]
            tag = " (NEG-ERR)" if c in g.get("absent", []) else ""
            print(f"   SPURIOUS {c}{tag}: {f.text!r}")
        if risk_bad or args.risk:
            level, score = a.overdose_risk.level.value, a.overdose_risk.score
            reasons = ", ".join(f"{r.factor}{r.weight:+d}" for r in a.overdose_risk.reasons)
            print(f"   risk {level} (score {score}) gold {g['overdose_risk']}: {reasons}")
        if lacks:
            print(f"   plan lacks {lacks}")


if __name__ == "__main__":
    main()
