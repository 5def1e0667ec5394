"""Training throughput: the train stage's Trainer path vs a bare PyTorch loop on the same batches.

Trainer arms use what stages/train.py uses: `FocalTrainer` (focal loss with alpha, the SWA-aware
LR schedule), `training_args` (so the Trainer's AdamW, fused with torch >= 2.8, gradient clipping,
deterministic kernels on CPU, bf16 on CUDA), `build_model`/`encode` on the bundled MiniLM, and the
`SWACallback` (it acts at epoch ends only: the timed window sits inside epoch 1, so its
per-epoch cost is timed on its own below the table). Per-epoch evaluation and checkpointing
are off: they are not training steps. The bare arm replays the exact batches the Trainer arm
consumed (same order, same padding) through the same freshly built model with
`F.cross_entropy` and `torch.optim.AdamW`, under the same bf16 autocast on CUDA. Arms are
interleaved (order rotating per repeat); steps/s is over `--steps` steps after `--warmup`.

Variants of the Trainer (each against a bare loop on its own batches):
  stage      DataCollatorWithPadding (dynamic padding), random order: what the stage does
  grouped    + train_sampling_strategy="group_by_length" (transformers 5's group_by_length=True)
  maxlen     padding to model.max_length instead of dynamic padding

Run (CPU, ~15 min on 2 busy cores; CUDA in a minute or two):
    python bench/train_throughput.py --device cpu --steps 10 --warmup 2 --repeats 3 \
        --train-file data/augment/train.jsonl
    python bench/train_throughput.py --device cuda --steps 30 --warmup 5 --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoTokenizer, DataCollatorWithPadding, PrinterCallback, TrainerCallback  # noqa: E402

from stages import common  # noqa: E402
from stages.alpha import class_counts, compute_alpha  # noqa: E402
from stages.focal_loss import LossParams  # noqa: E402
from stages.swa import SWACallback  # noqa: E402
from stages.train import (  # noqa: E402
    FocalTrainer,
    ModelParams,
    TrainParams,
    build_model,
    encode,
    make_compute_metrics,
    training_args,
)

VARIANTS = ("stage", "grouped", "maxlen")
META = {"mode": "extend", "new_tokens": {}}  # the base tokenizer: no added rows to initialise


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything both arms share: data, tokenizer, params, device."""

    rows: list[dict]
    labels: list[str]
    tokenizer: object
    model_params: ModelParams
    loss_params: LossParams
    train_params: TrainParams
    alpha: torch.Tensor
    seed: int
    device: str


class RecordingTrainer(FocalTrainer):
    """FocalTrainer that keeps a reference to every batch it trains on (no copy, no sync)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.batches.append(dict(inputs))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class StepClock(TrainerCallback):
    """Wall time at the end of step `first` and step `last` (synchronising CUDA only there)."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.times = first, last, {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.first, self.last):
            if torch.cuda.is_available() and not args.use_cpu:
                torch.cuda.synchronize()
            self.times[state.global_step] = time.perf_counter()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def trainer_arm(setup: Setup, variant: str, warmup: int, steps: int) -> tuple[float, list[dict], float]:
    """Steps/s of the stage's Trainer path, the batches it consumed, and the SWA update time (s)."""
    torch.use_deterministic_algorithms(False)  # the Trainer sets what the stage sets (full_determinism on CPU)
    model = build_model(setup.tokenizer, META, setup.model_params, setup.labels, setup.seed)
    label2id = {lab: i for i, lab in enumerate(setup.labels)}
    pad = ({"padding": "max_length", "max_length": setup.model_params.max_length} if variant == "maxlen" else {})
    clock, swa = StepClock(warmup, warmup + steps), SWACallback(setup.train_params.swa.start_epoch)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out_dir:
        args = dataclasses.replace(
            training_args(out_dir, setup.train_params, setup.seed), max_steps=warmup + steps,
            eval_strategy="no", save_strategy="no", load_best_model_at_end=False,
            use_cpu=setup.device == "cpu", disable_tqdm=True, **cuda_precision(setup.device),
            train_sampling_strategy="group_by_length" if variant == "grouped" else "random")
        trainer = RecordingTrainer(
            model=model, args=args, data_collator=DataCollatorWithPadding(setup.tokenizer, **pad),
            train_dataset=encode(setup.rows, setup.tokenizer, label2id, setup.model_params.max_length),
            compute_metrics=make_compute_metrics(setup.alpha, setup.loss_params), callbacks=[clock, swa],
            alpha=setup.alpha, loss_params=setup.loss_params, train_params=setup.train_params)
        trainer.remove_callback(PrinterCallback)  # its end-of-training dict would split the result lines
        trainer.train()
        start = time.perf_counter()
        swa.update(trainer.model)  # one end-of-epoch SWA snapshot, as the stage takes from start_epoch on
        sync(setup.device)
        swa_seconds = time.perf_counter() - start
    batches = [{k: v.detach().to("cpu") for k, v in b.items()} for b in trainer.batches]
    return steps / (clock.times[warmup + steps] - clock.times[warmup]), batches, swa_seconds


