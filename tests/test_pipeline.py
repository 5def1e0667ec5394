"""dvc.yaml, params.yaml, stage modules and metrics agree; `dvc repro` works end to end.

The slow test copies the repo into tmp_path, points params.yaml at a tiny profile
(tiny random BERT, tiny MarianMT pair through the real nlpaug backend, a few dozen
rows) and runs the real `dvc repro` with outbound network refused, then checks the
no-op re-run, a clean `git status`, and that `dvc exp run --temp -S loss.gamma=1`
re-runs only train, evaluate and log and lands in the repo's MLflow store.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages import cli, common

REPO = Path(__file__).resolve().parent.parent
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
STAGES = ["prepare", "tokenizer", "pretrain", "augment", "alpha", "train", "evaluate", "log"]


def test_dvc_yaml_has_the_eight_stages_in_order_run_as_modules():
    assert list(DVC["stages"]) == STAGES
    for name, stage in DVC["stages"].items():
        assert stage["cmd"] == f"python -m stages.{name}"
        assert f"stages/{name}.py" in stage["deps"] and (REPO / f"stages/{name}.py").exists()


def test_each_stage_declares_the_modules_it_imports():
    for name, stage in DVC["stages"].items():
        source = (REPO / f"stages/{name}.py").read_text()
        imported = set(re.findall(r"from stages(?:\.| import )(\w+)", source))
        for module in imported:
            assert f"stages/{module}.py" in stage["deps"], f"stage {name} imports stages.{module} but does not depend on it"


def test_metrics_files_follow_stage_names():
    for name, stage in DVC["stages"].items():
        for entry in stage.get("metrics", []):
            assert list(entry) == [f"metrics/{name}.json"]


def test_every_params_section_parses_with_its_stage_dataclass():
    for module_name, section in [
        ("prepare", "data"), ("tokenizer", "tokenizer"), ("augment", "augment"), ("alpha", "alpha"),
        ("pretrain", "pretrain"), ("train", "train"), ("encoder", "model"), ("focal_loss", "loss"), ("evaluate", "evaluate"),
    ]:
        module = importlib.import_module(f"stages.{module_name}")
        classes = [c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__]
        parsed = [c for c in classes if c.__name__.lower().startswith(section.replace("_", "")[:4])]
        assert parsed, f"no params dataclass for section {section} in stages/{module_name}.py"
        common.parse_params(parsed[0], PARAMS[section], section)


def test_params_keys_listed_in_dvc_yaml_exist():
    for name, stage in DVC["stages"].items():
        for key in stage.get("params", []):
            if isinstance(key, dict):
                continue
            node = PARAMS
            for part in key.split("."):
                assert part in node, f"stage {name} lists params key {key} missing from params.yaml"
                node = node[part]


# ---------------------------------------------------------------- end to end (slow)

WORDS = {
    "negative": "awful nausea headache terrible pain worse dizzy",
    "neutral": "okay mild average unsure moderate sometimes fine",
    "positive": "great relief wonderful helped better calm happy",
}


def tiny_dataset(path: Path, counts: dict[str, int], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    rows = []
    for label, n in counts.items():
        words = WORDS[label].split() + "the drug was and it i felt after days".split()
        rows += [(" ".join(rng.choice(words) for _ in range(rng.randint(6, 12))), label) for _ in range(n)]
    rng.shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("review,sentiment\n" + "".join(f'"{t}",{lab}\n' for t, lab in rows))
    return [t for t, _ in rows]


def tiny_profile(root: Path) -> None:
    """Tiny data in data/raw/ and tiny local models in models/base/ (where local models must live)."""
    from tiny_bert import build_tiny_bert
    from tiny_marian import build_tiny_marian_pair

    corpus = tiny_dataset(root / "data/raw/tiny.csv", {"positive": 40, "negative": 16, "neutral": 10})
    base = root / "models/base"
    bert = build_tiny_bert(base / "bert", corpus, num_labels=3).relative_to(root)
    src, tgt = (p.relative_to(root) for p in build_tiny_marian_pair(base / "marian", corpus))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(source="data/raw/tiny.csv", text_column="review", label_column="sentiment")
    params["model"].update(name=str(bert), max_length=32, freeze_layers=0)  # the tiny BERT has 1 layer
    params["tokenizer"].update(vocab_size=60, model_type="bpe", max_new_tokens=5, min_frequency=2)
    params["pretrain"].update(enabled=True, epochs=1, batch_size=8)  # the encoder train starts from
    params["augment"].update(enabled=True, backend="nlpaug", from_model=str(src), to_model=str(tgt))  # off by default
    params["augment"].update(max_length=20, batch_size=8)
    params["augment"].update(max_length_ratio=100.0)  # random-weight Marian output has arbitrary length
    params["train"].update(max_epochs=2, batch_size=8)
    params["train"]["swa"].update(start_epoch=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


OFFLINE = Path(__file__).resolve().parent / "offline"  # sitecustomize.py: refuses non-loopback sockets


def sh(root: Path, *cmd: str) -> str:
    """Run `cmd` in `root` with outbound network refused (every attempt logged to root/../offline.log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(OFFLINE), env.get("PYTHONPATH")]))
    env["OFFLINE_LOG"] = str(root.parent / "offline.log")
    done = subprocess.run(cmd, cwd=root, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-6000:]}"
    return done.stdout


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def copy_project(root: Path) -> None:
    """The files a user's clone has that the pipeline needs, copied into `root`."""
    for item in ["stages", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "data/raw/README.md",
                 "models/base/README.md"]:
        dest = root / item
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, dest)


