"""Data that train.py generates into a run directory (the task mix, its held-out set, the split curriculum's
stories), built once and rebuilt when the settings it was generated from change.

Each such dataset records its *recipe* — the train.py flags it follows from — in its manifest
(`"recipe"`), so a later run can tell whether the data on disk is still what its config asks for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from recur.data.packing import pack_dataset
from recur.data.shard_writer import MANIFEST_NAME
from recur.data.validate import read_manifest

if TYPE_CHECKING:
    from recur.config import DataConfig


def task_recipe(data: DataConfig) -> dict:
    """The flags of a trainer `DataConfig` that generated task data follows from (training and held-out sets
    alike: the held-out set's size and seed are derived from them)."""
    return {
        "--data.tokenizer": data.tokenizer,
        "--data.seq_len": data.seq_len,
        "--data.tasks": list(data.tasks),
        "--data.num_docs": data.num_docs,
        "--data.seed": data.seed,
    }


def stories_recipe(data: DataConfig) -> dict:
    """The flags the split curriculum's generated stories follow from."""
    return {
        "--data.tokenizer": data.tokenizer,
        "--data.seq_len": data.seq_len,
        "--data.text_docs": data.text_docs,
        "--data.seed": data.seed,
    }


def recipe_changes(recorded: dict | None, recipe: dict) -> str:
    """'--flag old -> new; …' for the settings where `recorded` (a manifest's recipe) differs from `recipe`."""
    if recorded is None:
        return "no settings recorded"
    return "; ".join(
        f"{key} {recorded.get(key)!r} -> {value!r}" for key, value in recipe.items() if recorded.get(key) != value
    )


def pack_task_data(out_dir: Path, data: DataConfig, tasks: list[str], num_docs: int, seed: int) -> None:
    """Pack `num_docs` generated task documents into `out_dir` as train.py trains on them (best-fit-decreasing
    rows, loss on the answers only), recording the run's task recipe."""
    pack_dataset(
        out_dir,
        tokenizer=data.tokenizer,
        seq_len=data.seq_len,
        tasks=tasks,
        num_docs=num_docs,
        seed=seed,
        packing="bfd",
        mask_non_assistant=True,
        overwrite=True,
        recipe=task_recipe(data),
    )


def generate_once(out_dir: Path, recipe: dict, build: Callable[[], object], resuming: bool) -> None:
    """Make sure `out_dir` holds data generated from `recipe`, calling `build()` (which must record `recipe`)
    when it holds none or data of another recipe.

    Data of another recipe is regenerated, not refused: generated data is a pure function of its recipe, so
    nothing is lost, and the run's config.yaml then describes the data it really trains on (a refusal would
    only make the user delete a cache by hand). `build()` packs beside `out_dir` and swaps the result in, so a
    failure keeps the old data. A resumed run is the exception: its checkpoints were trained on the recorded
    data, so a difference refuses with one line (train.py normally refuses earlier, from config.yaml); data
    generated before recipes were recorded is kept then, and the loader's dataset fingerprint guards it."""
    if (out_dir / MANIFEST_NAME).exists():
        recorded = read_manifest(out_dir).get("recipe")
        if recorded == recipe or (resuming and recorded is None):
            return
        if resuming:
            raise ValueError(
                f"--checkpoint.resume: {out_dir} was generated with other settings "
                f"({recipe_changes(recorded, recipe)}); resume with the recorded ones or start a new --run_name"
            )
        print(
            f"[data] {out_dir} was generated with other settings ({recipe_changes(recorded, recipe)}); regenerating",
            file=sys.stderr,
        )
    build()
