"""Loop a trained recur `baseline` (an exported run: model_type "recur", variant baseline): its layers become
the prelude, recurrent block and coda of a `recurrent` model — the retrofitting recipe of docs/retrofit.md
applied to recur's own models (utils/convert_hf.py routes a recur source here).

Same split convention and adapter start as the Hugging Face converter (recur/convert/hf.py): layer i of the
baseline keeps its weights wherever the split puts it, everything outside the layers (embeddings, final
norm, head) and every shape field carry over, and at r = 1 the looped model is the baseline minus the
dropped layers.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file

from recur.convert.layer_analysis import LayerSplit
from recur.hf_model import WEIGHTS_NAME, read_model_config
from recur.models import create_model
from recur.models.looped import LoopedLM

# Parameters a looped model has and the baseline lacks; they start from the looped model's own init.
NEW_IN_LOOP = {"adapter.weight", "state_norm.weight"}


def loop_recur_baseline(model_path: str | Path, split: LayerSplit, **config_overrides) -> LoopedLM:
    """The recurrent model for `split` of the baseline saved in `model_path` (fp32); `config_overrides` set
    ModelConfig fields (the adapter's start, tie_embeddings=False to untie a tied baseline, ...)."""
    source = read_model_config(model_path)
    if source.variant != "baseline":
        raise ValueError(
            f"--model_path {model_path}: a recur model of variant '{source.variant}'; only a "
            "'baseline' can be looped (its layers are unique)"
        )
    cfg = replace(
        source,
        variant="recurrent",
        n_layers=split.prelude_size + split.block_size + split.coda_size,
        n_prelude=split.prelude_size,
        n_core=split.block_size,
        n_coda=split.coda_size,
        **config_overrides,
    ).resolved()
    where = {src: f"{section}.{j}" for section, layers in split.sections.items() for j, src in enumerate(layers)}
    mapped = {}
    for key, tensor in load_file(str(Path(model_path) / WEIGHTS_NAME)).items():
        layer = re.match(r"layers\.(\d+)\.(.+)", key)
        if layer is None:
            mapped[key] = tensor
        elif int(layer.group(1)) in where:
            mapped[f"{where[int(layer.group(1))]}.{layer.group(2)}"] = tensor
    if not cfg.tie_embeddings and "lm_head.weight" not in mapped:  # untying a tied baseline
        mapped["lm_head.weight"] = mapped["tok_embeddings.weight"].clone()
    model = create_model(cfg)
    new = {name: value.clone() for name, value in model.state_dict().items() if name in NEW_IN_LOOP}
    missing, unexpected = model.load_state_dict({**mapped, **new}, strict=False)
    missing = [name for name in missing if not (name == "lm_head.weight" and cfg.tie_embeddings)]
    if missing or unexpected:
        raise ValueError(
            f"--model_path {model_path}: weights do not fit the looped model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model
