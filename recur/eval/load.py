"""Load a model for evaluation from a run directory, a DCP checkpoint directory or an exported file.

Accepted paths:
    exported/<name>/                   the one model format, a Hugging Face directory (recur/hf_model.py:
                                       utils/export_checkpoint.py and utils/convert_hf.py write it)
    runs/<name>/                       the newest complete checkpoint under checkpoints/
    runs/<name>/checkpoints/step_N/    a DCP checkpoint (trainer_state.json holds the model config)
Older exports still load:
    model.pt                           torch.save({"model": state_dict, "model_config": dict})
    model.safetensors                  weights; the config in the file's metadata["model_config"] (JSON)
                                       or in a sibling config.json ({"model_config": ...})

The model is always built from the config stored with the weights, so a checkpoint whose weights do not
fit its config (or that is no recur checkpoint at all) fails with an error naming the path.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from recur.checkpoint import STATE_FILE, Checkpointer, checkpoint_format, checkpoint_problem
from recur.hf_model import from_pretrained, is_saved_dir, read_config_json, read_model_config
from recur.models import create_model
from recur.models.config import ModelConfig, saved_keys
from recur.models.lm import DecoderLM
from recur.run_dir import RunDir

EXPORT_SUFFIXES = (".pt", ".pth", ".safetensors")


@dataclass
class CheckpointMeta:
    """Where the weights came from, for the metadata block of every result file."""

    path: str  # the file or checkpoint directory actually loaded
    kind: str  # "hf" | "dcp" | "deepspeed" | "torch" | "safetensors"
    run_dir: str | None  # the run the checkpoint belongs to, when it lives in one
    step: int | None  # training step, when known
    tokens: int | None  # training tokens seen, when known
    tokenizer: str | None  # tokenizer spec of the run (config.yaml data.tokenizer), when known
    train_tasks: list[str] | None = None  # tasks the run generated its data from (config.yaml data.tasks)


def model_config_from_dict(data: dict, where: str) -> ModelConfig:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: model_config must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - saved_keys())
    if unknown:
        raise ValueError(
            f"{where}: model_config has fields {unknown} that this version of recur does not know "
            "(checkpoint from another model or a newer version?)"
        )
    return ModelConfig.from_dict(data).resolved()


def run_data(run: RunDir | None) -> tuple[str | None, list[str] | None]:
    """(tokenizer spec, tasks of generated training data) from the run's config.yaml, when it wrote one."""
    if run is None or not run.config.is_file():
        return None, None
    import yaml

    data = (yaml.safe_load(run.config.read_text()) or {}).get("data") or {}
    return data.get("tokenizer"), data.get("tasks") if data.get("path") is None else None


def _check_fits(model: DecoderLM, state_dict: dict, path: Path) -> None:
    """Same parameter names and shapes as the model built from the stored config, or a clear error."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    wrong = [f"{k}: {given[k]} vs {expected[k]}" for k in sorted(set(expected) & set(given)) if given[k] != expected[k]]
    if missing or unexpected or wrong:
        details = "; ".join(
            filter(
                None,
                [
                    f"missing {missing[:3]}" if missing else "",
                    f"unexpected {unexpected[:3]}" if unexpected else "",
                    f"shape {wrong[:3]}" if wrong else "",
                ],
            )
        )
        raise ValueError(
            f"checkpoint {path} is from another model: its weights do not match its "
            f"{model.cfg.variant} config ({details})"
        )


def _load_dcp(path: Path, device: torch.device) -> tuple[DecoderLM, ModelConfig, CheckpointMeta]:
    state = json.loads((path / STATE_FILE).read_text())
    if "model_config" not in state:
        raise ValueError(f"{path / STATE_FILE} has no model_config: not a recur checkpoint")
    cfg = model_config_from_dict(state["model_config"], str(path / STATE_FILE))
    model = create_model(cfg)
    run = RunDir.of_checkpoint(path)
    meta = CheckpointMeta(
        str(path),
        checkpoint_format(path),
        str(run.root) if run else None,
        state.get("step"),
        state.get("tokens"),
        *run_data(run),
    )
    if meta.kind == "deepspeed":  # ZeRO shards, consolidated
        from recur.parallel.deepspeed import zero_fp32_state_dict

        weights = zero_fp32_state_dict(path)
        _check_fits(model, {**weights, **tied_aliases(model, weights)}, path)
        model.load_state_dict({**weights, **tied_aliases(model, weights)})
        return model.to(device), cfg, meta
    model_sd = get_model_state_dict(model)
    stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    stored_model = {k.removeprefix("model."): v for k, v in stored.items() if k.startswith("model.")}
    given = {k: torch.empty(tuple(v.size)) for k, v in stored_model.items() if hasattr(v, "size")}
    _check_fits(model, {**given, **tied_aliases(model, given)}, path)
    bundle = {"model": model_sd}
    with warnings.catch_warnings():  # evaluation is deliberately single-process
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        dcp.load(bundle, checkpoint_id=str(path))
    set_model_state_dict(model, bundle["model"])
    return model.to(device), cfg, meta


def tied_aliases(model: DecoderLM, given: dict) -> dict:
    """get_model_state_dict drops one name of a tied pair; accept either name as present."""
    if model.cfg.tie_embeddings and "tok_embeddings.weight" in given and "lm_head.weight" not in given:
        return {"lm_head.weight": given["tok_embeddings.weight"]}
    if model.cfg.tie_embeddings and "lm_head.weight" in given and "tok_embeddings.weight" not in given:
        return {"tok_embeddings.weight": given["lm_head.weight"]}
    return {}


def _json_or_empty(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_export(path: Path) -> tuple[dict, dict]:
    """(state_dict, model_config dict) of an exported file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if "model_config" in metadata:
            config = json.loads(metadata["model_config"])
        elif "model_config" in (sidecar := _json_or_empty(path.parent / "config.json")):
            config = sidecar["model_config"]
        else:
            raise ValueError(
                f"{path}: no model_config in the safetensors metadata and no recur config.json beside it "
                "(a Hugging Face model? convert it first with utils/convert_hf.py)"
            )
        return load_file(str(path)), config
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a torch archive
        raise ValueError(f"{path} is not a torch checkpoint file: {error}") from error
    if not isinstance(blob, dict) or "model" not in blob or "model_config" not in blob:
        raise ValueError(
            f"{path}: expected a dict with 'model' (state_dict) and 'model_config' (exported by recur); "
            f"got {sorted(blob)[:5] if isinstance(blob, dict) else type(blob).__name__}"
        )
    return blob["model"], blob["model_config"]


