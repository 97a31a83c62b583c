"""Run retrofitting-recurrence's loader (the reference) over a copy of the bench data, if it is present.

The reference is not vendored: put the repository's ``stateful_parquet_dataset.py`` at
``third_party/retrofitting-recurrence/stateful_parquet_dataset.py`` (git-ignored); it imports ``natsort``
and ``torchdata``. It streams rows (shuffled within each row group, files shuffled) and is batched here by
its own ``generic_collator``, as its ``get_parquet_dataloader`` does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "third_party" / "retrofitting-recurrence" / "stateful_parquet_dataset.py"


def load_reference(path: Path = REFERENCE) -> tuple[ModuleType | None, str]:
    """(the reference module, "") or (None, why it cannot be run)."""
    if not path.is_file():
        return None, f"{path.relative_to(ROOT)} is absent"
    spec = importlib.util.spec_from_file_location("retrofit_stateful_parquet_dataset", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as err:
        return None, f"{path.relative_to(ROOT)} needs {err.name or err}"
    return module, ""


def reference_epoch_tokens(module: ModuleType, folder: Path, num_rows: int, batch_size: int) -> int:
    """Tokens of one epoch (``num_rows`` rows) of the reference on one rank, batched like its training loader.

    The epoch is cut off at its last row: past the last file the reference's iterator raises IndexError
    (its "New file" message indexes the file after the last one).
    """
    dataset = module.ParquetStreamPure(
        dataset_folder_path=str(folder), seed=42, shuffle=True, num_processes=1, process_rank=0, stateful=True
    )
    tokens, rows = 0, []
    for index, row in enumerate(dataset):
        rows.append(row)
        if len(rows) == batch_size:
            tokens += module.generic_collator(rows)["input_ids"].numel()
            rows = []
        if index + 1 == num_rows:
            return tokens
    raise ValueError(f"{folder}: the reference loader ended after {index + 1} of {num_rows} rows")
