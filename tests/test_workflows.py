"""The GitHub Actions workflows: valid to real validators, and calling commands that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / ".github/workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def load(name: str) -> dict:
    # PyYAML reads the `on:` key as True (YAML 1.1); workflows are fine with either.
    data = yaml.safe_load((REPO / ".github/workflows" / name).read_text())
    data["on"] = data.pop(True, data.get("on"))
    return data


def run_steps(workflow: dict) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


def validate(*paths: Path) -> list[subprocess.CompletedProcess]:
    tools = [[str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows"], [str(BIN / "actionlint")]]
    return [subprocess.run([*tool, *map(str, paths)], capture_output=True, text=True) for tool in tools]


def test_workflows_pass_check_jsonschema_and_actionlint():
    assert [p.name for p in WORKFLOWS] == ["report.yml", "test.yml"]
    for done in validate(*WORKFLOWS):
        assert done.returncode == 0, done.stdout + done.stderr


def test_validators_reject_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    # A misspelt key and a job without `runs-on`: both validators must object.
    broken.write_text("name: x\non: pull_request\njobs:\n  a:\n    stepz:\n      - run: echo\n")
    for done in validate(broken):
        assert done.returncode != 0


def test_make_targets_and_modules_called_by_workflows_exist():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    called = [cmd for script in run_steps(load("test.yml")) + run_steps(load("report.yml"))
              for cmd in re.findall(r"\bmake ([\w-]+)", script)]
    assert called and set(called) <= targets, f"workflows call {called}; Makefile has {sorted(targets)}"
    for module in re.findall(r"-m (tools\.\w+)", makefile):
        assert (REPO / (module.replace(".", "/") + ".py")).exists()


def test_test_workflow_runs_the_readme_test_command_on_push_and_pull_request():
    readme = (REPO / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):]
    test_command = re.search(r"^(make \w+)\s+# .*tests", quick, flags=re.M).group(1)
    assert (REPO / ".ci/run").read_text().strip().endswith(test_command)
    workflow = load("test.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    assert run_steps(workflow) == [test_command]
    setup = [s for s in workflow["jobs"]["test"]["steps"] if s.get("uses", "").startswith("actions/setup-python")]
    assert setup[0]["with"] == {"python-version": "3.11", "cache": "pip", "cache-dependency-path": "pyproject.toml"}


def test_report_workflow_comments_once_per_pull_request_with_a_dvc_cache_keyed_on_the_lock():
    workflow = load("report.yml")
    assert list(workflow["on"]) == ["pull_request"]
    assert workflow["permissions"]["pull-requests"] == "write"
    steps = workflow["jobs"]["report"]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # the merge-base must be in the clone
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache"))
    assert ".dvc/cache" in cache["with"]["path"] and "hashFiles('dvc.lock')" in cache["with"]["key"]
    scripts = "\n".join(run_steps(workflow))
    assert scripts.index("dvc checkout --allow-missing") < scripts.index("make repro")  # cached stages are skipped
    assert scripts.index("make repro") < scripts.index("make report") < scripts.index("cml comment create")
    assert "--watermark-title=" in scripts  # updates its own comment instead of adding one per push


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_report_target_passes_base_gate_and_output():
    dry = subprocess.run(["make", "-n", "report", "BASE=origin/main", "FAIL_ON_DROP=0.02", "REPORT=r.md"],
                         cwd=REPO, capture_output=True, text=True)
    assert "-m tools.report --base 'origin/main' --fail-on-drop 0.02 --output 'r.md'" in dry.stdout
