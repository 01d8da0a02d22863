"""``guardrails eval``: how good is a policy (or one scanner) on labelled data, in numbers.

Reads JSON-lines files in the schema of ``shared/data/DATA.md`` (``id``, ``set``, ``kind``, ``text``, optional
``context``, labels ``attack`` / ``harm`` / ``insecure`` each 1, 0 or null, ``category``, ``lang``) from any path, runs
every row through the pipeline's check-only API (prompts on the input stage; responses and code on the output stage,
with ``context`` as the user turn), and reports per set and pooled over all sets, for each label present:

- ROC AUC and TPR at 1% FPR, from the stage's highest scanner score (where a set has both classes; the pooled figure
  puts every positive against every negative: attack sets against benign sets);
- recall on positives and false-positive rate on negatives at the policy's own decision (``flagged`` = anything but
  allow; ``blocked`` = block), which is what attack-only and benign-only sets can say;
- FPR per language on negatives; per-category recall and, for category codes (S1-S14, CWE ids), precision and recall
  of the categories the scanners named;
- latency p50/p99 per row and throughput.

Output: a markdown table (printed and written), a JSON file, and ROC / precision-recall plots as PNG.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrails._exceptions import GuardrailError
from guardrails.types import Decision, Result, Status

__all__ = ["Row", "Outcome", "read_rows", "score_rows", "report", "roc_auc", "tpr_at_fpr", "write_outputs"]

LABELS = ("attack", "harm", "insecure")
_CODE = re.compile(r"^(S\d{1,2}|CWE-\d+)$")


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    set: str
    kind: str
    text: str
    context: str | None
    labels: dict[str, int | None]
    category: str | None
    lang: str | None
    code_lang: str | None = None

    @property
    def response(self) -> str:
        """The text as a model would answer it: code rows in a fence tagged with their language."""
        if self.kind == "code" and self.code_lang:
            return f"```{self.code_lang}\n{self.text}\n```"
        return self.text


@dataclass(frozen=True, slots=True)
class Outcome:
    row: Row
    score: float
    decision: Decision
    categories: tuple[str, ...]
    latency_ms: float
    errors: int  # scanners that failed on this row
    tiers: tuple[str, ...] = ()  # for cascade scanners: the tier that decided

    @property
    def flagged(self) -> bool:
        return self.decision is not Decision.ALLOW

    @property
    def blocked(self) -> bool:
        return self.decision is Decision.BLOCK


def read_rows(paths: Iterable[str | Path], *, limit_per_set: int | None = None) -> Iterator[Row]:
    """Rows from JSON-lines files; a malformed line is an error naming the file and line."""
    seen: Counter[str] = Counter()
    for path in paths:
        path = Path(path)
        try:
            lines = path.open(encoding="utf-8")
        except OSError as exc:
            raise GuardrailError(f"{path}: cannot read: {exc.strerror or exc}") from None
        with lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                    text = data["text"]
                    if not isinstance(text, str):
                        raise TypeError("text is not a string")
                    labels = {name: data.get(name) for name in LABELS}
                    if any(v not in (0, 1, None) for v in labels.values()):
                        raise ValueError(f"labels must be 0, 1 or null, got {labels}")
                    row = Row(
                        str(data.get("id", f"{path.name}:{number}")),
                        str(data.get("set") or path.stem),
                        str(data.get("kind") or "prompt"),
                        text,
                        data.get("context"),
                        labels,
                        data.get("category"),
                        data.get("lang"),
                        data.get("code_lang"),
                    )
                except (ValueError, TypeError, KeyError) as exc:
                    raise GuardrailError(f"{path}:{number}: not a row of the data schema ({exc})") from None
                if limit_per_set is not None and seen[row.set] >= limit_per_set:
                    continue
                seen[row.set] += 1
                yield row


def _outcome(row: Row, result: Result, latency_ms: float) -> Outcome:
    [verdict] = result.verdicts
    scores = [r.score for r in verdict.results if r.status is Status.OK]
    categories = tuple(
        dict.fromkeys(c for r in verdict.results if r.decision is not Decision.ALLOW for c in r.categories)
    )
    errors = sum(1 for r in verdict.results if r.status in (Status.ERROR, Status.TIMEOUT))
    tiers = tuple(f.detail for r in verdict.results for f in r.findings if f.rule == "tier")
    return Outcome(row, max(scores, default=0.0), verdict.decision, categories, latency_ms, errors, tiers)


async def score_rows(pipe: Any, rows: Sequence[Row], *, concurrency: int = 8, progress: bool = False) -> list[Outcome]:
    """Run every row through ``pipe``'s check-only API, ``concurrency`` at a time (so model batching can work)."""
    out: list[Outcome | None] = [None] * len(rows)
    semaphore = asyncio.Semaphore(concurrency)
    done = 0

    async def one(i: int, row: Row) -> None:
        nonlocal done
        async with semaphore:
            start = time.perf_counter()
            if row.kind == "prompt":
                result = await pipe.ascan_input([{"role": "user", "content": row.text}])
            else:
                context = [{"role": "user", "content": row.context}] if row.context else []
                result = await pipe.ascan_output(context, row.response)
            out[i] = _outcome(row, result, (time.perf_counter() - start) * 1000)
        done += 1
        if progress and (done % 200 == 0 or done == len(rows)):
            width = 30
            filled = int(width * done / len(rows))
            sys.stderr.write(f"\r[{'=' * filled}{' ' * (width - filled)}] {done}/{len(rows)} rows")
            if done == len(rows):
                sys.stderr.write("\n")
            sys.stderr.flush()

    await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)))
    return [o for o in out if o is not None]