def init_repo(root: Path) -> None:
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "ci@example.com")
    sh(root, "git", "config", "user.name", "ci")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")


@pytest.mark.slow
def test_dvc_repro_end_to_end_on_tiny_profile(tmp_path):
    root = tmp_path / "repo"
    copy_project(root)
    tiny_profile(root)
    # The guard is live in child processes: a connection to a routable address is refused and logged.
    probe = "import socket\ntry: socket.create_connection(('10.255.255.1', 80), timeout=1)\nexcept OSError as e: print(e)"
    assert "offline test: outbound connection" in sh(root, sys.executable, "-c", probe)
    assert "10.255.255.1:80" in (tmp_path / "offline.log").read_text()
    (tmp_path / "offline.log").unlink()
    init_repo(root)

    first = sh(root, "dvc", "repro")
    assert ran_stages(first) == STAGES
    evaluate = json.loads((root / "metrics/evaluate.json").read_text())
    assert {"accuracy", "macro_f1", "weighted_f1", "per_class", "ece", "ce_loss"} <= set(evaluate)
    augmented = common.read_jsonl(root / "data/augment/train.jsonl")
    assert any(r["source"] == "backtranslation" for r in augmented)
    assert (root / "mlflow.db").exists()

    assert ran_stages(sh(root, "dvc", "repro")) == []  # nothing changed: a no-op

    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "tiny baseline")
    assert sh(root, "git", "status", "--porcelain") == ""
    assert_fresh_clone_logs_one_run(root, tmp_path / "clone")
    # The user's data file is tracked: editing it makes prepare (and all after it) stale.
    with open(root / "data/raw/tiny.csv", "a", encoding="utf-8") as f:
        f.write('"one more mild review",neutral\n')
    assert "prepare:" in sh(root, "dvc", "status")
    sh(root, "git", "checkout", "--", "data/raw/tiny.csv")
    assert "prepare:" not in sh(root, "dvc", "status")
    # Re-translating with a cold cache, then re-running with a warm one, changes no committed file.
    for cache in ("cold", "warm"):
        if cache == "cold":
            shutil.rmtree(root / ".cache")
        assert ran_stages(sh(root, "dvc", "repro", "--force", "--single-item", "augment")) == ["augment"]
        assert sh(root, "git", "status", "--porcelain") == "", f"{cache} translation cache changed committed files"
    runtime = common.read_json(root / ".cache/runtime/augment.json")["translations"]
    assert runtime["computed"] == 0 and runtime["cached"] > 0  # the warm run: facts for MLflow, not git
    committed = {p: (root / p).read_bytes() for p in ("dvc.lock", "metrics/train.json", "metrics/augment.json")}
    exp = sh(root, "dvc", "exp", "run", "--temp", "-n", "tiny-gamma1", "-S", "loss.gamma=1")
    assert ran_stages(exp) == ["train", "evaluate", "log"]
    shown = json.loads(sh(root, "dvc", "exp", "show", "--json"))
    assert "tiny-gamma1" in json.dumps(shown), "dvc exp show lists the experiment"
    assert {p: (root / p).read_bytes() for p in committed} == committed  # a --temp run leaves the workspace alone

    # The --temp copy (thrown away) logged to the repo's store, under the experiment's name.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("text-classification").experiment_id])
    assert sorted(r.info.run_name != "tiny-gamma1" for r in runs) == [False, True]
    assert {r.data.params["loss.gamma"] for r in runs} == {"1", str(PARAMS["loss"]["gamma"])}
    # Everything above ran with outbound sockets refused, and nothing even tried to connect.
    log = tmp_path / "offline.log"
    assert not log.exists() or log.read_text() == "", log.read_text()


