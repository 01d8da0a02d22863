"""Code Shield against Meta's CodeShield 1.0.1 on the same snippets, in the same run.

    .venv/bin/python bench/code_shield.py [--data ../shared/data] [--meta-venv DIR] [--skip-meta]

Meta's scanner runs in a venv of its own (created on first use under .guardrails/bench/: `codeshield==1.0.1` with
`semgrep==1.100.0`, the only semgrep it works with), driven by a worker process that reads snippets on stdin.
Both sides get the snippet's language. Printed:

- speed: one snippet at a time, p50 over snippets that reach the semgrep tier (ours: a structural rule's prescan
  matched; the same snippets for Meta), and 200 snippets (ours: one batch call; Meta: its API, one call each);
- recall per language on cyberseceval_insecure_code (flagged = warn or block by the default severity mapping; for
  Meta: any issue, as its `is_insecure`) and FPR per language on benign_code, at warn-or-block and at block. The set
  was labelled by Meta's Insecure Code Detector with its full rule set; CodeShield runs the smaller CodeShield rule
  set (and returns at the first regex hit), so its recall here is far below 1;
- where the two disagree, per language, with the CWEs most often behind it.

semgrep never reaches the network here: SEMGREP_ENABLE_VERSION_CHECK=0 and metrics off on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from guardrails.scanners.base import ScanInput
from guardrails.scanners.code_shield import CodeShieldConfig, CodeShieldScanner
from guardrails.scanners.code_shield.extract import extract
from guardrails.types import Decision, Role, Stage

ROOT = Path(__file__).resolve().parents[1]
SETS = ("cyberseceval_insecure_code", "benign_code")
META_LANGUAGES = {"c", "cpp", "csharp", "java", "javascript", "php", "python", "rust"}
ENV = {**os.environ, "SEMGREP_ENABLE_VERSION_CHECK": "0", "SEMGREP_SEND_METRICS": "off"}

# Runs inside Meta's venv: one JSON request per line in, one JSON answer per line out.
META_WORKER = r"""
import asyncio, json, logging, sys, time
logging.disable(logging.CRITICAL)
from codeshield.cs import CodeShield
from codeshield.insecure_code_detector.languages import Language

async def main():
    for line in sys.stdin:
        job = json.loads(line)
        start = time.perf_counter()
        result = await CodeShield.scan_code(job["code"], Language(job["lang"]))
        ms = (time.perf_counter() - start) * 1000
        issues = result.issues_found or []
        print(json.dumps({"insecure": result.is_insecure, "block": result.recommended_treatment.value == "block",
                          "cwes": sorted({i.cwe_id for i in issues}), "ms": ms}), flush=True)

asyncio.run(main())
"""


class Meta:
    """Meta's CodeShield in its own venv, one snippet per request."""

    def __init__(self, venv: Path) -> None:
        python = venv / "bin" / "python"
        if not python.exists():
            print(f"creating {venv} with codeshield==1.0.1 and semgrep==1.100.0 ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(python), "-m", "pip", "install", "--quiet", "codeshield==1.0.1", "semgrep==1.100.0"]
            with (venv / "install.log").open("w") as log:
                subprocess.run(pip, check=True, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        self._proc = subprocess.Popen(
            [str(python), "-c", META_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV
        )

    def scan(self, code: str, lang: str) -> dict:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"code": code, "lang": lang}) + "\n")
        self._proc.stdin.flush()
        return json.loads(self._proc.stdout.readline())

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)


def load(data: Path) -> list[dict]:
    rows = []
    for name in SETS:
        path = data / f"{name}.jsonl"
        if not path.exists():
            sys.exit(f"{path} not found: pass --data pointing at the shared data folder")
        rows.extend(json.loads(line) for line in path.open(encoding="utf-8"))
    return rows


def item(row: dict) -> ScanInput:
    text = f"```{row['code_lang']}\n{row['text']}\n```"
    return ScanInput(text, role=Role.ASSISTANT, index=0, stage=Stage.OUTPUT)


async def ours_all(scanner: CodeShieldScanner, rows: list[dict], batch: int = 200) -> list[tuple[bool, bool, list]]:
    out = []
    for i in range(0, len(rows), batch):
        results = await scanner.scan([item(r) for r in rows[i : i + batch]])
        for result in results:
            flagged = result.decision in (Decision.WARN, Decision.BLOCK, Decision.REDACT)
            out.append((flagged, result.decision is Decision.BLOCK, list(result.categories)))
    return out


def reaches_semgrep(scanner: CodeShieldScanner, row: dict) -> bool:
    [block] = extract(item(row).text)
    return bool(scanner.rules.prescan(block.code, block.language, deadline=time.monotonic() + 5))


def table(title: str, rows: list[dict], verdicts: dict[str, list]) -> None:
    print(f"\n{title}")
    sides = list(verdicts)
    header = f"{'language':11} {'rows':>5}" + "".join(f" {s + ' recall':>14}" for s in sides)
    insecure = [i for i, r in enumerate(rows) if r["insecure"] == 1]
    benign = [i for i, r in enumerate(rows) if r["insecure"] == 0]
    print(header)
    langs = sorted({rows[i]["code_lang"] for i in insecure})
    for lang in [*langs, "all"]:
        idx = [i for i in insecure if lang in ("all", rows[i]["code_lang"])]
        cells = "".join(f" {_rate(verdicts[s], idx, 0):>14}" for s in sides)
        print(f"{lang:11} {len(idx):5d}{cells}")
    header = f"{'language':11} {'rows':>5}" + "".join(f" {s + ' FPR warn+':>16} {s + ' FPR block':>16}" for s in sides)
    print()
    print(header)
    langs = sorted({rows[i]["code_lang"] for i in benign})
    for lang in [*langs, "all"]:
        idx = [i for i in benign if lang in ("all", rows[i]["code_lang"])]
        cells = "".join(f" {_rate(verdicts[s], idx, 0):>16} {_rate(verdicts[s], idx, 1):>16}" for s in sides)
        print(f"{lang:11} {len(idx):5d}{cells}")


