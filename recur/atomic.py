"""Atomic writes: a file or directory appears at its final path only once it is complete.

Everything recur writes for later readers (checkpoints, datasets, model directories, results, figures) goes
through here. The work happens under a hidden sibling temporary name (same directory, so same filesystem,
so the final rename is atomic); the name carries the process id, so processes writing the same path at once
stay apart.

- `atomic_path(path)`: yields a temporary file path; renamed over `path` when the block succeeds, removed
  when it raises (an existing `path` is then left exactly as it was).
- `atomic_dir(path)`: yields a fresh empty temporary directory; when the block succeeds an existing `path`
  is moved aside, the new directory renamed in and the old one removed; when it raises the temporary
  directory is removed and `path` (an older directory, or nothing) is left as it was.
- `replace(src, dst)`: the commit step of both, for writers that cannot use a block (a checkpoint is
  written by every rank between barriers and committed by rank 0).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_sibling(path: str | Path, tag: str = "tmp") -> Path:
    """A hidden name next to `path` for work in progress: ``.<name>.<tag>-<pid>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def replace(src: str | Path, dst: str | Path) -> None:
    """Rename `src` over `dst` atomically. A directory cannot be renamed over a non-empty one, so a directory
    `dst` replaced by a directory `src` is moved aside first (a hidden sibling name), then removed once `src`
    is in place."""
    src, dst = Path(src), Path(dst)
    old = None
    if src.is_dir() and dst.is_dir() and not dst.is_symlink():
        old = temp_sibling(dst, "old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces `path` only if the block succeeds. The temporary
    name does not end in `path`'s suffix, so a writer that infers the format from the name needs it given."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh empty temporary sibling directory to fill; it replaces `path` only if the block
    succeeds (old directory moved aside, new one renamed in, old one removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = temp_sibling(path)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    replace(work, path)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str, encoding: str | None = None) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
