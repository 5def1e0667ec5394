"""Training throughput: the train stage's Trainer path vs a bare PyTorch loop on the same batches.

Trainer arms use what stages/train.py uses: `FocalTrainer` (focal loss with alpha, the SWA-aware LR
schedule), `training_args`, `build_model`/`encode` on the bundled MiniLM, the `SWACallback` (it acts at
epoch ends only, outside the timed window: its cost is timed on its own) and DataCollatorWithPadding.
Per-epoch evaluation and checkpointing are off: they are not training steps. The bare arm is a plain
loop with `F.cross_entropy` on the same freshly built model that matches the Trainer in everything
else that costs time: it collates the very features the Trainer's loader collated, with the same
collator, inside the timed loop; it builds the optimizer the Trainer builds from the same arguments
(`Trainer.get_optimizer_cls_and_kwargs`: fused AdamW with torch >= 2.8, no decay on biases and
LayerNorm), clips to `max_grad_norm`, and sets the same determinism and precision (deterministic
kernels on CPU, bf16 autocast on CUDA). Both checks run every time: same batches, same optimizer.
Arms are interleaved (order alternating per repeat); steps/s is over `--steps` steps after `--warmup`,
by the wall clock and by this process's CPU time (which, on a CPU shared with other processes, counts
only our own cycles). Writes bench/results/train_throughput.{json,md} (runs, load, threads, optimizer).

Variants of the Trainer (each against a bare loop on its own batches):
  stage      DataCollatorWithPadding (dynamic padding), random order: what the stage does
  grouped    + train_sampling_strategy="group_by_length" (transformers 5's group_by_length=True)
  maxlen     padding to model.max_length instead of dynamic padding

Run (CPU, ~15 min on 2 busy cores; CUDA in a minute or two):
    python bench/train_throughput.py --device cpu --steps 10 --warmup 2 --repeats 3 --threads 1 \
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
from transformers import (  # noqa: E402
    AutoTokenizer, DataCollatorWithPadding, PrinterCallback, Trainer, TrainerCallback, TrainingArguments,
    enable_full_determinism)

from bench import record  # noqa: E402
from stages import common  # noqa: E402
from stages.alpha import class_counts, compute_alpha  # noqa: E402
from stages.focal_loss import LossParams  # noqa: E402
from stages.swa import SWACallback  # noqa: E402
from stages.encoder import ModelParams  # noqa: E402
from stages.fit import build_model, encode  # noqa: E402
from stages.train import TrainParams  # noqa: E402
from stages.trainer import FocalTrainer, make_compute_metrics, training_args  # noqa: E402

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


class RecordingCollator:
    """The stage's collator, keeping each list of features it collates and the batch it made of them
    (references, no copies): the bare loop collates the same features again, and must get the same batches."""

    def __init__(self, collator):
        self.collator, self.features, self.batches = collator, [], []

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        self.features.append(features)
        self.batches.append(dict(batch))
        return batch


def clock(device: str) -> tuple[float, float]:
    """(wall, this process's CPU) seconds once queued GPU work is done: on a shared CPU the second counts
    only this process's own cycles (one torch thread: the step's)."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def rates(steps: int, start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    """Steps/s over wall time and over CPU time."""
    return steps / (end[0] - start[0]), steps / (end[1] - start[1])


class StepClock(TrainerCallback):
    """clock() at the end of step `first` and step `last` (synchronising CUDA only there)."""

    def __init__(self, first: int, last: int, device: str):
        self.first, self.last, self.device, self.times = first, last, device, {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.first, self.last):
            self.times[state.global_step] = clock(self.device)


def bench_args(setup: Setup, out_dir: str, variant: str, max_steps: int) -> TrainingArguments:
    """The stage's training_args (optimizer, clipping, determinism; on CUDA bf16 where supported, as the
    stage picks), minus evaluation and checkpoints."""
    cuda, bf16 = setup.device == "cuda", setup.device == "cuda" and torch.cuda.is_bf16_supported()
    return dataclasses.replace(
        training_args(out_dir, setup.train_params, setup.seed), max_steps=max_steps, eval_strategy="no",
        save_strategy="no", load_best_model_at_end=False, use_cpu=not cuda, disable_tqdm=True, bf16=bf16,
        fp16=cuda and not bf16, train_sampling_strategy="group_by_length" if variant == "grouped" else "random")


def describe(optimizer) -> dict:
    """An optimizer's class, its defaults (lr, betas, eps, fused, ...) and its groups' (weight decay, size)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside accelerate's wrapper
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in optimizer.defaults.items()}
    return {"class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}", "defaults": defaults,
            "groups": [[g["weight_decay"], len(g["params"])] for g in optimizer.param_groups]}