def _load_export(path: Path, device: torch.device) -> tuple[DecoderLM, ModelConfig, CheckpointMeta]:
    state_dict, config = _read_export(path)
    cfg = model_config_from_dict(config, str(path))
    model = create_model(cfg)
    state_dict = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}  # torch.compile'd exports
    _check_fits(model, {**state_dict, **tied_aliases(model, state_dict)}, path)
    model.load_state_dict({**state_dict, **tied_aliases(model, state_dict)})
    run = RunDir(path.parent)  # the run the file was exported into, if it has one
    run = run if run.config.is_file() else None
    kind = "safetensors" if path.suffix == ".safetensors" else "torch"
    meta = CheckpointMeta(str(path), kind, str(run.root) if run else None, None, None, *run_data(run))
    return model.to(device), cfg, meta


def _load_saved_dir(path: Path, device: torch.device) -> tuple[DecoderLM, ModelConfig, CheckpointMeta]:
    model = from_pretrained(path, device=device)
    config = read_config_json(path)
    tokenizer = config.get("recur_tokenizer") or (str(path) if (path / "tokenizer_config.json").is_file() else None)
    return model, model.cfg, CheckpointMeta(str(path), "hf", None, None, None, tokenizer)


def resolve_checkpoint(path: str | Path) -> Path:
    """The concrete checkpoint directory or file that `path` designates (newest complete one of a run)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint: {path} does not exist")
    if path.is_file() and is_saved_dir(path.parent):  # the weights file of a saved directory: the directory
        return path.parent
    if is_saved_dir(path):
        return path
    if path.is_file():
        if path.suffix not in EXPORT_SUFFIXES:
            raise ValueError(
                f"--checkpoint: {path} is not a checkpoint (expected a run directory, a checkpoint "
                f"directory or an exported {'/'.join(EXPORT_SUFFIXES)} file)"
            )
        return path
    if (path / STATE_FILE).is_file() or (path / ".metadata").is_file():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise ValueError(f"--checkpoint: {path} is not a complete checkpoint: {problem}")
        return path
    checkpoints = RunDir(path).checkpoints
    if checkpoints.is_dir():
        latest = Checkpointer(checkpoints).latest()
        if latest is None:
            raise ValueError(f"--checkpoint: run {path} has no complete checkpoint under {checkpoints}")
        return latest
    exports = [path / f"model{suffix}" for suffix in EXPORT_SUFFIXES if (path / f"model{suffix}").is_file()]
    if exports:
        return exports[0]
    raise ValueError(
        f"--checkpoint: {path} is not a checkpoint (no config.json with model_type 'recur', "
        "trainer_state.json, checkpoints/ or model.pt)"
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[DecoderLM, ModelConfig, CheckpointMeta]:
    """(model in eval mode on `device`, its resolved config, where it came from)."""
    resolved = resolve_checkpoint(path)
    device = torch.device(device)
    loader = _load_export if resolved.is_file() else _load_saved_dir if is_saved_dir(resolved) else _load_dcp
    model, cfg, meta = loader(resolved, device)
    model.eval()
    return model, cfg, meta


def saved_config(path: str | Path) -> ModelConfig:
    """The model config stored at any path load_model accepts, without building the model when it can."""
    resolved = resolve_checkpoint(path)
    if is_saved_dir(resolved):
        return read_model_config(resolved)
    if resolved.is_dir():
        return model_config_from_dict(
            json.loads((resolved / STATE_FILE).read_text()).get("model_config"), str(resolved / STATE_FILE)
        )
    return model_config_from_dict(_read_export(resolved)[1], str(resolved))


def load_weights_into(model: DecoderLM, path: str | Path) -> None:
    """Copy the weights stored at `path` (any path load_model accepts) into an already-built model of the
    same shape (train.py --init_from)."""
    source = load_model(path)[0].state_dict()
    _check_fits(model, source, Path(path))
    with torch.no_grad():  # copy_ in place, so a model already sharded (DTensor parameters) is filled too
        for name, target in model.state_dict().items():
            target.copy_(source[name])


def list_checkpoints(path: str | Path) -> list[Path]:
    """Every complete checkpoint of a run directory (oldest first), or [path] for a single checkpoint."""
    path = Path(path)
    checkpoints = RunDir(path).checkpoints
    if path.is_dir() and checkpoints.is_dir():
        found = Checkpointer(checkpoints).complete_checkpoints(report=True)
        if not found:
            raise ValueError(f"--checkpoint: run {path} has no complete checkpoint under {checkpoints}")
        return found
    return [resolve_checkpoint(path)]