def assert_fresh_clone_logs_one_run(root: Path, clone: Path) -> None:
    """A fresh clone's `dvc repro` rebuilds every output byte for byte, and still logs an MLflow run (the
    log stage's git-ignored out is missing there) with the registered model, the datasets and the
    pipeline's real duration; dvc.lock and `git status` stay clean; the next `dvc repro` logs nothing."""
    from mlflow.tracking import MlflowClient

    sh(root.parent, "git", "clone", "-q", str(root), str(clone))
    # train rebuilds models/train byte for byte, so evaluate (outputs in git) is skipped; log is not.
    assert ran_stages(sh(clone, "dvc", "repro")) == [s for s in STAGES if s != "evaluate"]
    assert sh(clone, "git", "status", "--porcelain") == ""  # same dvc.lock: the log out has the same bytes
    assert ran_stages(sh(clone, "dvc", "repro")) == []
    client = MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("text-classification").experiment_id])
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"train", "val", "test"}
    times = {p.stem: common.read_json(p) for p in (clone / cli.TIMES_DIR).glob("*.json")}
    assert set(times) == {s for s in STAGES if s != "evaluate"}  # every stage that ran, through stages/cli.py
    assert run.info.start_time == int(times["prepare"]["started"] * 1000)  # the pipeline's start, not log's
    assert run.info.end_time >= times["train"]["ended"] * 1000
    (version,) = client.search_model_versions("name='text-classifier'")
    assert version.run_id == run.info.run_id and version.tags["git.commit"] == sh(clone, "git", "rev-parse", "HEAD").strip()


COMMITTED = ["dvc.lock", "metrics", "plots"]  # what a user commits to git after `dvc repro`


def committed_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for item in COMMITTED
            for p in ([root / item] if (root / item).is_file() else sorted((root / item).rglob("*"))) if p.is_file()}


@pytest.mark.slow
def test_repro_killed_during_train_recovers_and_matches_an_uninterrupted_run(tmp_path):
    """SIGKILL mid-train leaves no partial models/train; the next `dvc repro` finishes, and its
    committed files are byte-identical to those of an uninterrupted fresh run (CPU determinism)."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    copy_project(clean)
    tiny_profile(clean)
    shutil.copytree(clean, killed)
    for root in (clean, killed):
        init_repo(root)
    sh(clean, "dvc", "repro")

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(["dvc", "repro"], cwd=killed, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Running stage 'train'" in line:
            break
    time.sleep(3)  # into the training loop
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "Running stage 'train'" in "".join(seen), "".join(seen)[-3000:]
    assert not (killed / "models/train").exists()  # nothing half-written where DVC would look
    assert "train:" in sh(killed, "dvc", "status")

    resumed = sh(killed, "dvc", "repro")
    assert ran_stages(resumed) == ["train", "evaluate", "log"]
    assert "up to date" in sh(killed, "dvc", "status")
    assert not [p for p in killed.rglob("*.tmp") if ".dvc" not in p.parts]  # no temp leftovers
    assert committed_files(killed) == committed_files(clean)


def test_dvc_analytics_and_mlflow_telemetry_are_off():
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / ".dvc/config")
    assert config["core"]["analytics"] == "false"
    makefile = (REPO / "Makefile").read_text()
    assert "export MLFLOW_DISABLE_TELEMETRY := true" in makefile and "export HF_HUB_OFFLINE := 1" in makefile
    assert 'os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")' in (REPO / "stages/log.py").read_text()