def trainer_arm(setup: Setup, variant: str, warmup: int, steps: int) -> tuple[tuple, RecordingCollator, float, dict]:
    """Steps/s (wall, CPU) of the stage's Trainer path, what it collated, the SWA update time (s), its optimizer."""
    torch.use_deterministic_algorithms(False)  # the Trainer sets what the stage sets (full_determinism on CPU)
    model = build_model(setup.tokenizer, META, setup.model_params, setup.labels, setup.seed)
    label2id = {lab: i for i, lab in enumerate(setup.labels)}
    pad = ({"padding": "max_length", "max_length": setup.model_params.max_length} if variant == "maxlen" else {})
    clock_cb, swa = StepClock(warmup, warmup + steps, setup.device), SWACallback(setup.train_params.swa.start_epoch)
    collator = RecordingCollator(DataCollatorWithPadding(setup.tokenizer, **pad))
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out_dir:
        trainer = FocalTrainer(
            model=model, args=bench_args(setup, out_dir, variant, warmup + steps), data_collator=collator,
            train_dataset=encode(setup.rows, setup.tokenizer, label2id, setup.model_params),
            compute_metrics=make_compute_metrics(setup.alpha, setup.loss_params), callbacks=[clock_cb, swa],
            alpha=setup.alpha, loss_params=setup.loss_params, train_params=setup.train_params)
        trainer.remove_callback(PrinterCallback)  # its end-of-training dict would split the result lines
        trainer.train()
        start = clock(setup.device)
        swa.update(trainer.model)  # one end-of-epoch SWA snapshot, as the stage takes from start_epoch on
        swa_seconds = clock(setup.device)[0] - start[0]
    return rates(steps, clock_cb.times[warmup], clock_cb.times[warmup + steps]), collator, swa_seconds, describe(
        trainer.optimizer)


def bare_optimizer(model, args: TrainingArguments) -> torch.optim.Optimizer:
    """What Trainer.create_optimizer builds for `args`: the class and arguments of
    Trainer.get_optimizer_cls_and_kwargs (fused AdamW for the stage's args) over the same two parameter
    groups (no weight decay on biases and LayerNorm weights)."""
    decay = set(Trainer.get_decay_parameter_names(None, model))  # reads no Trainer state
    groups = [{"params": [p for n, p in model.named_parameters() if p.requires_grad and (n in decay) == d],
               "weight_decay": args.weight_decay if d else 0.0} for d in (True, False)]
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return optimizer_cls(groups, **kwargs)


def bare_step(model, optimizer, batch: dict, max_grad_norm: float, autocast) -> None:
    """Forward, cross-entropy, backward, clipping as the Trainer clips (max_grad_norm), step."""
    labels = batch.pop("labels")
    with autocast:
        logits = model(**batch).logits
    F.cross_entropy(logits.float(), labels).backward()
    if max_grad_norm > 0:  # Trainer._clip_grad_norm on one process: accelerate calls this
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bare_arm(setup: Setup, args: TrainingArguments, seen: RecordingCollator, warmup: int
             ) -> tuple[tuple, list[dict], dict]:
    """Steps/s (wall, CPU) of a plain loop that collates the Trainer's features with the same collator, with the
    Trainer's optimizer, clipping, determinism and precision; the batches it made; its optimizer."""
    if args.full_determinism:
        enable_full_determinism(args.seed)  # what the Trainer does with these args
    else:
        torch.use_deterministic_algorithms(False)
    model = build_model(setup.tokenizer, META, setup.model_params, setup.labels, setup.seed).to(setup.device)
    model.train()
    optimizer = bare_optimizer(model, args)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16)
    start, batches = (0.0, 0.0), []
    for i, features in enumerate(seen.features):
        if i == warmup:
            start = clock(setup.device)
        batch = seen.collator(features)
        batches.append(dict(batch))
        bare_step(model, optimizer, {k: v.to(setup.device, non_blocking=True) for k, v in batch.items()},
                  args.max_grad_norm, autocast)
    return rates(len(seen.features) - warmup, start, clock(setup.device)), batches, describe(optimizer)


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


def run_arm(setup: Setup, v: str, arm: str, warmup: int, steps: int, seen: dict, info: dict) -> tuple:
    """One run of one arm of variant `v`; checks that both arms train on the same batches with the same optimizer."""
    if arm == "trainer":
        rate, collated, info[v]["swa_update_s"], info[v]["trainer_optimizer"] = trainer_arm(setup, v, warmup, steps)
        if v in seen and not same_batches(seen[v].batches, collated.batches):
            raise RuntimeError(f"{v}: the Trainer's batches changed between repeats (seeding)")
        seen[v] = collated
        return rate
    args = bench_args(setup, tempfile.gettempdir(), v, warmup + steps)
    rate, batches, info[v]["bare_optimizer"] = bare_arm(setup, args, seen[v], warmup)
    if not same_batches(batches, seen[v].batches):
        raise RuntimeError(f"{v}: the bare loop collated other batches than the Trainer trained on")
    if info[v]["bare_optimizer"] != info[v].get("trainer_optimizer", info[v]["bare_optimizer"]):
        raise RuntimeError(f"{v}: the bare loop's optimizer differs from the Trainer's: {info[v]}")
    return rate