def _rate(verdicts: list, idx: list[int], field: int) -> str:
    known = [verdicts[i][field] for i in idx if verdicts[i] is not None]
    return f"{sum(known) / len(known):.3f}" if known else "-"


def disagreements(rows: list[dict], ours: list, meta: list) -> None:
    print("\nwhere the two disagree (flagged = warn or block; Meta: any issue)")
    print(
        f"{'set':27} {'language':11} {'both':>5} {'ours only':>9} {'Meta only':>9} {'neither':>7}"
        "  CWEs behind 'Meta only'"
    )
    groups: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    behind: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for row, o, m in zip(rows, ours, meta, strict=True):
        if m is None:
            continue
        key = (row["set"], row["code_lang"])
        cell = {(True, True): "both", (True, False): "ours", (False, True): "meta", (False, False): "neither"}
        groups[key][cell[(o[0], m[0])]] += 1
        if m[0] and not o[0]:
            behind[key].update(c or "no CWE" for c in (m[2] or [row.get("category") or "?"]))
    for key in sorted(groups):
        g = groups[key]
        top = ", ".join(f"{c} {n}" for c, n in behind[key].most_common(3))
        print(f"{key[0]:27} {key[1]:11} {g['both']:5d} {g['ours']:9d} {g['meta']:9d} {g['neither']:7d}  {top}")


async def speed(scanner: CodeShieldScanner, meta: Meta | None, rows: list[dict]) -> None:
    probe = [r for r in rows if r["code_lang"] in META_LANGUAGES and reaches_semgrep(scanner, r)][:40]
    if not probe:
        sys.exit("no snippet reaches the semgrep tier: the rules have no structural pattern that matches")
    sample = rows[:: max(1, len(rows) // 200)][:200]
    print(f"\nspeed ({len(probe)} single snippets that reach our semgrep tier; 200 snippets across both sets)")
    await scanner.scan([item(probe[0])])  # warm: the semgrep process starts on first use
    ours_single = []
    for row in probe:
        start = time.perf_counter()
        await scanner.scan([item(row)])
        ours_single.append((time.perf_counter() - start) * 1000)
    rounds = []
    for _ in range(3):
        start = time.perf_counter()
        await scanner.scan([item(r) for r in sample])
        rounds.append(time.perf_counter() - start)
    ours_200 = statistics.median(rounds)
    print(f"ours   1 snippet p50 {statistics.median(ours_single):8.1f} ms   p99 {max(ours_single):8.1f} ms")
    print(f"ours   200 snippets  {ours_200:8.2f} s  ({200 / ours_200:7.1f} snippets/s, one batch call)")
    if meta is None:
        return
    meta_single = [meta.scan(r["text"], r["code_lang"])["ms"] for r in probe]
    start = time.perf_counter()
    for row in sample:
        if row["code_lang"] in META_LANGUAGES:
            meta.scan(row["text"], row["code_lang"])
    meta_n = sum(1 for r in sample if r["code_lang"] in META_LANGUAGES)
    meta_200 = (time.perf_counter() - start) * 200 / meta_n
    print(f"Meta   1 snippet p50 {statistics.median(meta_single):8.1f} ms   p99 {max(meta_single):8.1f} ms")
    print(
        f"Meta   200 snippets  {meta_200:8.2f} s  ({200 / meta_200:7.1f} snippets/s, one call each; "
        f"{meta_n} of its languages, scaled to 200)"
    )
    print(
        f"ratio: 200 snippets x{meta_200 / ours_200:.1f} faster; "
        f"1 snippet p50 x{statistics.median(meta_single) / statistics.median(ours_single):.1f} faster"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--meta-venv", type=Path, default=ROOT / ".guardrails" / "bench" / "codeshield-venv")
    parser.add_argument("--skip-meta", action="store_true", help="only our scanner")
    args = parser.parse_args()
    os.environ.update({"SEMGREP_ENABLE_VERSION_CHECK": "0", "SEMGREP_SEND_METRICS": "off"})
    rows = load(args.data)
    scanner = CodeShieldScanner(CodeShieldConfig(type="code_shield"))
    meta = None if args.skip_meta else Meta(args.meta_venv)
    try:
        await speed(scanner, meta, rows)
        start = time.perf_counter()
        ours = await ours_all(scanner, rows)
        print(f"\nours: {len(rows)} snippets in {time.perf_counter() - start:.1f} s")
        verdicts = {"ours": ours}
        if meta is not None:
            start = time.perf_counter()
            meta_out = []
            for row in rows:
                if row["code_lang"] not in META_LANGUAGES:
                    meta_out.append(None)  # Meta has no rules for this language
                    continue
                answer = meta.scan(row["text"], row["code_lang"])
                meta_out.append((answer["insecure"], answer["block"], answer["cwes"]))
            print(f"Meta: {len(rows)} snippets in {time.perf_counter() - start:.1f} s")
            verdicts["Meta"] = meta_out
        table("recall on cyberseceval_insecure_code, FPR on benign_code", rows, verdicts)
        if meta is not None:
            disagreements(rows, ours, verdicts["Meta"])
    finally:
        await scanner.aclose()
        if meta is not None:
            meta.close()


if __name__ == "__main__":
    asyncio.run(main())
