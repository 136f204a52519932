"""Atomic writes: a reader sees the old output or the new one, never a half-written one or leftovers."""

import os

import pytest

from edn_pipeline.files import atomic_folder, atomic_write


def test_atomic_write_replaces_the_file_only_when_complete(tmp_path):
    target = tmp_path / "out" / "result.json"
    with atomic_write(target, "w") as f:
        f.write("first")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("half")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_atomic_folder_swaps_in_the_new_folder_and_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "model"
    with atomic_folder(target) as staging:
        (staging / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "weights").write_text("v2, half")
        raise RuntimeError("export failed")
    assert (target / "weights").read_text() == "v1"
    with atomic_folder(target) as staging:
        (staging / "weights").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["weights"]
    assert (target / "weights").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging or old folders left beside it


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "image.png") as f:
            f.write(b"png")
        with atomic_folder(tmp_path / "repo") as staging:
            (staging / "model_index.json").write_text("{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "image.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "repo").stat().st_mode & 0o777 == 0o755
