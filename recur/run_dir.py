"""The files of one run directory (`--out_dir/--run_name`), named in one place instead of as literals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunDir | None:
        """The run a checkpoint directory (<run>/checkpoints/step_N) belongs to; None for one outside a run."""
        return cls(checkpoint.parent.parent) if checkpoint.parent.name == "checkpoints" else None

    @property
    def config(self) -> Path:
        """The run's resolved config (config.yaml): a resume is checked against its RESUME_INVARIANTS."""
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def summary(self) -> Path:
        """summary.json, written last: its presence marks a finished run."""
        return self.root / "summary.json"

    @property
    def eval_log(self) -> Path:
        """eval.jsonl: one record per evaluation during training (recur/eval/during_training.py)."""
        return self.root / "eval.jsonl"

    @property
    def accuracy_plot(self) -> Path:
        return self.root / "accuracy.png"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def nan_report(self) -> Path:
        return self.root / "nan_report.json"

    @property
    def started(self) -> tuple[Path, ...]:
        """What a run leaves in its directory from its start on (train.py removes the directory of a run that
        fails before its first step): any of them means the --run_name is taken."""
        return self.config, self.metrics, self.checkpoints

    @property
    def train_data(self) -> Path:
        """The generated training data (the held-out set lies next to it, in val_data)."""
        return self.root / "data" / "train"

    @property
    def val_data(self) -> Path:
        return self.root / "data" / "val"

    @property
    def alg_data(self) -> Path:
        """The algorithmic part of a split curriculum (--data.alg_tokens), as data/curriculum.py packs it."""
        return self.root / "data" / "alg"