def measure(setup: Setup, variants: list[str], warmup: int, steps: int, repeats: int) -> dict:
    """Interleaved repeats: per variant, Trainer then bare (bare then Trainer on odd repeats); each run's
    steps/s over wall time and over this process's CPU time, and the 1-minute load average after it."""
    runs = {v: {"trainer": [], "bare": [], "trainer_cpu": [], "bare_cpu": [], "load": []} for v in variants}
    seen: dict[str, RecordingCollator] = {}
    info: dict[str, dict] = {v: {} for v in variants}
    for r in range(repeats):
        for v in variants:
            for arm in ["trainer", "bare"] if r % 2 == 0 or v not in seen else ["bare", "trainer"]:
                wall, cpu = run_arm(setup, v, arm, warmup, steps, seen, info)
                runs[v][arm].append(wall)
                runs[v][f"{arm}_cpu"].append(cpu)
                runs[v]["load"].append(os.getloadavg()[0])
                print(f"  repeat {r + 1} {v:8s} {arm:8s} {wall:.3f} steps/s (CPU time: {cpu:.3f})  "
                      f"load {os.getloadavg()}", flush=True)
    for v in variants:
        info[v]["tokens_per_step"] = statistics.mean(b["input_ids"].numel() for b in seen[v].batches[warmup:])
    return {"runs": runs, "info": info}


def table(result: dict, setup_line: str) -> str:
    """Medians over the repeats, over wall time and over the process's CPU time: ms per step of each arm,
    and Trainer steps/s over bare steps/s (per repeat too)."""
    runs, info = result["runs"], result["info"]
    lines = [setup_line, "", "| variant | padded tokens/step | clock | Trainer ms/step | bare ms/step | Trainer / bare "
             "(steps/s) | per repeat | Trainer / stage Trainer |", "|---|---|---|---|---|---|---|---|"]
    for v, arms in runs.items():
        for clock_name, suffix in (("wall", ""), ("process CPU", "_cpu")):
            trainer, bare = arms[f"trainer{suffix}"], arms[f"bare{suffix}"]
            t, b = statistics.median(trainer), statistics.median(bare)
            base = statistics.median(runs[VARIANTS[0]][f"trainer{suffix}"]) if VARIANTS[0] in runs else None
            paired = ", ".join(f"{x / y:.2f}" for x, y in zip(trainer, bare))
            lines.append(f"| {v} | {info[v]['tokens_per_step']:.0f} | {clock_name} | {1000 / t:.0f} | {1000 / b:.0f} "
                         f"| **{t / b:.2f}** | {paired} | {f'{t / base:.2f}' if base else '—'} |")
    opt = next(iter(info.values()))["bare_optimizer"]
    swa = ", ".join(f"{v} {info[v]['swa_update_s'] * 1000:.0f} ms" for v in runs)
    return "\n".join(lines) + (
        f"\n\nBoth arms: {opt['class']} (fused={opt['defaults'].get('fused')}), parameter groups (weight decay, "
        f"tensors) {opt['groups']}. SWA update (once per epoch from start_epoch, not per step): {swa}.")


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
    meta = record.start(torch.cuda.get_device_name() if args.device == "cuda" else
                        f"{record.cpu_name()}, {len(os.sched_getaffinity(0))} cores, {args.threads} torch threads")
    setup = load_setup(args.train_file, args.device, common.load_seed())
    setup_line = (f"{len(setup.rows)} train rows, batch {setup.train_params.batch_size}, {args.warmup} + "
                  f"{args.steps} timed steps per run, {args.repeats} interleaved repeats, medians.")
    print(setup_line, f"load {os.getloadavg()}", flush=True)
    result = measure(setup, args.variants, args.warmup, args.steps, args.repeats)
    md = table(result, setup_line)
    print(md)
    stage = training_args(tempfile.gettempdir(), setup.train_params, setup.seed)
    record.write("train_throughput", meta, {
        "torch_threads": torch.get_num_threads(), "train_rows": len(setup.rows),
        "batch_size": setup.train_params.batch_size, "warmup": args.warmup, "steps": args.steps,
        "repeats": args.repeats, "optim": str(getattr(stage.optim, "value", stage.optim)),
        "max_grad_norm": stage.max_grad_norm, "full_determinism": stage.full_determinism, **result}, md)


if __name__ == "__main__":
    main()
