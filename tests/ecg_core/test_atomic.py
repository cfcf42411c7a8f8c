"""Atomic writers: the target holds the old content or the new, never a part; no temporary file is left."""
import json
import os

import numpy as np
import pytest

from ecg_core.atomic import open_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic


def _names(directory):
    return sorted(p.name for p in directory.iterdir())


def test_write_json_atomic_numpy_scalars_mode_and_failure(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_json_atomic(path, {"b": np.int64(2), "a": np.float64(0.5), "p": tmp_path / "q"})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 2, "p": str(tmp_path / "q")}
    os.chmod(path, 0o600)
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text())["b"] == 2                       # untouched
    write_json_atomic(path, [1])
    assert (path.stat().st_mode & 0o777) == 0o600                      # mode kept
    assert _names(path.parent) == ["x.json"]                           # no temporary left
    assert json.loads(path.read_text()) == [1]


def test_open_atomic_streams_a_large_archive_and_publishes_it_whole(tmp_path):
    path = tmp_path / "emb.npz"
    arrays = {"emb": np.random.default_rng(0).standard_normal((2000, 512), dtype=np.float32)}
    with open_atomic(path) as out:
        np.savez(out, **arrays)
        assert not path.exists(), "nothing is visible under the target name before the block ends"
    with np.load(path) as npz:
        assert np.array_equal(npz["emb"], arrays["emb"])
    assert (path.stat().st_mode & 0o777) == 0o644
    assert _names(tmp_path) == ["emb.npz"]


def test_open_atomic_error_inside_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError, match="midway"):
        with open_atomic(path, "w") as out:
            out.write("new, half")
            raise RuntimeError("midway")
    assert path.read_text() == "old\n"
    assert _names(tmp_path) == ["a.txt"]


def test_failed_rename_over_a_directory_leaves_it_and_no_temporary(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"data")
    assert (target / "keep").read_text() == "x"
    assert _names(tmp_path) == ["d"]


def test_open_atomic_refuses_other_modes(tmp_path):
    with pytest.raises(ValueError, match="'a'"):
        with open_atomic(tmp_path / "x", "a"):
            pass
    assert _names(tmp_path) == []
