"""The stages' command-line entry: one-line user errors, and when each stage started and ended.

`cli("train", main)` runs a stage's `main`: a user error (bad params or data, raised by this project
with a message that says how to fix it) prints one `<stage>: error: ...` line and exits 1; the
traceback only with PIPELINE_DEBUG=1. Errors raised inside libraries keep their traceback.

Used by: every stage module's `__main__`, tools/predict.py, stages/log.py (the stage times).
"""

from __future__ import annotations

import linecache
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any

from stages.common import ROOT, RUNTIME_DIR, write_json

DEBUG_ENV = "PIPELINE_DEBUG"  # PIPELINE_DEBUG=1: a user error shows its traceback too
CODE_DIRS = {Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "tools"}
# When each stage started and ended, and which process launched it (the `dvc repro` that runs
# them all): the log stage gives its MLflow run the pipeline's real start and end from these.
TIMES_DIR = RUNTIME_DIR / "times"


SHELLS = {"sh", "dash", "bash", "zsh", "ksh", "fish"}


def launcher() -> str:
    """The process that launched this stage, as pid + start time (pids are reused): one id per
    `dvc repro` / `dvc exp run`. DVC runs each cmd through $SHELL (or /bin/sh when SHELL is unset,
    as in CI); dash does not exec a lone command, so the shell in between is skipped."""
    import psutil

    proc = psutil.Process(os.getppid())
    while proc.name() in SHELLS and (parent := proc.parent()) is not None:
        proc = parent
    return f"{proc.pid}@{proc.create_time():.2f}"


def is_user_error(err: BaseException) -> bool:
    """A ValueError/OSError raised on purpose by this project (a `raise` in stages/ or tools/, or a file it
    could not open): bad params or data, whose message says how to fix it. Anything raised inside a
    library, or another type, is unexpected and keeps its traceback."""
    if not isinstance(err, (ValueError, OSError)) or err.__traceback__ is None:
        return False
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename)
    if path.parent not in CODE_DIRS:
        return False
    return isinstance(err, OSError) or linecache.getline(str(path), tb.tb_lineno).lstrip().startswith("raise")


def cli(stage: str, main: typing.Callable[[], Any]) -> None:
    """Run `main` as the command `python -m stages.<stage>`: a user error prints one
    `<stage>: error: ...` line and exits 1 (the traceback with PIPELINE_DEBUG=1). On success under
    DVC (which sets DVC_STAGE), the stage's start and end go to .cache/runtime/times/<stage>.json."""
    started = time.time()
    try:
        main()
    except (ValueError, OSError) as err:
        if os.environ.get(DEBUG_ENV) or not is_user_error(err):
            raise
        sys.exit(f"{stage}: error: {str(err).removeprefix(f'{stage}: ')} ({DEBUG_ENV}=1 shows the traceback)")
    if "DVC_STAGE" in os.environ and "LOCAL_RANK" not in os.environ:  # torchrun: its launcher records it
        write_json(ROOT / TIMES_DIR / f"{stage}.json", {"started": started, "ended": time.time(),
                                                        "launcher": launcher()})
