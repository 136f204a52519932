"""Atomic writes: a reader sees the old output or the new one, never a half-written one or leftovers."""

import os
import tempfile

import pytest

from edn_pipeline.files import atomic_folder, atomic_write, remove_stale_temporaries


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


def test_atomic_folder_refuses_to_replace_a_file(tmp_path):
    (tmp_path / "repo").write_text("keep")
    with pytest.raises(FileExistsError), atomic_folder(tmp_path / "repo"):
        pytest.fail("the block ran")
    assert [p.name for p in tmp_path.iterdir()] == ["repo"] and (tmp_path / "repo").read_text() == "keep"


def test_only_the_temporaries_atomic_write_leaves_for_the_given_outputs_are_removed(tmp_path):
    (tmp_path / "sub").mkdir()
    # what a killed atomic_write leaves: mkstemp's own names with its prefix and suffix
    for folder, name in ((tmp_path, "a.png"), (tmp_path, "a.png"), (tmp_path / "sub", "b.png")):
        os.close(tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")[0])
    kept = [".c.png.abcdefgh.tmp", ".a.png.tmp", "a.png.abcdefgh.tmp", ".a.png.ABCDEFGH.tmp", ".a.png.abcdefg.tmp"]
    for name in kept + ["a.png"]:
        (tmp_path / name).write_text("not ours")
    (tmp_path / "sub" / ".b.png.abcdefgh.tmp").mkdir()  # a folder, whatever its name
    outputs = [tmp_path / "a.png", tmp_path / "sub" / "b.png", tmp_path / "missing" / "c.png"]
    assert remove_stale_temporaries(outputs) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["a.png", "sub"])
    assert [p.name for p in (tmp_path / "sub").iterdir()] == [".b.png.abcdefgh.tmp"]
