"""A shared DVC remote, for real: `dvc push` from one clone, `dvc pull` in a teammate's fresh clone.

Fast tier: a directory remote and the toy project of tests/toy_remote.py (two stages, outputs in
the DVC cache). Slow tier: an S3 bucket on moto's S3-compatible server, started here on 127.0.0.1,
reached through dvc-s3 by DVC processes that refuse any other address (tests/offline); the pulled
project is the real pipeline on test_pipeline's tiny profile; one named experiment travels between
two clones with `dvc exp push` / `dvc exp pull` through a bare git repo on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from toy_remote import (bare_origin, bucket_keys, clean_env, clone, dvc, git, init_project, moto_s3, output_files,
                        s3_env)

REPO = Path(__file__).resolve().parent.parent
OFFLINE = Path(__file__).resolve().parent / "offline"  # sitecustomize.py: refuses non-loopback sockets


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def remote_objects(storage: Path) -> list[Path]:
    return sorted(p for p in storage.rglob("*") if p.is_file())


def test_push_then_pull_in_a_fresh_clone_restores_the_outputs_and_repro_is_a_noop(tmp_path):
    origin, storage, runs = bare_origin(tmp_path / "origin.git"), tmp_path / "storage", tmp_path / "runs.log"
    env = clean_env(TOY_RUNS_LOG=str(runs))
    alice = init_project(tmp_path / "alice", origin, str(storage), env=env)
    assert runs.read_text().split() == ["prepare", "train"]
    made = output_files(alice)
    assert set(made) == {"data/prepare/train.txt", "models/train/weights.bin", "models/train/pipeline.json"}

    bob = clone(origin, tmp_path / "bob")
    assert not (bob / "models/train").exists() and (bob / "dvc.lock").exists()
    assert "shared" in dvc(bob, "remote", "list", env=env).stdout  # the remote travels in .dvc/config
    missing = dvc(bob, "pull", env=env, check=False)  # nothing pushed yet: fails, naming what is missing
    assert missing.returncode != 0 and "models/train" in missing.stdout + missing.stderr

    pushed = dvc(alice, "push", env=env)
    assert "5 files pushed" in pushed.stdout  # 3 files + the 2 directories' listings
    assert len(remote_objects(storage)) == 5
    assert "Everything is up to date" in dvc(alice, "push", env=env).stdout
    shutil.rmtree(alice)  # only the remote holds the outputs now

    dvc(bob, "pull", env=env)
    assert output_files(bob) == made
    assert dvc(bob, "status", env=env).stdout.strip() == "Data and pipelines are up to date."
    repro = dvc(bob, "repro", env=env)
    assert ran_stages(repro.stdout) == [] and runs.read_text().split() == ["prepare", "train"]
    assert git(bob, "status", "--porcelain") == ""


def test_a_new_output_pushed_by_one_clone_reaches_the_other_with_its_commit(tmp_path):
    origin, storage, runs = bare_origin(tmp_path / "origin.git"), tmp_path / "storage", tmp_path / "runs.log"
    env = clean_env(TOY_RUNS_LOG=str(runs))
    alice = init_project(tmp_path / "alice", origin, str(storage), env=env)
    dvc(alice, "push", env=env)
    bob = clone(origin, tmp_path / "bob")
    dvc(bob, "pull", env=env)
    baseline = output_files(bob)

    params = yaml.safe_load((alice / "params.yaml").read_text())
    params["train"]["gamma"] = 1.0
    (alice / "params.yaml").write_text(yaml.safe_dump(params))
    assert ran_stages(dvc(alice, "repro", env=env).stdout) == ["train"]
    git(alice, "commit", "-qam", "gamma 1")
    dvc(alice, "push", env=env)
    git(alice, "push", "-q", "origin", "main")

    git(bob, "pull", "-q", "origin", "main")
    assert "models/train" in dvc(bob, "status", env=env).stdout  # new dvc.lock, old outputs: stale
    dvc(bob, "pull", env=env)
    pulled = output_files(bob)
    assert pulled == output_files(alice) and pulled["models/train/weights.bin"] != baseline["models/train/weights.bin"]
    assert ran_stages(dvc(bob, "repro", env=env).stdout) == []
    assert runs.read_text().split() == ["prepare", "train", "train"]  # only alice ever computed


def test_report_workflow_pulls_from_the_remote_when_its_secret_is_set_and_caches_otherwise():
    workflow = yaml.safe_load((REPO / ".github/workflows/report.yml").read_text())
    job = workflow["jobs"]["report"]
    assert job["env"]["DVC_REMOTE_URL"] == "${{ secrets.DVC_REMOTE_URL }}"
    steps = job["steps"]
    with_remote = [s for s in steps if s.get("if") == "env.DVC_REMOTE_URL != ''"]
    without = [s for s in steps if s.get("if") == "env.DVC_REMOTE_URL == ''"]
    assert [s["uses"].split("@")[0] for s in without if "uses" in s] == ["actions/cache"]
    assert any("dvc checkout --allow-missing" in s.get("run", "") for s in without)
    pull = next(s for s in with_remote if "dvc pull" in s.get("run", ""))
    assert "dvc remote add --local --default" in pull["run"]
    assert set(pull["env"]) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # credentials only where used
    push = next(s for s in with_remote if "dvc push" in s.get("run", ""))
    order = [s.get("name") for s in steps]
    repro = next(i for i, s in enumerate(steps) if "make repro" in s.get("run", ""))
    assert order.index(pull["name"]) < repro < order.index(push["name"])


# ---------------------------------------------------------------- S3 on loopback (slow)

def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """S3 credentials for the loopback server, with every non-loopback connection refused and logged."""
    env = s3_env(tmp_path, OFFLINE_LOG=str(tmp_path / "offline.log"), **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(OFFLINE), env.get("PYTHONPATH")]))
    for key in [k for k in env if k.startswith("MLFLOW_TRACKING")]:
        del env[key]
    return env


def assert_nothing_left_loopback(tmp_path: Path) -> None:
    log = tmp_path / "offline.log"
    assert not log.exists() or log.read_text() == "", log.read_text()


def tiny_pipeline(root: Path, origin: Path, remote: str, endpoint: str, env: dict[str, str]) -> str:
    """The real pipeline on the tiny profile in `root`, reproduced, committed, pushed with git; its output."""
    from test_pipeline import copy_project, tiny_profile

    copy_project(root)
    tiny_profile(root)
    git(root, "init", "-q", "-b", "main")
    for args in (["init", "-q"], ["config", "core.analytics", "false"], ["remote", "add", "-d", "shared", remote],
                 ["remote", "modify", "shared", "endpointurl", endpoint]):
        dvc(root, *args, env=env)
    out = dvc(root, "repro", env=env).stdout
    git(root, "add", "-A")
    git(root, "commit", "-qm", "tiny baseline")
    git(root, "remote", "add", "origin", str(origin))
    git(root, "push", "-q", "origin", "main")
    return out


@pytest.mark.slow
def test_s3_remote_round_trip_of_the_tiny_pipeline_and_one_experiment(tmp_path):
    origin = bare_origin(tmp_path / "origin.git")
    env = offline_env(tmp_path)
    with moto_s3("team-dvc") as endpoint:
        alice = tmp_path / "alice"
        first = tiny_pipeline(alice, origin, "s3://team-dvc/textclf", endpoint, env)
        assert "Running stage 'train'" in first
        model = {str(p.relative_to(alice)): p.read_bytes() for p in sorted((alice / "models/train").rglob("*"))
                 if p.is_file()}
        assert "models/train/pipeline.json" in model and any(name.endswith(".safetensors") for name in model)

        dvc(alice, "push", env=env)
        keys = bucket_keys(endpoint, "team-dvc")
        assert keys and all(k.startswith("textclf/files/md5/") for k in keys)

        bob = clone(origin, tmp_path / "bob")
        assert not (bob / "models/train").exists()
        dvc(bob, "pull", env=env)
        assert {str(p.relative_to(bob)): p.read_bytes() for p in sorted((bob / "models/train").rglob("*"))
                if p.is_file()} == model
        assert ran_stages(dvc(bob, "repro", env=env).stdout) == []  # pulled outputs match dvc.lock: a no-op
        assert git(bob, "status", "--porcelain") == ""

        # One named experiment: alice runs and shares it, bob fetches and applies it without running anything.
        exp = dvc(alice, "exp", "run", "-n", "tiny-gamma1", "-S", "loss.gamma=1", env=env).stdout
        assert ran_stages(exp) == ["train", "evaluate", "log"]
        exp_weights = (alice / "models/train/model.safetensors").read_bytes()
        assert exp_weights != model["models/train/model.safetensors"]
        dvc(alice, "exp", "push", "origin", "tiny-gamma1", env=env)
        assert "tiny-gamma1" in dvc(bob, "exp", "list", "origin", env=env).stdout

        dvc(bob, "exp", "pull", "origin", "tiny-gamma1", env=env)
        shown = json.loads(dvc(bob, "exp", "show", "--json", env=env).stdout)
        assert "tiny-gamma1" in json.dumps(shown)
        dvc(bob, "exp", "apply", "tiny-gamma1", env=env)
        assert (bob / "models/train/model.safetensors").read_bytes() == exp_weights
        assert yaml.safe_load((bob / "params.yaml").read_text())["loss"]["gamma"] == 1
        assert ran_stages(dvc(bob, "repro", env=env).stdout) == []
    assert_nothing_left_loopback(tmp_path)


@pytest.mark.slow
def test_s3_pull_from_a_wrong_bucket_fails_and_writes_nothing(tmp_path):
    origin = bare_origin(tmp_path / "origin.git")
    with moto_s3("team-dvc") as endpoint:
        alice = init_project(tmp_path / "alice", origin, "s3://team-dvc/toy", {"endpointurl": endpoint},
                             env=s3_env(tmp_path))
        dvc(alice, "push", env=s3_env(tmp_path))
        assert len(bucket_keys(endpoint, "team-dvc")) == 5
        bob = clone(origin, tmp_path / "bob")
        # A teammate's misspelt bucket (moto accepts any credentials, so a wrong bucket stands in for bad access).
        dvc(bob, "remote", "modify", "--local", "shared", "url", "s3://no-such-bucket/toy", env=s3_env(tmp_path))
        failed = dvc(bob, "pull", env=s3_env(tmp_path), check=False)
        assert failed.returncode != 0 and "bucket does not exist" in failed.stderr
        assert not (bob / "models/train").exists()
        dvc(bob, "remote", "modify", "--local", "--unset", "shared", "url", env=s3_env(tmp_path))
        dvc(bob, "pull", env=s3_env(tmp_path))
        assert output_files(bob) == output_files(alice)


def test_bench_times_a_round_trip_and_records_it(tmp_path):
    out = tmp_path / "remote.json"
    done = subprocess.run([sys.executable, str(REPO / "bench/remote_roundtrip.py"), "--sizes-mb", "0.01",
                           "--remotes", "directory", "--output", str(out)], env=clean_env(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert {"date", "commit", "command", "rows"} <= set(result) and len(result["rows"]) == 1
    row = result["rows"][0]
    assert row["remote"] == "directory" and 0 < row["size_mb"] < 0.1
    assert list(row["seconds"]) == ["push", "push (up to date)", "pull (fresh clone)", "repro (no-op)"]
    assert all(s > 0 for s in row["seconds"].values()) and "| directory |" in done.stdout
