"""A throwaway git + DVC project whose outputs live in the DVC cache, and the remotes to share it through.

Two stages, shaped like the real pipeline's: `prepare` writes data/prepare/train.txt, `train` writes the
directory models/train/ (weights.bin: seeded random bytes, `train.size_kb` of them; pipeline.json: the
params it was made with) and metrics/train.json (small, in git). Every time a stage's command runs it
appends its name to $TOY_RUNS_LOG, so a test can tell a no-op `dvc repro` from one that recomputed.

Remotes: a bare git repo on disk (`origin`, for code, dvc.lock and experiment refs) and a DVC remote,
either a directory or an S3 bucket on an S3-compatible server that `moto_s3` starts on loopback.
Used by tests/test_remote.py and bench/remote_roundtrip.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from loopback import free_port

STAGE = '''import json, os, random, sys, yaml
stage, p = sys.argv[1], yaml.safe_load(open("params.yaml"))
if os.environ.get("TOY_RUNS_LOG"):
    with open(os.environ["TOY_RUNS_LOG"], "a") as log:
        log.write(stage + "\\n")
if stage == "prepare":
    os.makedirs("data/prepare", exist_ok=True)
    with open("data/prepare/train.txt", "w") as f:
        f.write("".join(f"review {i} label {i % 3}\\n" for i in range(p["prepare"]["rows"])))
else:
    rows = open("data/prepare/train.txt").read().count("\\n")
    rng = random.Random(f"{p['seed']}-{p['train']['gamma']}-{rows}")
    os.makedirs("models/train", exist_ok=True)
    with open("models/train/weights.bin", "wb") as f:
        f.write(rng.randbytes(p["train"]["size_kb"] * 1024))
    json.dump({"params": p["train"], "seed": p["seed"]}, open("models/train/pipeline.json", "w"))
    os.makedirs("metrics", exist_ok=True)
    json.dump({"loss": round(rng.random(), 6), "rows": rows}, open("metrics/train.json", "w"))
'''
DVC_YAML = {"stages": {
    "prepare": {"cmd": f"{sys.executable} stage.py prepare", "deps": ["stage.py"], "params": ["prepare"],
                "outs": ["data/prepare"]},
    "train": {"cmd": f"{sys.executable} stage.py train", "deps": ["stage.py", "data/prepare"],
              "params": ["seed", "train"], "outs": ["models/train"],
              "metrics": [{"metrics/train.json": {"cache": False}}]},
}}
PARAMS = {"seed": 0, "prepare": {"rows": 30}, "train": {"gamma": 2.0, "size_kb": 64}}
OUTPUTS = ["data/prepare", "models/train"]  # what lives in the DVC cache (and the remote), not in git


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without DVC_/GIT_ variables (a test runner's would leak into the toy repos)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "GIT_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return {**env, **extra}


def sh(cwd: Path, *cmd: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True)
    assert not check or done.returncode == 0, f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout}\n{done.stderr}"
    return done


def dvc(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return sh(cwd, sys.executable, "-m", "dvc", *args, env=env, check=check)


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return sh(cwd, "git", "-c", "user.name=t", "-c", "user.email=t@t", *args, env=env).stdout


def bare_origin(path: Path) -> Path:
    """An empty bare git repo on disk: the team's git server."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "--bare", "-b", "main")
    return path


def init_project(root: Path, origin: Path, remote_url: str, remote_options: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, **params: dict) -> Path:
    """The toy project in `root`: default DVC remote `shared` at `remote_url`, reproduced, committed and
    pushed to `origin` with git (the DVC outputs are not pushed: that is the caller's `dvc push`)."""
    root.mkdir(parents=True)
    (root / "stage.py").write_text(STAGE)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    values = {**PARAMS, **{k: {**PARAMS[k], **v} for k, v in params.items()}}
    (root / "params.yaml").write_text(yaml.safe_dump(values))
    git(root, "init", "-q", "-b", "main")
    dvc(root, "init", "-q", env=env)
    dvc(root, "config", "core.analytics", "false", env=env)
    dvc(root, "remote", "add", "-d", "shared", remote_url, env=env)
    for option, value in (remote_options or {}).items():
        dvc(root, "remote", "modify", "shared", option, value, env=env)
    dvc(root, "repro", "-q", env=env)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "toy baseline")
    git(root, "remote", "add", "origin", str(origin))
    git(root, "push", "-q", "origin", "main")
    return root


def clone(origin: Path, dest: Path) -> Path:
    """A teammate's fresh clone: code and dvc.lock from git, no DVC cache, no outputs."""
    git(dest.parent, "clone", "-q", str(origin), dest.name)
    return dest


def output_files(root: Path) -> dict[str, bytes]:
    """Every file of the DVC-cached outputs, by path."""
    return {str(p.relative_to(root)): p.read_bytes() for out in OUTPUTS
            for p in sorted((root / out).rglob("*")) if p.is_file()}


def s3_env(home: Path, **extra: str) -> dict[str, str]:
    """Credentials for the loopback S3 server, and no AWS config or instance metadata from this machine."""
    return clean_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                     AWS_CONFIG_FILE=str(home / "aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-creds"),
                     AWS_EC2_METADATA_DISABLED="true", **extra)


@contextlib.contextmanager
def moto_s3(bucket: str):
    """An S3-compatible server (moto's server mode) on 127.0.0.1 with `bucket` created; yields its URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        # moto keeps its buckets in module state that outlives a server: start from none.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


def bucket_keys(endpoint: str, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))
