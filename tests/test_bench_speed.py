"""The speed and scale bench scripts: fair arms in bench/train_throughput.py, and the results files
(bench/results/NAME.{json,md}, bench/record.py) that each script writes, on tiny inputs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, Trainer

from bench import backtranslate as bt, record, train_throughput as tt
from stages import common
from stages.focal_loss import LossParams
from stages.encoder import ModelParams
from stages.fit import build_model
from stages.train import TrainParams
from stages.trainer import training_args
from tests.tiny_bert import build_tiny_bert
from tests.tiny_classifier import LABELS, TEXTS
from tests.tiny_marian import build_tiny_marian_pair
from tests.toy_dvc import init_repo

PROVENANCE = {"date", "commit", "uncommitted", "command", "device", "load_before", "load_after"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tt.Setup:
    """The bench's Setup around a tiny BERT: the stage's params, batches of 4."""
    model_dir = build_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert", TEXTS, num_labels=len(LABELS))
    model_params = dataclasses.replace(common.load_section(ModelParams, "model"), name=str(model_dir), max_length=16)
    train_params = dataclasses.replace(common.load_section(TrainParams, "train"), batch_size=4, device="cpu")
    rows = [{"text": t, "label": LABELS[i % 3]} for i, t in enumerate(TEXTS * 2)]
    return tt.Setup(rows, LABELS, AutoTokenizer.from_pretrained(model_dir), model_params,
                    common.load_section(LossParams, "loss"), train_params, torch.ones(3), 0, "cpu")


def test_bare_loop_builds_the_optimizer_the_trainer_builds(setup, tmp_path):
    args = tt.bench_args(setup, str(tmp_path), "stage", 3)
    model = build_model(setup.tokenizer, tt.META, setup.model_params, setup.labels, setup.seed)
    trainer = Trainer(model=model, args=args)
    trainer.create_optimizer()
    bare = tt.describe(tt.bare_optimizer(model, args))
    assert bare == tt.describe(trainer.optimizer)
    stage_args = training_args(str(tmp_path), setup.train_params, setup.seed)
    # what the stage's Trainer runs with torch >= 2.8: plain torch.optim.AdamW(lr, weight_decay) fails here
    assert bare["class"] == "torch.optim.adamw.AdamW" and bare["defaults"]["fused"] is True
    assert [g[0] for g in bare["groups"]] == [stage_args.weight_decay, 0.0]  # biases, LayerNorm: no decay
    assert args.max_grad_norm == stage_args.max_grad_norm > 0


def test_bare_step_clips_the_gradient_norm_to_max_grad_norm(setup):
    model = build_model(setup.tokenizer, tt.META, setup.model_params, setup.labels, setup.seed)
    batch = dict(setup.tokenizer(TEXTS[:4], padding=True, return_tensors="pt"), labels=torch.tensor([0, 1, 2, 0]))
    norms = []

    class Probe(torch.optim.SGD):  # records the norm the update sees, changes nothing
        def step(self, closure=None):
            norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())

    raw = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.nn.functional.cross_entropy(raw, batch["labels"]).backward()
    unclipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    model.zero_grad()
    tt.bare_step(model, Probe(model.parameters(), lr=0.0), dict(batch), unclipped / 10, torch.autocast("cpu",
                                                                                               enabled=False))
    assert norms == [pytest.approx(unclipped / 10, rel=1e-4)]


def test_measure_trains_both_arms_on_the_same_batches_and_writes_results(setup, tmp_path):
    result = tt.measure(setup, ["stage"], warmup=1, steps=2, repeats=2)
    runs, info = result["runs"]["stage"], result["info"]["stage"]
    assert len(runs["trainer"]) == len(runs["bare"]) == 2 and len(runs["load"]) == 4
    assert info["bare_optimizer"] == info["trainer_optimizer"]
    md = tt.table(result, "tiny setup")
    json_path, md_path = record.write("train_throughput", record.start(), {"torch_threads": 1, **result}, md,
                                      results=tmp_path)
    saved = json.loads(json_path.read_text())
    assert PROVENANCE | {"torch_threads", "runs", "info"} <= set(saved)
    text = md_path.read_text()
    assert text.startswith("<!-- the table of train_throughput.json") and "| stage |" in text
    assert "Trainer ms/step" in text and "| process CPU |" in text and "fused=True" in text
    assert len(runs["trainer_cpu"]) == len(runs["bare_cpu"]) == 2


@pytest.mark.parametrize(("load", "shared"), [(0.4, False), (2.5, True)])
def test_results_header_says_when_the_cpu_was_shared(monkeypatch, tmp_path, load, shared):
    monkeypatch.setattr(record.os, "getloadavg", lambda: (load, load, load))
    _, md_path = record.write("x", record.start("a CPU"), {"n": 1}, "| a |\n|---|\n| 1 |", results=tmp_path)
    header = md_path.read_text().splitlines()[1]
    assert "a CPU" in header and f"load average {load:.1f} before" in header
    assert ("the CPU was shared" in header) == shared


def test_backtranslate_measures_greedy_and_beams_and_writes_both(tmp_path):
    pair = build_tiny_marian_pair(tmp_path / "pair", TEXTS, init_std=1.0)
    settings = []
    for num_beams in (1, 2):
        from_dir, to_dir = bt.with_beams(pair, num_beams) if num_beams > 1 else pair
        params = dataclasses.replace(bt.PARAMS, from_model=str(from_dir), to_model=str(to_dir), batch_size=5,
                                     max_length=6)  # random weights decode to max_length: keep it small
        settings.append(bt.summarise(bt.compare_seq2seq(TEXTS[:5], params, repeats=1), TEXTS[:5], num_beams))
    assert [st["identical"] for st in settings] == [5, 5]  # the stage path returns what nlpaug returns
    md = bt.table(settings, {1: [1.0, 1.2], 2: [0.9, 1.1]}, 5)
    json_path, md_path = record.write("backtranslate", record.start(), {"settings": settings}, md, results=tmp_path)
    saved = json.loads(json_path.read_text())
    assert PROVENANCE <= set(saved) and [st["num_beams"] for st in saved["settings"]] == [1, 2]
    assert all(len(st["seconds"]) == 2 and st["speedup"] > 0 for st in saved["settings"])  # both arms timed
    text = md_path.read_text()
    assert "| greedy | stage path" in text and "| 2 beams | stage path" in text and "RAYON_NUM_THREADS=2" in text


def test_stage_resources_times_every_stage_of_another_checkout_and_writes_results(tmp_path):
    repo = init_repo(tmp_path / "toy")  # one stage, evaluate; the results go to the scratch copy of bench/
    bench = tmp_path / "copy/bench"
    bench.mkdir(parents=True)
    for name in ("stage_resources.py", "record.py"):
        (bench / name).write_text((record.ROOT / "bench" / name).read_text())
    subprocess.run([sys.executable, str(bench / "stage_resources.py"), "--repo", str(repo)], check=True,
                   capture_output=True, text=True)
    saved = json.loads((bench / "results/stage_resources.json").read_text())
    assert PROVENANCE | {"repo_commit", "stages"} <= set(saved) and list(saved["stages"]) == ["evaluate"]
    assert saved["stages"]["evaluate"]["seconds"] > 0 and saved["stages"]["evaluate"]["peak_mib"] > 0
    md = (bench / "results/stage_resources.md").read_text()
    assert "| evaluate |" in md and "| **total** |" in md
