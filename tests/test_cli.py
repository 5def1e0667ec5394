"""stages/cli.py: how a stage command fails (one line for user errors), and the stage times it records."""

import json

from stages import cli, common


def stage_command(root, *args, **env):
    """`python -m stages.alpha` on the pipeline files under `root` (PIPELINE_ROOT)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**{k: v for k, v in os.environ.items() if k not in ("PIPELINE_DEBUG", "DVC_STAGE")},
           "PIPELINE_ROOT": str(root), **env}
    return subprocess.run([sys.executable, "-m", "stages.alpha", *args], cwd=Path(common.__file__).parent.parent,
                          env=env, capture_output=True, text=True, timeout=120)


def alpha_root(root, method="inverse", train_lines=None):
    common.write_text(root / "params.yaml", f"alpha:\n  method: {method}\n  beta: 0.999\n")
    common.write_json(root / "data/prepare/labels.json", ["neg", "pos"])
    lines = train_lines or [json.dumps({"id": str(i), "text": "t", "label": ["neg", "pos"][i % 2]}) for i in range(4)]
    common.write_text(root / "data/augment/train.jsonl", "\n".join(lines) + "\n")
    return root


def test_a_bad_param_is_one_error_line_naming_stage_key_and_fix(tmp_path):
    done = stage_command(alpha_root(tmp_path, method="inverse_sqrt"))
    assert done.returncode == 1 and not (tmp_path / "metrics").exists()
    assert done.stderr.splitlines() == [
        "alpha: error: alpha.method: 'inverse_sqrt' is not one of ['inverse', 'effective_number', 'none'] "
        "(PIPELINE_DEBUG=1 shows the traceback)"]


def test_pipeline_debug_shows_the_traceback_of_a_user_error(tmp_path):
    done = stage_command(alpha_root(tmp_path, method="inverse_sqrt"), PIPELINE_DEBUG="1")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "ParamsError: alpha.method" in done.stderr


def test_a_missing_input_file_is_a_user_error(tmp_path):
    alpha_root(tmp_path)
    (tmp_path / "data/prepare/labels.json").unlink()
    done = stage_command(tmp_path)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("alpha: error: [Errno 2] No such file or directory") and "labels.json" in done.stderr


def test_an_error_raised_inside_a_library_keeps_its_traceback(tmp_path):
    done = stage_command(alpha_root(tmp_path, train_lines=['{"id": "0", "text": "t", "label": "neg"}', "{not json"]))
    assert done.returncode == 1 and "alpha: error" not in done.stderr
    assert "Traceback (most recent call last)" in done.stderr and "json.decoder.JSONDecodeError" in done.stderr


def test_under_dvc_a_stage_records_its_start_end_and_launching_process(tmp_path):
    import os
    import time

    import psutil

    before = time.time()
    done = stage_command(alpha_root(tmp_path), DVC_STAGE="alpha")
    assert done.returncode == 0, done.stderr
    times = common.read_json(tmp_path / cli.TIMES_DIR / "alpha.json")
    assert before <= times["started"] <= times["ended"] <= time.time()
    assert times["launcher"] == f"{os.getpid()}@{psutil.Process().create_time():.2f}"  # this test ran it
    (tmp_path / cli.TIMES_DIR / "alpha.json").unlink()
    assert stage_command(tmp_path).returncode == 0 and not (tmp_path / cli.TIMES_DIR / "alpha.json").exists()


def test_the_launcher_is_the_same_when_dvc_runs_the_stage_through_a_shell(tmp_path):
    """DVC runs each cmd as `$SHELL -c cmd` (/bin/sh when SHELL is unset, as in CI). dash keeps
    itself as the stage's parent, so each stage would get its own launcher and the MLflow run would
    start at `log` instead of at the pipeline's first stage (the CI failure of stop 18)."""
    import os
    import shlex
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import psutil

    me = f"{os.getpid()}@{psutil.Process().create_time():.2f}"
    env = {**os.environ, "PIPELINE_ROOT": str(alpha_root(tmp_path)), "DVC_STAGE": "alpha"}
    cmd = f"{shlex.quote(sys.executable)} -m stages.alpha"
    shells = [s for s in ("/bin/sh", shutil.which("dash"), shutil.which("bash")) if s]
    for shell in dict.fromkeys(shells):
        done = subprocess.run([shell, "-c", cmd], cwd=Path(common.__file__).parent.parent, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert common.read_json(tmp_path / cli.TIMES_DIR / "alpha.json")["launcher"] == me, shell