# -- metrics -------------------------------------------------------------------------------------------------------


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half); None without both."""
    if not positives or not negatives:
        return None
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2  # ranks are 1-based
        rank_sum += average_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def tpr_at_fpr(positives: Sequence[float], negatives: Sequence[float], fpr: float = 0.01) -> tuple[float, float] | None:
    """(TPR, threshold) at the strictest threshold whose FPR is at most ``fpr``: scores above it are flagged."""
    if not positives or not negatives:
        return None
    ranked = sorted(negatives, reverse=True)
    allowed = math.floor(fpr * len(ranked))  # negatives that may score above the threshold
    threshold = ranked[allowed] if allowed < len(ranked) else -math.inf
    return sum(1 for s in positives if s > threshold) / len(positives), threshold


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _percentile(values: Sequence[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _curves(positives: Sequence[float], negatives: Sequence[float]) -> dict[str, list[float]]:
    """ROC (fpr, tpr) and precision-recall points, one per distinct threshold (one sorted sweep)."""
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives], key=lambda x: -x[0])
    fprs, tprs, precisions, recalls = [0.0], [0.0], [], []
    tp = fp = 0
    for i, (score, label) in enumerate(ranked):
        tp += label
        fp += 1 - label
        if i + 1 < len(ranked) and ranked[i + 1][0] == score:
            continue  # one point per distinct score
        fprs.append(fp / len(negatives))
        tprs.append(tp / len(positives))
        recalls.append(tp / len(positives))
        precisions.append(tp / (tp + fp))
    return {"fpr": fprs, "tpr": tprs, "precision": precisions, "recall": recalls}


@dataclass
class _Group:
    name: str
    positives: list[Outcome] = field(default_factory=list)
    negatives: list[Outcome] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        pos = [o.score for o in self.positives]
        neg = [o.score for o in self.negatives]
        at = tpr_at_fpr(pos, neg)
        by_lang: dict[str, list[Outcome]] = defaultdict(list)
        for o in self.negatives:
            by_lang[o.row.lang or "?"].append(o)
        return {
            "rows": len(pos) + len(neg),
            "positives": len(pos),
            "negatives": len(neg),
            "roc_auc": roc_auc(pos, neg),
            "tpr_at_1pct_fpr": at[0] if at else None,
            "threshold_at_1pct_fpr": at[1] if at else None,
            "recall_flagged": _rate(sum(o.flagged for o in self.positives), len(pos)),
            "recall_blocked": _rate(sum(o.blocked for o in self.positives), len(pos)),
            "fpr_flagged": _rate(sum(o.flagged for o in self.negatives), len(neg)),
            "fpr_blocked": _rate(sum(o.blocked for o in self.negatives), len(neg)),
            "fpr_by_lang": {lang: _rate(sum(o.flagged for o in os), len(os)) for lang, os in sorted(by_lang.items())},
            "errors": sum(o.errors for o in self.positives + self.negatives),
        }


def _categories(outcomes: Sequence[Outcome]) -> dict[str, dict[str, Any]]:
    """Per true category of positives: recall at the decision; for codes, precision/recall of the named codes."""
    table: dict[str, dict[str, Any]] = {}
    by_category: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if o.row.category:
            by_category[str(o.row.category).split(":")[0]].append(o)
    for category, os in sorted(by_category.items()):
        entry: dict[str, Any] = {"rows": len(os), "recall_flagged": _rate(sum(o.flagged for o in os), len(os))}
        if _CODE.match(category):
            named = sum(1 for o in os if category in o.categories)
            predicted = sum(1 for o in outcomes if category in o.categories)
            entry["category_recall"] = _rate(named, len(os))
            entry["category_precision"] = _rate(named, predicted)
            flagged = [o for o in os if o.flagged and o.categories]
            entry["top1_accuracy_when_flagged"] = _rate(sum(o.categories[0] == category for o in flagged), len(flagged))
        table[category] = entry
    return table


def report(outcomes: Sequence[Outcome], *, seconds: float) -> dict[str, Any]:
    """Every metric, per label, per set and pooled (see the module docstring)."""
    latencies = [o.latency_ms for o in outcomes]
    out: dict[str, Any] = {
        "rows": len(outcomes),
        "seconds": round(seconds, 3),
        "throughput_rows_per_s": len(outcomes) / seconds if seconds else None,
        "latency_ms": {"p50": _percentile(latencies, 50), "p99": _percentile(latencies, 99)},
        "labels": {},
    }
    tiers = Counter(t for o in outcomes for t in o.tiers)
    if tiers:
        total = sum(tiers.values())
        out["cascade"] = {
            "first_tier": tiers["first"],
            "second_tier": tiers["then"],
            "second_tier_calls_saved": tiers["first"] / total,
        }
    for label in LABELS:
        groups: dict[str, _Group] = {}
        pooled = _Group("pooled")
        for o in outcomes:
            value = o.row.labels.get(label)
            if value is None:
                continue
            group = groups.setdefault(o.row.set, _Group(o.row.set))
            (group.positives if value else group.negatives).append(o)
            (pooled.positives if value else pooled.negatives).append(o)
        if not groups:
            continue
        out["labels"][label] = {
            "sets": {name: g.summary() for name, g in sorted(groups.items())},
            "pooled": pooled.summary(),
            "categories": _categories(pooled.positives),
            "_curves": {
                name: _curves([o.score for o in g.positives], [o.score for o in g.negatives])
                for name, g in [*sorted(groups.items()), ("pooled", pooled)]
                if g.positives and g.negatives
            },
        }
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"{data['rows']} rows in {data['seconds']:.1f} s ({_fmt(data['throughput_rows_per_s'])} rows/s), "
        f"latency p50 {_fmt(data['latency_ms']['p50'])} ms, p99 {_fmt(data['latency_ms']['p99'])} ms",
        "",
    ]
    if "cascade" in data:
        c = data["cascade"]
        lines += [
            f"cascade: {c['first_tier']} decided by the first tier, {c['second_tier']} deferred to the second "
            f"({c['second_tier_calls_saved']:.1%} of second-tier calls saved)",
            "",
        ]
    columns = [
        "rows",
        "positives",
        "negatives",
        "roc_auc",
        "tpr_at_1pct_fpr",
        "recall_flagged",
        "recall_blocked",
        "fpr_flagged",
        "fpr_blocked",
        "errors",
    ]
    for label, section in data["labels"].items():
        lines += [f"### {label}", "", "| set | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for name, summary in [*section["sets"].items(), ("**pooled**", section["pooled"])]:
            lines.append(f"| {name} | " + " | ".join(_fmt(summary[c]) for c in columns) + " |")
        langs = {k: v for k, v in section["pooled"]["fpr_by_lang"].items() if v is not None}
        if langs:
            lines += ["", "FPR by language (negatives): " + ", ".join(f"{k} {_fmt(v)}" for k, v in langs.items())]
        codes = {k: v for k, v in section["categories"].items() if "category_recall" in v}
        if codes:
            lines += [
                "",
                "| category | rows | recall (flagged) | category precision | category recall |",
                "|---|---|---|---|---|",
            ]
            for code, v in codes.items():
                lines.append(
                    f"| {code} | {v['rows']} | {_fmt(v['recall_flagged'])} | "
                    f"{_fmt(v['category_precision'])} | {_fmt(v['category_recall'])} |"
                )
        lines.append("")
    return "\n".join(lines)


def write_outputs(data: dict[str, Any], out_dir: Path) -> list[Path]:
    """report.md, report.json and, per label, ROC and precision-recall plots; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.md", out_dir / "report.json"]
    written[0].write_text(markdown(data))
    public = {
        **data,
        "labels": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in data["labels"].items()},
    }
    written[1].write_text(json.dumps(public, indent=2, sort_keys=True))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for label, section in data["labels"].items():
        curves = section["_curves"]
        if not curves:
            continue
        for kind, (x, y, xlabel, ylabel) in {
            "roc": ("fpr", "tpr", "false-positive rate", "true-positive rate"),
            "pr": ("recall", "precision", "recall", "precision"),
        }.items():
            fig, ax = plt.subplots(figsize=(6, 5))
            for name, points in curves.items():
                ax.plot(points[x], points[y], label=name, linewidth=2.5 if name == "pooled" else 1.2)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{label}: {'ROC' if kind == 'roc' else 'precision-recall'}")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
            ax.grid(alpha=0.3)
            path = out_dir / f"{label}-{kind}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
