"""A throwaway git + DVC repo with a one-stage toy pipeline, for tests of the compare tooling.

Its `evaluate` stage writes metrics/evaluate.json as a known function of params.yaml
(loss.gamma, alpha.method, seed), so diffs and grids have exact expected values:
macro_f1 = 0.5 + 0.1 (gamma - 2) + 0.05 [method == inverse] + 0.01 seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

SCORE = '''import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
f1 = round(0.5 + 0.1 * (p["loss"]["gamma"] - 2) + 0.05 * (p["alpha"]["method"] == "inverse") + 0.01 * p["seed"], 4)
os.makedirs("metrics", exist_ok=True)
json.dump({"accuracy": 0.7, "macro_f1": f1, "weighted_f1": 0.68, "ece": 0.1, "ce_loss": 0.8, "n_test": 10,
           "per_class": {"neutral": {"f1": round(f1 / 2, 4), "support": 3}, "positive": {"f1": 0.8, "support": 7}}},
          open("metrics/evaluate.json", "w"))
'''
DVC_YAML = {"stages": {"evaluate": {"cmd": f"{sys.executable} score.py", "deps": ["score.py"],
                                    "params": ["seed", "loss.gamma", "alpha.method"],
                                    "metrics": [{"metrics/evaluate.json": {"cache": False}}]}}}
PARAMS = {"seed": 0, "loss": {"gamma": 2.0}, "alpha": {"method": "inverse"}}


def sh(root: Path, *cmd: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "GIT_"))}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(root: Path, *args: str) -> str:
    return sh(root, sys.executable, "-m", "dvc", *args)


def commit(root: Path, message: str) -> None:
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


def set_params(root: Path, **changes: dict) -> None:
    """Update params.yaml sections (e.g. loss={"gamma": 1.0}) and reproduce."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    dvc(root, "repro", "-q")


def init_repo(root: Path) -> Path:
    """git + dvc repo on branch main with the toy pipeline reproduced and committed."""
    root.mkdir(parents=True)
    (root / "score.py").write_text(SCORE)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    sh(root, "git", "init", "-q", "-b", "main")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    dvc(root, "repro", "-q")
    commit(root, "baseline")
    return root
