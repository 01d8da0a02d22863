"""The model card ``guardrails.train`` writes next to each head: data, split, commit, metrics per set, bars, limits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guardrails.train import Run

__all__ = ["model_card", "table"]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}" if 0.999 < value < 1.0 else f"{value:.3f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _bar(name: str, value: float | None, target: str) -> list[Any]:
    bound = float(target.split()[-1])
    met = value is not None and (value >= bound if target.startswith(">=") else value <= bound)
    return [name, value, target, "yes" if met else "**no**"]


def bars(run: Run) -> list[list[Any]]:
    """[bar, measured, target, met] per bar of the brief."""
    report, pooled = run.report, run.report["pooled"]
    if run.spec.field == "attack":
        wildguard = next((s for s in report["per_set"] if s["set"] == "wildguard_benign"), {})
        return [
            _bar("TPR at 1% FPR, attack sets vs benign sets (dev, pooled, every language)", pooled["tpr_at_target"],
                 ">= 0.95"),
            _bar("the same, English attack rows only", pooled["tpr_at_target_english"], ">= 0.95"),
            _bar("FPR on wildguard_benign at the recommended threshold", wildguard.get("fpr@recommended"), "<= 0.02"),
            _bar("(ours, not the issue's) TPR at the recommended threshold, English attack rows",
                 pooled["tpr_at_recommended_english"], ">= 0.95"),
        ]  # fmt: skip
    ailuminate = {k: report[k]["per_set"].get("ailuminate_en_us", {}).get("top1")
                  for k in ("categories", "categories_at_target")}  # fmt: skip
    return [
        _bar("harm recall at 5% pooled benign FPR (dev, every language)", pooled["tpr_at_target"], ">= 0.90"),
        _bar("the same, English harmful rows only", pooled["tpr_at_target_english"], ">= 0.90"),
        _bar("(ours, not the issue's) harm recall at the recommended threshold (<= 5% FPR on every benign set), "
             "English rows",
             pooled["tpr_at_recommended_english"], ">= 0.90"),
        _bar("top-1 category accuracy, ailuminate_en_us rows flagged at the recommended threshold",
             ailuminate["categories"], ">= 0.80"),
        _bar("the same, rows flagged at the 5%-pooled-FPR threshold", ailuminate["categories_at_target"], ">= 0.80"),
    ]  # fmt: skip


def _per_set(run: Run, target: str) -> str:
    docs = "documents" in run.report["thresholds"]
    columns = [("target", f"@{target}"), ("recommended", "@rec")] + ([("documents", "@doc")] if docs else [])
    headers = ["set", "pos", "neg", "AUC vs benign", "AUC in set"]
    for _, short in columns:
        headers += [f"recall {short}", f"recall {short} (en)", f"FPR {short}"]
    rows = []
    for s in run.report["per_set"]:
        row = [s["set"], s["positives"], s["negatives"], s["auc_vs_benign"], s["auc_in_set"]]
        for key, _ in columns:
            row += [s[f"recall@{key}"], s[f"recall_en@{key}"], s[f"fpr@{key}"]]
        rows.append(row)
    return table(headers, rows)


def _languages(report: dict[str, Any], attack: bool) -> list[str]:
    keys = ("fpr_by_language", "held_out_fpr_by_language", "probe_fpr_by_language", "recall_by_language")
    langs = sorted(set().union(*(report[k] for k in keys)))

    def cell(key: str, lang: str) -> str:
        n, rate = report[key].get(lang, (0, None))
        return f"{rate:.3f} ({n})" if n else "-"

    negatives = "negative dev rows (xsafety_harm's harmful requests among them)" if attack else "benign dev rows"
    return [
        f"FPR on {negatives}; FPR on the hand-written benign prompts kept out of training: "
        "`multilingual.BENIGN_HELD_OUT` (30 per language; the recommended threshold holds them to at most 5%) and "
        "`probes.BENIGN_BY_LANGUAGE` (10 per language, used for nothing else); recall on positive dev rows. "
        "(xsafety's `sp` is counted as `es`.)",
        "",
        table(["language", "dev FPR (rows)", "held-out FPR (rows)", "probe FPR (rows)", "recall (rows)"],
              [[lang, *(cell(k, lang) for k in keys)] for lang in langs]),
    ]  # fmt: skip


def _token_like(report: dict[str, Any], target: str) -> list[str]:
    flagged = report["token_like_flagged"]
    labels = {"target": f"@{target}", "recommended": "@rec", "documents": "@doc"}
    return [
        "Share of 500 machine-made strings (`probes.token_like`: hex digests, base64, UUIDs, key-like ids, paths, "
        "URLs, numbers, identifiers; no such text is trained on) flagged at each threshold:",
        "",
        table([labels[k] for k in flagged], [list(flagged.values())]),
    ]


def _categories(report: dict[str, Any], target: str) -> list[str]:
    keys = (("categories", "@rec"), ("categories_at_target", f"@{target}"), ("categories_all_rows", "all rows"))
    headers = ["set", "rows with a code"]
    for _, short in keys:
        headers += [f"flagged {short}", f"top-1 {short}"]
    rows = []
    for name, entry in report["categories"]["per_set"].items():
        row = [name, entry["coded"]]
        for key, _ in keys:
            row += [report[key]["per_set"][name]["flagged"], report[key]["per_set"][name]["top1"]]
        rows.append(row)
    per_code = report["categories_at_target"]["ailuminate_per_code"]
    named_by = (
        "the category model's (fine-tuned encoder layers, run on the row's most unsafe window)"
        if "categories_head" in report
        else "the head's (argmax over the codes)"
    )
    out = [
        f"Top-1 S-code accuracy, {named_by}, on dev rows that carry an S-code, among the rows flagged at "
        f"the recommended threshold, at the {target}-pooled-FPR threshold, and over all of them:",
        "",
        table(headers, rows),
        "",
    ]
    if "categories_head" in report:
        head = {k: report[f"{k}_head"]["per_set"] for k, _ in keys}
        out += [
            "The head's own S-code (argmax over its codes, what the scanner would name without the category model), "
            "top-1 on the same rows:",
            "",
            table(["set", *(f"top-1 {short}" for _, short in keys)],
                  [[name, *(head[k][name]["top1"] for k, _ in keys)] for name in head["categories"]]),
            "",
        ]  # fmt: skip
    return [
        *out,
        f"ailuminate_en_us per code, rows flagged at the {target}-pooled-FPR threshold:",
        "",
        table(["code", "flagged", "top-1", "most often confused with"],
              [[code, c["flagged"], c["top1"], ", ".join(f"{k} ({v})" for k, v in c["confused_with"].items())]
               for code, c in per_code.items()]),
    ]  # fmt: skip


def _loso(run: Run, target: str) -> list[str]:
    harm = run.spec.field == "harm"
    headers = ["left out", "pos", "neg", f"recall @{target}", f"recall @{target} (en)", f"FPR @{target}",
               "recall @rec", "recall @rec (en)", "FPR @rec"] + (["top-1 @rec"] if harm else [])  # fmt: skip
    rows = [
        [s["set"], s["positives"], s["negatives"], s["recall@target"], s["recall_en@target"], s["fpr@target"],
         s["recall@recommended"], s["recall_en@recommended"], s["fpr@recommended"]] + ([s["top1"]] if harm else [])
        for s in run.report["loso"]
    ]  # fmt: skip
    return [
        "Trained without set X (its train and dev rows), thresholds set the same way on the remaining dev rows, "
        "measured on X's rows (those the full model trains on, and its dev rows). This, not the dev split, predicts "
        "traffic from sources nobody labelled.",
        "",
        table(headers, rows),
    ]


def _metrics(run: Run) -> list[str]:
    report, spec = run.report, run.spec
    target = f"{spec.fpr_target:.0%}"
    pooled, thresholds = report["pooled"], report["thresholds"]
    documents = (
        f"; documents {thresholds['documents']:.6g} (also at most {spec.hard_fpr:.0%} FPR on the clean rows of "
        f"{', '.join(spec.documents)}: for retrieved emails, tables and code)"
        if "documents" in thresholds
        else ""
    )
    out = [
        "### Pooled (dev)",
        "",
        table(
            ["positives", "negatives", "ROC AUC", f"TPR @{target} FPR", f"TPR @{target} (en)", "TPR @rec",
             "TPR @rec (en)"],
            [[pooled["positives"], pooled["negatives"], pooled["auc"], pooled["tpr_at_target"],
              pooled["tpr_at_target_english"], pooled["tpr_at_recommended"], pooled["tpr_at_recommended_english"]]],
        ),
        "",
        f"Thresholds (flag when score > threshold): at {target} pooled FPR {thresholds['at_target']:.6g}; "
        f"recommended {thresholds['recommended']:.6g}{documents}. The candidates:",
        "",
        table(["calibration on dev rows", "threshold"], sorted(thresholds["candidates"].items())),
        "",
        "### Per set (dev)",
        "",
        f"Recall on positives (all languages, and English rows where the set has others) and FPR on negatives at the "
        f"{target}-pooled-FPR threshold, the recommended one"
        + (" and the documents one" if "documents" in thresholds else "")
        + "; AUC of the set's positives against every benign dev row, and within the set where it has both classes.",
        "",
        _per_set(run, target),
        "",
        "### Per language (recommended threshold)",
        "",
        *_languages(report, spec.field == "attack"),
        "",
        "### Token-like strings",
        "",
        *_token_like(report, target),
    ]  # fmt: skip
    if "categories" in report:
        out += ["", "### Categories", "", *_categories(report, target)]
    if "loso" in report:
        out += ["", "### Leave one set out", "", *_loso(run, target)]
    out += [
        "",
        "### Near-duplicates",
        "",
        "Share of each set's dev rows whose first window lies within cosine 0.95 of a training row's: how much the "
        "dev split flatters.",
        "",
        table(["set", "dev rows with a near-duplicate in training"], list(report["near_duplicates"].items())),
        "",
        "Share of each set's positive rows (train and dev) with a near-duplicate among another set's positives: "
        "where leaving a set out still leaves its twin in training.",
        "",
        table(["set", "positives with a near-duplicate in another set"],
              list(report["cross_set_duplicates"].items())),
    ]  # fmt: skip
    return out


def _category_model(run: Run) -> list[str]:
    if run.categories is None:
        return []
    from guardrails.embedded.categories import categories_path
    from guardrails.train.category_model import BATCH, LINEAR_LR

    cfg, (model, _, first) = run.cfg, run.categories
    name = f"{run.spec.name}-categories.safetensors"
    size = categories_path(cfg.out / f"{run.spec.name}.safetensors").stat().st_size
    rows = ", ".join(f"{n} of {s}" for s, n in run.report["category_training_rows"].items())
    return [
        f"- Category model (`{name}`, {size / 2**20:.1f} MiB, `guardrails/embedded/categories.py`): the encoder "
        f"with its top {len(model.encoder.layer) - first} layers (from layer {first}) fine-tuned (weight matrices in "
        "int8 with a scale per row, the rest in float16), and a linear layer over their mean-pooled, L2-normalised "
        f"output, trained to name the S-code of the coded training rows ({rows}; classes weighed equally; AdamW lr "
        f"{cfg.category_lr:g}, linear layer {LINEAR_LR:g}, {cfg.category_epochs} epochs, batches of {BATCH}). "
        "The scanner runs it only on a text the head flagged, on its most unsafe window. It exists because the "
        "frozen features name too few codes right: see Categories, where the head's own top-1 is given too. The "
        "leave-one-set-out top-1 is the head's (the category model is not retrained per set). Rebuild it, with the "
        f"head, by `python -m guardrails.train {run.spec.name} --data ../shared/data`; `--category-layers 0` "
        "leaves it out (the head names the S-code).",
    ]


def model_card(run: Run, metadata: dict[str, str], size: int) -> str:
    spec, cfg, head = run.spec, run.cfg, run.head
    params = sum(a.size for a in (head.w1, head.b1, head.w2, head.b2) if a is not None)
    category = ""
    if spec.field == "harm":
        category = (
            "; a flagged text's S-code is named by the category model on that window"
            if run.categories is not None
            else "; the category is the argmax over the S-codes of that window"
        )
    lines = [
        f"# {spec.name}",
        "",
        f"Detects {spec.scope}. Labels: {', '.join(spec.labels)}. Score: `1 - p[{spec.labels[0]}]` of the "
        f"highest-scoring 256-token window of the text{category}. Recommended threshold: flag when the score is "
        f"above **{run.report['thresholds']['recommended']:.6g}** (thresholds are in the weights' metadata).",
        "",
        f"Trained by `python -m guardrails.train {spec.name}` (`guardrails/train/`).",
        "",
        "## Base encoder and head",
        "",
        f"- Encoder (frozen): {metadata['encoder']}; 256-token windows with 32 tokens of overlap; a text scores as "
        f"its highest-scoring window (at most {cfg.max_windows} windows per text, ~1,800 tokens, in training and "
        "in these metrics).",
        f"- Head: {head.w2.shape[1] if head.w1 is None else head.w1.shape[1]} -> {cfg.hidden} (ReLU) -> "
        f"{len(spec.labels)}, {params:,} parameters, {size / 1024:.0f} KiB in `{spec.name}.safetensors` (numpy at "
        "inference).",
        *_category_model(run),
        f"- Script commit: `{metadata['git_commit']}`.",
        "",
        "## Training data",
        "",
        f"Sets marked `train: yes` in shared/data/DATA.md, rows with a `{spec.field}` label (prompts only). "
        f"Training languages: {metadata['languages']}; dev metrics keep every language.",
        "",
        table(["set", "labelled rows", "positives", "trained on", "of which positives", "dev rows"],
              [[n, c["labelled"], c["positives"], c["train"], c["train_positives"], c["dev"]]
               for n, c in run.counts.items()]),
        "",
        f"- Dev split: {metadata['dev_split']}; no dev row is trained on.",
        f"- Short benign sets (clinc150, banking77, gsm8k): at most {cfg.short_benign_cap} training rows each, "
        "chosen by the hash of the id.",
        f"- Hard benign rows (wildguard_benign, the clean rows of bipia_train and bastioncorpus, hatecheck's "
        f"non-hateful rows, handwritten_benign): weight x{cfg.hard_weight:g}; then both classes are balanced to equal "
        "total weight.",
        "- benign_code (source files of algorithms, `lang` code; no attack or harm label in DATA.md): negatives, "
        "as neither an override technique nor a hazard is in them; without them a head flags ordinary code.",
    ]  # fmt: skip
    if spec.field == "attack":
        lines.append(
            "- xsafety_harm (harmful requests in ten languages, `attack` unlabelled in DATA.md): negatives, by "
            "DATA.md's own rule that a harmful request with no override technique is `attack: 0`. They are the only "
            "non-English negatives in the shared sets, so without them every non-English row trained on is a "
            "positive and the head learns the language. They count in the dev FPR per set and per language, not in "
            "the pooled benign rows the bar and thresholds are stated against (those are the benign sets of DATA.md)."
        )
    if spec.field == "harm":
        from guardrails.train import NOISY_POSITIVES

        noisy = "; ".join(f"{name}: {', '.join(cats)}" for name, cats in NOISY_POSITIVES.items())
        lines.append(
            f"- Not trained on as hazards ({noisy}): these XSafety scenarios are largely requests for help or "
            'opinions ("I can\'t sleep well and feel tired", "I like fried food, but it leads to obesity"); a head '
            "trained on them too flagged 10-23% of the held-out German, Spanish and French prompts at its "
            "recommended threshold. Their dev rows are still measured as positives."
        )
    if cfg.handwritten:
        lines.append(
            "- handwritten_benign: 800 benign prompts written for this project in ten languages "
            "(`guardrails/train/multilingual.py`, 80 per language: everyday requests, harmless ones that look risky, "
            "and harmless uses of words such as ignore, instructions, system, pretend), not from any dataset; "
            "negatives for both heads, trained on and weighted as hard benign rows. Every non-English row of the "
            "shared sets is otherwise a positive (for llama-guard-mini, whose harm label xsafety_harm carries, these "
            "are its only non-English negatives)."
        )
    if cfg.languages == "all":
        lines.append(
            "- Languages: every language is trained on; within each language (code and machine-made strings count as "
            "English) the two classes are weighted to equal totals, so that no language is evidence for either class."
        )
    lines.append(
        "- Excluded: cyberseceval_insecure_code (evaluation only), rows "
        f"without a `{spec.field}` label"
        + (", and every non-English row from training: in these sets all of them are positives, and a head "
           "trained on them flags ordinary non-English prompts (measured: see the language tables)"
           if cfg.languages == "en" else "") + "."
    )  # fmt: skip
    if spec.field == "harm":
        lines.append(
            "- Categories: the S-code of `category` (the part before ':'; ailuminate's `S6:contextual` and "
            "`S13:contextual` count as S6 and S13; hatecheck's hateful rows are S10). Harmful rows without an S-code "
            "(xsafety, advbench, donotanswer's `other:*`) train only the harm decision, through -log(1 - p[safe]); "
            "the S-code term -log p(code | unsafe) is weighted by inverse code frequency. donotanswer's S6 rows "
            "carry no harm label and are not used. S14 has no training rows: the head never names it."
        )
    lines += [
        f"- Hyperparameters: Adam lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, {cfg.epochs} epochs, batches of "
        f"{cfg.batch} texts, seed {cfg.seed}; each text's loss falls on its highest-scoring window.",
        f"- Time on 2 CPU cores: embedding {run.seconds['embed']:.0f} s (near 0 when cached), training "
        f"{run.seconds['train']:.1f} s, "
        + (f"category model {run.seconds['categories']:.0f} s, " if "categories" in run.seconds else "")
        + f"leave-one-set-out {run.seconds.get('loso', 0):.0f} s, whole run "
        f"{run.seconds['total']:.0f} s.",
        "",
        "## Bars",
        "",
        table(["bar", "measured", "target", "met"], bars(run)),
        "",
        "## Metrics",
        "",
        *_metrics(run),
        "",
        "## Known limits",
        "",
        "- The encoder is English-centric (all-MiniLM-L6-v2, an English WordPiece vocabulary; scripts it lacks, "
        "such as Hindi and Bengali, reach the head as little more than their length and unknown tokens). "
        "Non-English positives come from one source per head (xsafety: the same prompts translated), and "
        "non-English benign text is the project's own 1,100 prompts, so the non-English figures are the least "
        "certain here: the dev rows' translations of training rows flatter recall, and 40 benign prompts per "
        "language measure FPR only to a few percent.",
        "- Hard negatives are scarce: benign text that mentions instructions, role play, system prompts or hazards "
        "is a small share of the benign rows, so the false-positive rate on such traffic is the least certain "
        "figure here.",
        "- Mean pooling over a 256-token window dilutes a short instruction inside a long document (the middle "
        "layer's pool keeps more of the wording than the sentence embedding, not all of it).",
        "- Thresholds are chosen and reported on the same dev rows, and many dev rows have near-duplicates in "
        "training; the leave-one-set-out figures are the honest estimate for unseen sources.",
        f"- Training and these metrics saw at most the first {cfg.max_windows} windows (~1,800 tokens) of a text; a "
        "scanner that scores every window can only flag more (recall up, FPR up) on longer texts.",
    ]
    if run.categories is not None:
        lines.append(
            "- The category model learns the taxonomy from the sets in `CATEGORY_SETS` "
            "(`guardrails/train/category_model.py`), so it names their codes better than the head does and the "
            "codes of other coded sets (their codes mapped from other taxonomies) worse: see Categories. The "
            "alternatives measured, and what they cost, are in the comment there."
        )
    return "\n".join(lines) + "\n"
