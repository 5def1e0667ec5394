"""Which commit `tools.report` compares with: the merge-base with main, or on main HEAD~1 (HEAD when the
workspace has uncommitted changes); in a shallow clone it is fetched from origin when possible."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from stages.common import ROOT


class BaseUnavailable(RuntimeError):
    """The base revision is not in this clone and could not be fetched."""


def git(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def has_commit(rev: str, root: Path) -> bool:
    return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", root=root).returncode == 0


def fetch_for(rev: str | None, root: Path) -> str:
    """Try to make `rev` (None: main, for a merge-base) available from origin; say what happened.

    A shallow clone is deepened fully, so merge-bases and `HEAD~1` resolve; a branch name is
    fetched into `origin/<name>` (a single-branch clone does not track it otherwise).
    """
    shallow = git("rev-parse", "--is-shallow-repository", root=root).stdout.strip() == "true"
    name = (rev or "main").removeprefix("origin/")
    if re.fullmatch(r"[0-9a-f]{7,40}", name):
        refspecs = [name]
    elif re.fullmatch(r"[\w./-]+", name):
        refspecs = [f"+refs/heads/{name}:refs/remotes/origin/{name}"]
    else:  # HEAD~1 and the like: only more history can help
        refspecs = []
    args = ["fetch", "--no-tags", "--quiet", *(["--unshallow"] if shallow else []), "origin", *refspecs]
    done = git(*args, root=root)
    return "fetched from origin" if done.returncode == 0 else f"`git {' '.join(args)}` failed: {done.stderr.strip()}"


def workspace_is_dirty(root: Path) -> bool:
    """Whether tracked files (params.yaml, dvc.lock, metrics, code) differ from HEAD; untracked ones don't count."""
    return bool(git("status", "--porcelain", "--untracked-files=no", root=root).stdout.strip())


def default_base(root: Path, workspace: bool = True) -> tuple[str, str]:
    """(base rev, how it was chosen): merge-base with main; on main, HEAD~1, or HEAD when the
    workspace is reported and has uncommitted changes (e.g. an applied `dvc exp run`), so the
    last commit's changes are not mixed into the workspace's."""
    branch = git("rev-parse", "--abbrev-ref", "HEAD", root=root).stdout.strip()
    head = git("rev-parse", "HEAD", root=root).stdout.strip()
    mains = [m for m in ("main", "origin/main") if has_commit(m, root)]
    if branch == "main" or (mains and git("rev-parse", mains[0], root=root).stdout.strip() == head):
        if workspace and workspace_is_dirty(root):
            return "HEAD", "the last commit on main; the workspace has uncommitted changes"
        return "HEAD~1", "the previous commit on main"
    for main in mains:
        done = git("merge-base", "HEAD", main, root=root)
        if done.returncode == 0:
            return done.stdout.strip(), f"merge-base with {main}"
    raise BaseUnavailable("no merge-base with main in this clone")


def resolve_base(base: str | None, root: Path, workspace: bool = True) -> tuple[str, str]:
    """The base commit and how it was found; fetches once when a shallow clone lacks it."""
    for attempt in range(2):
        try:
            rev, how = (base, "given") if base else default_base(root, workspace)
        except BaseUnavailable as err:
            rev, how, problem = None, "", str(err)
        else:
            if has_commit(rev, root):
                full = git("rev-parse", f"{rev}^{{commit}}", root=root).stdout.strip()
                short = git("rev-parse", "--short", full, root=root).stdout.strip()
                return short, how if rev in (full, short) else f"{rev}, {how}"
            problem = f"`{rev}` is not in this clone"
        if attempt == 0:
            fetched = fetch_for(base, root)
    raise BaseUnavailable(f"cannot compare: {problem} ({fetched}). "
                          "Fetch more history (`git fetch --unshallow`, or `fetch-depth: 0` in CI) or pass BASE=<rev>.")
