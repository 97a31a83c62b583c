"""The one on-disk model format: a Hugging Face directory that recur and transformers both load.

    save_pretrained(model, "out/")            -> out/model.safetensors, config.json, generation_config.json,
                                                 modeling_recur.py (+ tokenizer files)
    model = from_pretrained("out/")           -> the same model, bit-exact in fp32
    load_pretrained_into(model, "out/")       -> fill an already-built model (trainer --init_from)

config.json is flat like a transformers config: `model_type: "recur"`, every `ModelConfig` field (so the
loop structure n_prelude / n_core / n_coda, injection and default_num_steps are on record) and, for
converted models, a `conversion` block naming the source checkpoint and which layers went where. A tied
head is stored once (safetensors forbids aliased tensors) and re-tied on load. `auto_map` points
transformers' AutoConfig / AutoModelForCausalLM at the copied modeling_recur.py (trust_remote_code=True).
Every file is written 0644: an export is meant to be shared.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from recur.atomic import atomic_dir
from recur.models import create_model
from recur.models.config import ModelConfig, saved_keys
from recur.models.lm import DecoderLM

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
MODELING_FILE = Path(__file__).with_name("modeling_recur.py")
PACKAGE_DIR = Path(__file__).parent
SOURCE_DIR = "recur_src"  # modeling_recur.SOURCE_DIR
AUTO_MAP = {"AutoConfig": "modeling_recur.RecurConfig", "AutoModelForCausalLM": "modeling_recur.RecurForCausalLM"}
# Fields that change behaviour but not a single weight shape: a loader may override them.
RUNTIME_FIELDS = ("attn_backend", "dropout", "default_num_steps", "max_seq_len", "init_state", "init_state_std")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _tied(model: nn.Module) -> bool:
    return model.lm_head.weight is model.tok_embeddings.weight


def _state_to_save(model: nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    state = {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    if _tied(model):
        state.pop("lm_head.weight")
    return state


def generation_config(cfg: ModelConfig, special_ids: dict[str, int | None]) -> dict:
    """transformers' generation defaults: the model's recurrence depth and context, greedy decoding."""
    return {
        "num_steps": cfg.default_num_steps,
        "max_length": cfg.max_seq_len,
        "do_sample": False,
        **{f"{name}_token_id": i for name, i in special_ids.items() if i is not None},
    }


def save_pretrained(
    model: DecoderLM,
    out_dir: str | Path,
    conversion: dict | None = None,
    extra_files: list[Path] | tuple[Path, ...] = (),
    dtype: str | None = None,
    overwrite: bool = False,
    special_ids: dict[str, int | None] | None = None,
    tokenizer: str | None = None,
) -> Path:
    """Write `model` to `out_dir` atomically (a temp directory renamed into place).

    `extra_files` (e.g. tokenizer files) are copied alongside; `dtype` stores the weights in another
    precision (float32 | bfloat16 | float16; default: as they are); `special_ids` ({"bos": 1, "eos": 2,
    "pad": 0}) go into the config and generation_config.json (a copied generation_config.json wins);
    `tokenizer` = "byte" records that the model reads recur's byte tokenizer and writes its
    transformers equivalent (recur/data/byte_hf.py)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out}: already exists (pass --overwrite to replace it)")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype: got '{dtype}'; expected one of {', '.join(DTYPES)}")
    with atomic_dir(out) as tmp:
        state = _state_to_save(model, DTYPES[dtype] if dtype else None)
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        special_ids = special_ids or {}
        config = {
            "model_type": "recur",
            "architectures": ["RecurForCausalLM"],
            "auto_map": AUTO_MAP,
            "recur_format_version": FORMAT_VERSION,
            "tie_word_embeddings": model.cfg.tie_embeddings,
            "torch_dtype": str(next(iter(state.values())).dtype).removeprefix("torch."),
            **asdict(model.cfg),
            **{f"{name}_token_id": i for name, i in special_ids.items() if i is not None},
        }
        if conversion is not None:
            config["conversion"] = conversion
        if tokenizer == "byte":  # recur reads its own byte tokenizer; transformers reads the equivalent files
            from recur.data.byte_hf import byte_hf_tokenizer

            config["recur_tokenizer"] = tokenizer
            byte_hf_tokenizer().save_pretrained(tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / GENERATION_CONFIG_NAME).write_text(
            json.dumps(generation_config(model.cfg, special_ids), indent=2) + "\n"
        )
        shutil.copyfile(MODELING_FILE, tmp / MODELING_FILE.name)
        # recur's source, so the directory loads where recur is not installed (modeling_recur.py imports it).
        shutil.copytree(
            PACKAGE_DIR, tmp / SOURCE_DIR / PACKAGE_DIR.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        for file in extra_files:
            shutil.copyfile(file, tmp / Path(file).name)
        for file in tmp.rglob("*"):
            file.chmod(0o755 if file.is_dir() else 0o644)
        tmp.chmod(0o755)
    return out


def is_saved_dir(path: str | Path) -> bool:
    """Whether `path` is a directory in this format (config.json with model_type "recur")."""
    config_file = Path(path) / CONFIG_NAME
    try:
        return Path(path).is_dir() and json.loads(config_file.read_text()).get("model_type") == "recur"
    except (OSError, ValueError, AttributeError):
        return False


def read_config_json(path: str | Path) -> dict:
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME} (expected a directory written by save_pretrained)")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "recur":
        raise ValueError(
            f"{config_file}: model_type is '{config.get('model_type')}', not 'recur' "
            "(convert a Hugging Face checkpoint first with utils/convert_hf.py)"
        )
    return config


def read_model_config(path: str | Path, **runtime_overrides) -> ModelConfig:
    """The saved ModelConfig; only RUNTIME_FIELDS may be overridden (the rest fixes the weight shapes)."""
    bad = set(runtime_overrides) - set(RUNTIME_FIELDS)
    if bad:
        raise ValueError(
            f"{path}: cannot override {sorted(bad)} of a saved model (they fix its weight shapes); "
            f"overridable: {', '.join(RUNTIME_FIELDS)}"
        )
    config = read_config_json(path)
    saved = {k: v for k, v in config.items() if k in saved_keys()}
    return ModelConfig.from_dict({**saved, **runtime_overrides}).resolved()


def load_pretrained_into(model: nn.Module, path: str | Path) -> None:
    """Copy the weights saved in `path` into `model`; every tensor must exist with the same shape."""
    from safetensors.torch import load_file

    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"--init_from {path}: no {WEIGHTS_NAME}")
    state = load_file(str(weights))
    expected = model.state_dict()
    if _tied(model):
        expected.pop("lm_head.weight")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"--init_from {path}: weights do not fit the model (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}); build the model from read_model_config({str(path)!r})"
        )
    for name, tensor in state.items():
        if expected[name].shape != tensor.shape:
            raise ValueError(
                f"--init_from {path}: {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[name].shape)}"
            )
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(state[name])


def from_pretrained(path: str | Path, device: str | torch.device = "cpu", **runtime_overrides) -> DecoderLM:
    """Rebuild the model saved in `path` (fp32 parameters, eval mode)."""
    model = create_model(read_model_config(path, **runtime_overrides))
    load_pretrained_into(model, path)
    return model.to(device).eval()
