"""transformers classes for recur models; recur/hf_model.py copies this file into every saved directory.

    model = AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)
    model.generate(ids, max_new_tokens=32, num_steps=8)             # greedy, KV cache per (layer, step)
    model.generate(ids, do_sample=True, top_k=50, num_steps=8)      # sampling
    model.generate(ids, num_steps=32, exit_criterion="kl", exit_eps=5e-4)   # adaptive exit (looped models)

The network is recur's own: this file only adapts its interface, so the logits are recur's forward by
construction. Where recur is not installed, the copy of its source that recur/hf_model.py ships in the
directory (`recur_src/`) is imported instead, so the directory is self-contained (torch, transformers and
safetensors are all it needs). `num_steps` (the recurrence depth) is a config field
(default: the model's default_num_steps) and a forward / generate kwarg. Only local directories load.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

SOURCE_DIR = "recur_src"  # recur's package as it was when the directory was written


def _use_shipped_source(directory: str | Path) -> None:
    """Where recur is not installed, import the copy shipped in the model directory as `recur` (only that
    package: nothing else in the directory becomes importable). transformers copies only this file into its
    module cache, so the directory is known only once a loader names it."""
    package = Path(directory) / SOURCE_DIR / "recur"
    if importlib.util.find_spec("recur") is not None or not package.is_dir():
        return
    spec = importlib.util.spec_from_file_location(
        "recur", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["recur"] = module  # before running it: its own submodules import `recur`
    spec.loader.exec_module(module)


@functools.cache  # forward() asks on every decoded token; a failed import is not cached, so it can be retried
def _recur() -> SimpleNamespace:
    """recur's pieces this file adapts. Imported on use, inside `try` — transformers' trust_remote_code check
    would otherwise demand an installed `recur` before the shipped copy could be put on the path."""
    try:
        from recur.eval.generate import ExitRule, adaptive_decode_step, depth_of
        from recur.hf_model import load_pretrained_into
        from recur.models import create_model, is_looped
        from recur.models.config import ModelConfig, saved_keys
        from recur.models.layers import KVCache
    except ImportError as error:
        raise ImportError(
            f"recur is not installed and the model directory has no {SOURCE_DIR}/ "
            "(re-export it with utils/export_checkpoint.py)"
        ) from error
    return SimpleNamespace(
        ExitRule=ExitRule,
        adaptive_decode_step=adaptive_decode_step,
        depth_of=depth_of,
        load_pretrained_into=load_pretrained_into,
        create_model=create_model,
        is_looped=is_looped,
        ModelConfig=ModelConfig,
        KVCache=KVCache,
        saved_keys=saved_keys,
    )


class RecurConfig(PretrainedConfig):
    """config.json as recur writes it: every ModelConfig field at top level (plus transformers' own)."""

    model_type = "recur"

    def __init__(
        self,
        recur: dict | None = None,
        num_steps: int | None = None,
        exit_criterion: str | None = None,
        exit_eps: float = 0.0,
        **kwargs,
    ) -> None:
        # transformers reinterprets some ModelConfig names (rope_scaling, rope_theta become rope_parameters),
        # so recur's fields are kept apart, verbatim, in `recur`.
        names = _recur().saved_keys()  # with the legacy `extra` of directories written before the groups
        recur = recur if recur is not None else {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        super().__init__(**{"vocab_size": recur.get("vocab_size"), **kwargs})
        self.recur = recur
        self.num_steps = num_steps  # recurrence depth when forward / generate is given none (None: default_num_steps)
        # Adaptive exit while decoding (recur.eval.generate.ExitRule): "delta" | "kl", or None for fixed depth.
        self.exit_criterion, self.exit_eps = exit_criterion, exit_eps

    @classmethod
    def from_pretrained(cls, path: str | Path, *args, **kwargs) -> RecurConfig:
        if Path(path).is_dir():
            _use_shipped_source(path)
        return super().from_pretrained(path, *args, **kwargs)

    def model_config(self):  # -> recur.models.config.ModelConfig
        return _recur().ModelConfig.from_dict(self.recur)


class RecurForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = RecurConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: RecurConfig) -> None:
        super().__init__(config)
        self.model = _recur().create_model(config.model_config())  # initialised by recur; weights are loaded over it
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """recur initialises its own modules; transformers must not re-initialise them."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # recur's KVCache is keyed by (recurrence step, layer); prepare_inputs_for_generation makes one.
        return False

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *args,
        config: RecurConfig | None = None,
        dtype=None,
        torch_dtype=None,
        device_map=None,
        num_steps: int | None = None,
        **kwargs,
    ) -> RecurForCausalLM:
        """Load through recur's reader (the same code every recur tool uses), so weights can never be
        mapped differently here. `num_steps` sets the default depth (lm_eval --model_args num_steps=8);
        hub-only kwargs (revision, token, ...) have nothing to act on and are ignored."""
        if not Path(path).is_dir():
            raise OSError(f"{path}: recur models load from a local directory only")
        _use_shipped_source(path)
        config = config or RecurConfig.from_pretrained(path)
        if num_steps is not None:
            config.num_steps = int(num_steps)
        model = cls(config)
        _recur().load_pretrained_into(model.model, path)
        dtype = dtype or torch_dtype
        if dtype not in (None, "auto"):
            model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        if isinstance(device_map, (str, torch.device)) and str(device_map) != "auto":
            model.to(device_map)
        return model.eval()

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.tok_embeddings

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.model.lm_head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        labels: torch.Tensor | None = None,
        num_steps: int | None = None,
        exit_criterion: str | None = None,
        exit_eps: float | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`num_steps` / `exit_criterion` / `exit_eps` override the config's for this call. Adaptive exit
        applies to cached one-token decoding steps (the prompt runs at full depth), as in recur's generate;
        those steps return log-probabilities, which rank and sample exactly like the logits.
        Padding (zeros in `attention_mask`, e.g. lm-eval's left-padded generation batches) is a document of its
        own, so no real token attends to it; RoPE scores depend only on relative positions, so a left-padded
        row computes what it computes unpadded."""
        steps = num_steps if num_steps is not None else self.config.num_steps
        criterion = exit_criterion or self.config.exit_criterion
        recur = _recur()
        if criterion is not None and not recur.is_looped(self.model):
            raise ValueError(
                f"exit_criterion: adaptive exit needs a looped model; this one is '{self.model.cfg.variant}'"
            )
        doc_ids = self._padding_documents(attention_mask, input_ids, cache, criterion)
        if criterion is not None and cache is not None and cache.seen_tokens and input_ids.shape[1] == 1:
            rule = recur.ExitRule(criterion, exit_eps if exit_eps is not None else self.config.exit_eps)
            log_probs, _ = recur.adaptive_decode_step(
                self.model, input_ids, cache, recur.depth_of(self.model, steps), rule
            )
            return CausalLMOutputWithPast(logits=log_probs[:, None], cache=cache)
        logits = self.model(input_ids, num_steps=steps, cache=cache, doc_ids=doc_ids).logits
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)

    @staticmethod
    def _padding_documents(
        attention_mask: torch.Tensor | None, input_ids: torch.Tensor, cache: KVCache | None, criterion: str | None
    ) -> torch.Tensor | None:
        """attention_mask [B, cached + new] -> doc_ids for recur's attention (None when nothing is padded)."""
        if attention_mask is None or bool(attention_mask.all()):
            return None
        expected = (cache.seen_tokens if cache is not None else 0) + input_ids.shape[1]
        if attention_mask.shape != (input_ids.shape[0], expected):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
                f"{(input_ids.shape[0], expected)} (cached + new tokens)"
            )
        if criterion is not None:
            raise ValueError("exit_criterion: adaptive exit decodes unpadded batches only (attention_mask all ones)")
        return attention_mask.long()

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        num_steps: int | None = None,
        exit_criterion: str | None = None,
        exit_eps: float | None = None,
        **kwargs,
    ) -> dict:
        """The first call runs the whole prompt into a fresh cache; later calls feed only new tokens."""
        if cache is None and use_cache:
            cache = _recur().KVCache()
        if cache is not None:
            input_ids = input_ids[:, cache.seen_tokens :]
        return {
            "input_ids": input_ids,
            "cache": cache,
            "attention_mask": attention_mask,
            "num_steps": num_steps,
            "exit_criterion": exit_criterion,
            "exit_eps": exit_eps,
        }