def cuda_precision(device: str) -> dict:
    """What training_args picks on CUDA (bf16 where supported), and fp32 on CPU."""
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "fp16": device == "cuda" and not bf16}


def bare_arm(setup: Setup, batches: list[dict], warmup: int) -> float:
    """Steps/s of a plain loop (cross-entropy, AdamW) over `batches`, same model and precision."""
    torch.use_deterministic_algorithms(False)
    model = build_model(setup.tokenizer, META, setup.model_params, setup.labels, setup.seed).to(setup.device)
    model.train()
    p = setup.train_params
    opt = torch.optim.AdamW(model.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda_precision(setup.device)["bf16"])
    start = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            sync(setup.device)
            start = time.perf_counter()
        batch = {k: v.to(setup.device, non_blocking=True) for k, v in batch.items()}
        labels = batch.pop("labels")
        with autocast:
            logits = model(**batch).logits
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(setup.device)
    return (len(batches) - warmup) / (time.perf_counter() - start)


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def quiet() -> None:
    """No progress bars or load reports between the result lines."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


def load_setup(train_file: Path, device: str, seed: int) -> Setup:
    """The stage's params (params.yaml), the bundled MiniLM tokenizer, the train rows and their alpha."""
    rows = common.read_rows(train_file)
    labels = sorted({r["label"] for r in rows})
    model_params = common.load_section(ModelParams, "model")
    alpha_params = common.read_params()["alpha"]
    alpha = compute_alpha(class_counts(rows, labels), alpha_params["method"], alpha_params["beta"])
    tokenizer = AutoTokenizer.from_pretrained(common.resolve_model_name(model_params.name))
    return Setup(rows, labels, tokenizer, model_params, common.load_section(LossParams, "loss"),
                 common.load_section(TrainParams, "train"), torch.tensor(alpha, dtype=torch.float32), seed, device)


def measure(setup: Setup, variants: list[str], warmup: int, steps: int, repeats: int) -> dict:
    """Interleaved repeats: per variant, Trainer then bare (or bare then Trainer on odd repeats)."""
    rates = {v: {"trainer": [], "bare": []} for v in variants}
    batches: dict[str, list[dict]] = {}
    info = {v: {} for v in variants}
    for r in range(repeats):
        for v in variants:
            arms = ["trainer", "bare"] if r % 2 == 0 or v not in batches else ["bare", "trainer"]
            for arm in arms:
                if arm == "trainer":
                    rate, seen, swa_s = trainer_arm(setup, v, warmup, steps)
                    if v in batches and not same_batches(batches[v], seen):
                        raise RuntimeError(f"{v}: the Trainer's batches changed between repeats (seeding)")
                    batches[v] = seen
                    info[v]["swa_update_s"] = swa_s
                else:
                    rate = bare_arm(setup, batches[v], warmup)
                rates[v][arm].append(rate)
                print(f"  repeat {r + 1} {v:8s} {arm:8s} {rate:.3f} steps/s  load {os.getloadavg()}", flush=True)
        for v in variants:
            info[v]["tokens_per_step"] = statistics.mean(b["input_ids"].numel() for b in batches[v][warmup:])
    return {"rates": rates, "info": info}


def table(result: dict, batch_size: int) -> str:
    rates, info = result["rates"], result["info"]
    base = statistics.median(rates[VARIANTS[0]]["trainer"]) if VARIANTS[0] in rates else None
    lines = ["| variant | padded tokens/step | Trainer steps/s | bare steps/s | Trainer samples/s "
             "| Trainer / bare | Trainer / stage Trainer |", "|---|---|---|---|---|---|---|"]
    for v, arms in rates.items():
        t, b = statistics.median(arms["trainer"]), statistics.median(arms["bare"])
        vs_stage = f"{t / base:.2f}" if base else "—"
        lines.append(f"| {v} | {info[v]['tokens_per_step']:.0f} | {t:.3f} | {b:.3f} | {t * batch_size:.1f} "
                     f"| **{t / b:.2f}** | {vs_stage} |")
    swa = ", ".join(f"{v} {info[v]['swa_update_s'] * 1000:.0f} ms" for v in rates)
    return "\n".join(lines) + f"\n\nSWA update (once per epoch from start_epoch, not per step): {swa}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run, after the warm-up")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (both arms)")
    parser.add_argument("--train-file", type=Path, default=common.ROOT / "data/augment/train.jsonl")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    torch.set_num_threads(args.threads)
    quiet()
    setup = load_setup(args.train_file, args.device, common.load_seed())
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} torch threads"
    print(f"{len(setup.rows)} train rows; {name}; batch {setup.train_params.batch_size}, "
          f"{args.warmup}+{args.steps} steps x {args.repeats} repeats; load {os.getloadavg()}", flush=True)
    result = measure(setup, args.variants, args.warmup, args.steps, args.repeats)
    print(table(result, setup.train_params.batch_size))
    stage_args = training_args(tempfile.gettempdir(), setup.train_params, setup.seed)
    optim = getattr(stage_args.optim, "value", stage_args.optim)
    print(f"Trainer: optim {optim}, max_grad_norm {stage_args.max_grad_norm}, full_determinism "
          f"{stage_args.full_determinism}; bare: torch.optim.AdamW defaults, no clipping")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
