"""Figures are written atomically even when several processes refresh the same file (parallel sweeps)."""

import multiprocessing
from pathlib import Path

import matplotlib.pyplot as plt

from recur.eval.plots import save_figure


def _save_many(path: str, times: int) -> None:
    for i in range(times):
        fig, ax = plt.subplots()
        ax.plot([0, i])
        save_figure(fig, Path(path))


def test_processes_saving_one_figure_do_not_collide(tmp_path):
    path = tmp_path / "sweep_depth.png"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(str(path), 15)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
