"""Convert a local Hugging Face Llama / OLMo-2 checkpoint (or an exported recur `baseline`, see
recur/convert/recur_baseline.py) into our recurrent `LoopedLM`.

The source is read straight from disk (config.json + safetensors or PyTorch weights, single file or
sharded), so conversion does not depend on the installed transformers version's config classes and never
touches a hub. Layers are chosen with the split convention of `recur.convert.layer_analysis`:
``[0, prelude_size)`` prelude, ``[start_index, start_index + block_size)`` recurrent block, the last
``coda_size`` layers coda; every other layer is dropped.

The input-injection adapter starts as a pass-through (``adapter([s, e]) = e``), so at r = 1 the converted
model computes exactly the source model with the dropped layers removed; every depth computes the same
thing until training moves the adapter to read the state. ``adapter_init="state"`` (``adapter([s, e]) = s``
with s₀ = e) is the same at r = 1 and makes r = 2 apply the block to its own output from the start. In the
recall probes of docs/recurrence.md (probe 9, a 4-layer model looped 1/2/1 and trained on 4-hop chains)
both learned to use depth equally well in distribution, but only the pass-through start stayed stable up to
r = 64 and gained out of distribution, so it is the default.

Block mapping. Llama is pre-norm (``x + f(norm(x))``): input_layernorm -> attn_norm,
post_attention_layernorm -> mlp_norm. OLMo-2 is post-norm (``x + norm(f(x))``) with RMSNorm over the full
q/k projections: post_attention_layernorm -> attn_norm, post_feedforward_layernorm -> mlp_norm,
q_norm/k_norm -> attn.q_norm/k_norm; our `Block(block_norm="post")` computes the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from recur.convert.layer_analysis import LayerSplit
from recur.convert.recur_baseline import loop_recur_baseline
from recur.models import create_model
from recur.models.config import ModelConfig
from recur.models.looped import LoopedLM

_PROJECTIONS = {
    "self_attn.q_proj.weight": "attn.wq.weight",
    "self_attn.k_proj.weight": "attn.wk.weight",
    "self_attn.v_proj.weight": "attn.wv.weight",
    "self_attn.o_proj.weight": "attn.wo.weight",
    "mlp.gate_proj.weight": "mlp.w1.weight",
    "mlp.up_proj.weight": "mlp.w3.weight",
    "mlp.down_proj.weight": "mlp.w2.weight",
}
# Per-layer HF name (after "model.layers.{i}.") -> our name inside a Block.
LAYER_MAPS: dict[str, dict[str, str]] = {
    "llama": {
        **_PROJECTIONS,
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "mlp_norm.weight",
    },
    "olmo2": {
        **_PROJECTIONS,
        "post_attention_layernorm.weight": "attn_norm.weight",
        "post_feedforward_layernorm.weight": "mlp_norm.weight",
        "self_attn.q_norm.weight": "attn.q_norm.weight",
        "self_attn.k_norm.weight": "attn.k_norm.weight",
    },
}
# "recur": an exported recur `baseline` run (recur/convert/recur_baseline.py), looped the same way.
ARCHS = (*LAYER_MAPS, "recur")
# Files that make up a tokenizer; copied next to the converted weights so the output is self-contained.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
)


# ---------------------------------------------------------------------------------------------
# Reading the source checkpoint
# ---------------------------------------------------------------------------------------------


def read_hf_config(model_path: str | Path) -> dict:
    path = Path(model_path)
    if not path.is_dir():
        raise FileNotFoundError(f"--model_path {path}: not a directory (expected a local Hugging Face model)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"--model_path {path}: no config.json")
    return json.loads(config_file.read_text())


def _weight_files(path: Path) -> list[Path]:
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (path / single).is_file():
            return [path / single]
        if (path / index).is_file():
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise FileNotFoundError(f"--model_path {path}: shards listed in {index} are missing: {missing}")
            return [path / s for s in shards]
    raise FileNotFoundError(f"--model_path {path}: no model.safetensors, pytorch_model.bin or a sharded index of them")


def load_hf_state_dict(model_path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a local HF checkpoint (safetensors or PyTorch, single or sharded), on CPU."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(Path(model_path)):
        if file.suffix == ".safetensors":
            state.update(load_file(str(file)))
        else:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


def detect_arch(hf_config: dict, arch: str | None, where: str) -> str:
    model_type = hf_config.get("model_type")
    if arch is None:
        if model_type not in ARCHS:
            raise ValueError(
                f"{where}: model_type '{model_type}' is not convertible; expected one of {', '.join(ARCHS)}"
            )
        return model_type
    if arch not in ARCHS:
        raise ValueError(f"--arch: got '{arch}'; expected one of {', '.join(ARCHS)}")
    if model_type != arch:
        raise ValueError(f"--arch {arch} does not match {where}: its config.json has model_type '{model_type}'")
    return arch


def rope_settings(hf_config: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from a transformers-5 `rope_parameters` or a transformers-4 config."""
    params = hf_config.get("rope_parameters")
    if params:
        theta = params.get("rope_theta", hf_config.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = hf_config.get("rope_theta", 10000.0)
        scaling = dict(hf_config.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    return float(theta), (None if kind == "default" else {**scaling, "rope_type": kind})


def model_config_from_hf(hf_config: dict, arch: str, split: LayerSplit, **overrides) -> ModelConfig:
    """Our `recurrent` ModelConfig for the given source config and layer split (pass-through adapter unless
    `overrides` choose adapter_init="state")."""
    for flag, expected in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if hf_config.get(flag, expected) != expected:
            raise ValueError(f"config.json: {flag}={hf_config[flag]!r} is not supported (need {expected!r})")
    theta, scaling = rope_settings(hf_config)
    n_heads = hf_config["num_attention_heads"]
    fields = dict(
        variant="recurrent",
        vocab_size=hf_config["vocab_size"],
        d_model=hf_config["hidden_size"],
        n_heads=n_heads,
        n_kv_heads=hf_config.get("num_key_value_heads") or n_heads,
        head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // n_heads,
        d_ff=hf_config["intermediate_size"],
        max_seq_len=hf_config.get("max_position_embeddings", 2048),
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=hf_config.get("rms_norm_eps", 1e-6),
        block_norm="post" if arch == "olmo2" else "pre",
        qk_norm=arch == "olmo2",
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        dropout=0.0,
        n_layers=split.prelude_size + split.block_size + split.coda_size,
        n_prelude=split.prelude_size,
        n_core=split.block_size,
        n_coda=split.coda_size,
        **adapter_fields(overrides),
    )
    fields.update(overrides)
    return ModelConfig(**fields).resolved()


def adapter_fields(overrides: dict) -> dict[str, str]:
    """The loop-entry fields of a converted model: the concat adapter as a pass-through, or as the identity on
    the state with s_0 = e (then r = 1 is the source model too) when `overrides` choose adapter_init "state"."""
    adapter = overrides.get("adapter_init", "passthrough")
    return {"injection": "concat", "adapter_init": adapter, **({"init_state": "input"} if adapter == "state" else {})}


def check_reproduces_source(cfg: ModelConfig) -> None:
    reproduces = cfg.injection == "concat" and (
        cfg.adapter_init == "passthrough" or (cfg.adapter_init == "state" and cfg.init_state == "input")
    )
    if not reproduces:
        raise ValueError(
            "conversion reproduces the source model at r = 1 only with the concat adapter as "
            "'state' (with init_state 'input') or 'passthrough'; got injection "
            f"'{cfg.injection}', adapter_init '{cfg.adapter_init}', init_state '{cfg.init_state}'"
        )


def source_layer_count(hf_config: dict, arch: str) -> int:
    return hf_config["n_layers"] if arch == "recur" else hf_config["num_hidden_layers"]


# ---------------------------------------------------------------------------------------------
# Mapping the weights
# ---------------------------------------------------------------------------------------------


def map_state_dict(
    hf_state: dict[str, torch.Tensor], arch: str, split: LayerSplit, tie_embeddings: bool
) -> dict[str, torch.Tensor]:
    """Our parameter names -> source tensors, for every parameter except the adapter.

    Raises if a kept layer lacks a weight or carries one we do not know (e.g. a bias): nothing is silently
    dropped except whole layers outside the split and RoPE tables that older checkpoints store."""
    layer_map = LAYER_MAPS[arch]
    ours = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not tie_embeddings:
        ours["lm_head.weight"] = "lm_head.weight"
    for section, layers in split.sections.items():
        for j, src in enumerate(layers):
            for hf_name, our_name in layer_map.items():
                ours[f"{section}.{j}.{our_name}"] = f"model.layers.{src}.{hf_name}"
    missing = sorted(name for name in ours.values() if name not in hf_state)
    if missing:
        raise ValueError(f"source checkpoint lacks {len(missing)} expected {arch} weights, e.g. {missing[:3]}")
    used = set(ours.values())
    dropped = tuple(f"model.layers.{i}." for i in split.dropped)
    # A tied checkpoint may still store lm_head.weight (a copy of the embedding): harmless to leave.
    unknown = sorted(
        k
        for k in hf_state
        if k not in used
        and not k.startswith(dropped)
        and not k.endswith("rotary_emb.inv_freq")
        and not (tie_embeddings and k == "lm_head.weight")
    )
    if unknown:
        raise ValueError(
            f"source checkpoint has {len(unknown)} weights the {arch} converter does not map, e.g. {unknown[:3]}"
        )
    return {our: hf_state[src] for our, src in ours.items()}


def convert_hf_model(
    model_path: str | Path,
    prelude_size: int,
    start_index: int,
    block_size: int,
    coda_size: int,
    arch: str | None = None,
    **config_overrides,
) -> LoopedLM:
    """Load a local HF Llama / OLMo-2 checkpoint as our fp32 `LoopedLM` (pass-through adapter by default).

    `config_overrides` set other ModelConfig fields (e.g. default_num_steps, init_state, max_seq_len)."""
    hf_config = read_hf_config(model_path)
    arch = detect_arch(hf_config, arch, f"--model_path {model_path}")
    split = LayerSplit(source_layer_count(hf_config, arch), prelude_size, start_index, block_size, coda_size)
    if arch == "recur":
        # The caller's fields win over the adapter's defaults, so a contradiction is refused as for HF sources.
        model = loop_recur_baseline(model_path, split, **{**adapter_fields(config_overrides), **config_overrides})
        check_reproduces_source(model.cfg)
        return model
    cfg = model_config_from_hf(hf_config, arch, split, **config_overrides)
    check_reproduces_source(cfg)
    hf_state = load_hf_state_dict(model_path)
    if not cfg.tie_embeddings and "lm_head.weight" not in hf_state and hf_config.get("tie_word_embeddings"):
        # Untying a tied source (tie_embeddings=False override): the head starts as a copy of the embedding.
        hf_state["lm_head.weight"] = hf_state["model.embed_tokens.weight"].clone()
    state = map_state_dict(hf_state, arch, split, cfg.tie_embeddings)
    model = create_model(cfg)
    targets = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, tensor in state.items():
            if targets[name].shape != tensor.shape:
                raise ValueError(
                    f"weight {name}: source shape {tuple(tensor.shape)} does not match the "
                    f"config-derived shape {tuple(targets[name].shape)}"
                )
            targets[name].copy_(tensor.to(torch.float32))
    return model


def conversion_record(model_path: str | Path, arch: str, split: LayerSplit) -> dict:
    """Provenance stored in the converted model's config.json."""
    return {
        "source": str(Path(model_path).resolve()),
        "arch": arch,
        "prelude_size": split.prelude_size,
        "start_index": split.start_index,
        "block_size": split.block_size,
        "coda_size": split.coda_size,
        "source_layers": split.sections,
        "dropped_layers": split.dropped,
        "n_source_layers": split.n_layers,
    }


def tokenizer_files(model_path: str | Path) -> list[Path]:
    return [Path(model_path) / name for name in TOKENIZER_FILES if (Path(model_path) / name).is_file()]


def convert_to_dir(
    model_path: str | Path,
    out_dir: str | Path,
    prelude_size: int,
    start_index: int,
    block_size: int,
    coda_size: int,
    arch: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    **config_overrides,
) -> LoopedLM:
    """Convert and save (weights, config with the conversion record, tokenizer files); returns the model."""
    from recur.hf_model import save_pretrained

    hf_config = read_hf_config(model_path)
    arch = detect_arch(hf_config, arch, f"--model_path {model_path}")
    split = LayerSplit(source_layer_count(hf_config, arch), prelude_size, start_index, block_size, coda_size)
    model = convert_hf_model(model_path, prelude_size, start_index, block_size, coda_size, arch, **config_overrides)
    # A recur source keeps its tokenizer record (recur's byte tokenizer) and special ids; its
    # generation_config.json is written anew, for the looped model (num_steps), instead of copied.
    special, extra = None, tokenizer_files(model_path)
    if arch == "recur":
        special = {name: hf_config.get(f"{name}_token_id") for name in ("bos", "eos", "pad")}
        extra = [file for file in extra if file.name != "generation_config.json"]
    save_pretrained(
        model,
        out_dir,
        conversion=conversion_record(model_path, arch, split),
        extra_files=extra,
        dtype=dtype,
        overwrite=overwrite,
        special_ids=special,
        tokenizer=hf_config.get("recur_tokenizer"),
    )
    return model
