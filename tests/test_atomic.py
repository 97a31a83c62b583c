"""recur.atomic: files and directories appear only complete; a failure leaves the old one and no temp behind."""

from pathlib import Path

import pytest

from recur import atomic


class Boom(Exception):
    pass


def test_file_appears_only_complete(tmp_path: Path):
    path = tmp_path / "out.json"
    with atomic.atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".")
        tmp.write_text("part")
        assert not path.exists()  # nothing at the final name while it is being written
        with open(tmp, "a") as f:
            f.write("ial")
    assert path.read_text() == "partial"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_file_replaces_an_existing_one(tmp_path: Path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    atomic.write_text(path, "new")
    assert path.read_text() == "new"
    atomic.write_bytes(path, b"bytes")
    assert path.read_bytes() == b"bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_file_write_leaves_old_file_and_no_temp(tmp_path: Path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(Boom):
        with atomic.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise Boom
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_write_before_any_temp_file(tmp_path: Path):
    with pytest.raises(Boom):
        with atomic.atomic_path(tmp_path / "never.txt"):
            raise Boom
    assert list(tmp_path.iterdir()) == []


def test_dir_swap(tmp_path: Path):
    out = tmp_path / "parent" / "model"  # the parent is created
    with atomic.atomic_dir(out) as work:
        assert work.is_dir() and not any(work.iterdir()) and work.parent == out.parent
        (work / "a").write_text("1")
        assert not out.exists()
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with atomic.atomic_dir(out) as work:  # replaces the whole old directory
        (work / "b").write_text("2")
        assert (out / "a").exists()  # the old directory is intact until the block succeeds
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert [p.name for p in out.parent.iterdir()] == ["model"]  # neither temp nor old directory left


def test_failed_dir_swap_keeps_old_dir(tmp_path: Path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep").write_text("old")
    with pytest.raises(Boom):
        with atomic.atomic_dir(out) as work:
            (work / "new").write_text("half")
            raise Boom
    assert sorted(p.name for p in out.iterdir()) == ["keep"] and (out / "keep").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_failed_dir_swap_without_old_dir(tmp_path: Path):
    with pytest.raises(Boom):
        with atomic.atomic_dir(tmp_path / "data"):
            raise Boom
    assert list(tmp_path.iterdir()) == []


def test_replace_swaps_directories_and_keeps_file_semantics(tmp_path: Path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "new").write_text("n")
    dst.mkdir()
    (dst / "old").write_text("o")
    atomic.replace(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]
    assert sorted(p.name for p in dst.iterdir()) == ["new"]
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OSError):  # a file is never renamed over a directory (as os.replace)
        atomic.replace(f, dst)
    assert (dst / "new").exists() and f.exists()
