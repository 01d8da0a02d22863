"""Rule coverage of Code Shield's regex tier: recall per language and CWE on cyberseceval_insecure_code, FPR on
benign_code. A working tool for rule writers (fast, no semgrep); bench/code_shield.py measures the whole scanner.

    .venv/bin/python bench/code_shield_coverage.py [--data ../shared/data] [--lang python] [--misses 10]

A row counts as flagged when a rule of severity warning or error fires (what the default policy warns on or
blocks), and as blocked when an error rule fires. ``--misses N`` prints the ids of N missed insecure rows and of N
flagged benign rows per language, with the rules that fired, for reading the snippets.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

from guardrails.scanners.code_shield.rules import load_rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--lang", default=None)
    parser.add_argument("--misses", type=int, default=0)
    args = parser.parse_args()
    for name in ("cyberseceval_insecure_code.jsonl", "benign_code.jsonl"):
        if not (args.data / name).exists():
            sys.exit(f"{args.data / name} not found: pass --data pointing at the shared data folder")
    rules = load_rules()
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    cwe_stats: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    misses: dict[str, list[str]] = collections.defaultdict(list)
    false_alarms: dict[str, list[str]] = collections.defaultdict(list)
    fired_benign: collections.Counter = collections.Counter()
    start = time.perf_counter()
    rows = 0
    for name in ("cyberseceval_insecure_code.jsonl", "benign_code.jsonl"):
        for line in (args.data / name).open(encoding="utf-8"):
            row = json.loads(line)
            lang = row["code_lang"]
            if args.lang and lang != args.lang:
                continue
            rows += 1
            matches = rules.regex_matches(row["text"], lang, deadline=time.monotonic() + 10, semgrep_rules=True)
            severities = {m.rule.severity for m in matches}
            flagged = bool(severities & {"error", "warning"})
            blocked = "error" in severities
            fired = sorted({m.rule.id for m in matches})
            s = stats[lang]
            if row["insecure"] == 1:
                s["pos"] += 1
                s["tp"] += flagged
                c = cwe_stats[(lang, row["category"])]
                c["pos"] += 1
                c["tp"] += flagged
                if not flagged and len(misses[lang]) < args.misses:
                    misses[lang].append(f"{row['id']} ({row['category']}) fired={fired}")
            else:
                s["neg"] += 1
                s["fp"] += flagged
                s["fp_block"] += blocked
                for rule_id in {m.rule.id for m in matches if m.rule.severity != "advice"}:
                    fired_benign[rule_id] += 1
                if flagged and len(false_alarms[lang]) < args.misses:
                    false_alarms[lang].append(f"{row['id']} fired={fired}")
    elapsed = time.perf_counter() - start
    print(f"{rows} rows in {elapsed:.1f} s")
    print(f"{'language':12} {'insecure':>8} {'recall':>7} {'benign':>7} {'FPR warn+':>9} {'FPR block':>9}")
    total = collections.Counter()
    for lang in sorted(stats):
        s = stats[lang]
        total.update(s)
        print(
            f"{lang:12} {s['pos']:8d} {_ratio(s['tp'], s['pos'])} {s['neg']:7d} {_ratio(s['fp'], s['neg']):>9} "
            f"{_ratio(s['fp_block'], s['neg']):>9}"
        )
    s = total
    print(
        f"{'all':12} {s['pos']:8d} {_ratio(s['tp'], s['pos'])} {s['neg']:7d} {_ratio(s['fp'], s['neg']):>9} "
        f"{_ratio(s['fp_block'], s['neg']):>9}"
    )
    print("\nrecall per (language, CWE), weakest first:")
    for (lang, cwe), c in sorted(cwe_stats.items(), key=lambda kv: kv[1]["tp"] / kv[1]["pos"])[:40]:
        print(f"  {lang:11} {cwe:9} {c['tp']:4d}/{c['pos']:<4d} {_ratio(c['tp'], c['pos'])}")
    if fired_benign:
        print("\nrules firing on benign code (warn or block):")
        for rule_id, n in fired_benign.most_common(25):
            print(f"  {rule_id:40} {n}")
    for title, table in (("missed insecure rows", misses), ("flagged benign rows", false_alarms)):
        for lang, items in sorted(table.items()):
            print(f"\n{title}, {lang}:")
            for item in items:
                print(f"  {item}")


def _ratio(a: int, b: int) -> str:
    return f"{a / b:7.3f}" if b else "      -"


if __name__ == "__main__":
    main()
