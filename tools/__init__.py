"""Tools around the pipeline (not DVC stages): the comparison report and the experiment grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def dvc_json(root: Path, *args: str) -> Any:
    """The parsed stdout of `dvc <args> --json` run in `root`; a failure raises with DVC's message."""
    cmd = [sys.executable, "-m", "dvc", *args, "--json"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout or "null")
