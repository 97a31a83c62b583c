"""Typed variant groups of ModelConfig: defaults, one validation path, and configs saved with the legacy `extra`."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from recur.cli import parse_config
from recur.hf_model import from_pretrained, save_pretrained
from recur.models import create_model
from recur.models.config import ActConfig, LatentConfig, MemoryConfig, ModelConfig, SSMConfig

SHAPE = dict(vocab_size=40, d_model=32, n_layers=3, n_heads=2, max_seq_len=64)
# Every legacy key once, with the group field it now lives in.
LEGACY = {
    "n_thoughts": 4,
    "thought_chunk": 4,
    "d_thought": 16,
    "thought_heads": 2,
    "read_layer": 1,
    "ssm_d_state": 8,
    "ssm_headdim": 16,
    "ssm_expand": 2,
    "ssm_d_conv": 3,
    "ssm_scan_chunk": 8,
    "n_memory": 4,
    "memory_chunk": 8,
}
TYPED = dict(
    latent=LatentConfig(n_thoughts=4, thought_chunk=4, d_thought=16, thought_heads=2, read_layer=1),
    ssm=SSMConfig(d_state=8, headdim=16, expand=2, d_conv=3, scan_chunk=8),
    memory=MemoryConfig(n_slots=4, chunk=8),
)


def _legacy_dict(cfg: ModelConfig, extra: dict) -> dict:
    """`cfg` as a checkpoint written before the groups saved it: the groups' knobs in one `extra` dict."""
    saved = {k: v for k, v in asdict(cfg).items() if k not in ("latent", "act", "ssm", "memory")}
    return {**saved, "extra": extra}


def test_legacy_extra_maps_into_the_groups():
    typed = ModelConfig(variant="ssm_mem", **SHAPE, **TYPED).resolved()
    assert ModelConfig.from_dict(_legacy_dict(typed, LEGACY)).resolved() == typed
    act = ModelConfig.from_dict({"variant": "act", **SHAPE, "extra": {"threshold": 0.5, "halt_bias": 0.0}})
    assert act.act == ActConfig(threshold=0.5, halt_bias=0.0)


def test_legacy_extra_refuses_a_key_the_variant_never_read():
    with pytest.raises(ValueError, match=r"--model.extra: unknown keys \['threshold'\] for variant 'ssm'"):
        ModelConfig.from_dict({"variant": "ssm", "extra": {"threshold": 0.5}})


def test_a_group_the_variant_does_not_read_is_refused():
    with pytest.raises(ValueError, match="--model.act.threshold: variant 'latent' does not read --model.act"):
        ModelConfig(variant="latent", act=ActConfig(threshold=0.5)).resolved()


def test_resolved_fills_the_derived_knobs_of_read_groups_only():
    latent = ModelConfig(variant="latent", **SHAPE).resolved()
    assert (latent.latent.d_thought, latent.latent.thought_heads, latent.latent.read_layer) == (32, 2, 1)
    assert ModelConfig(variant="baseline", **SHAPE).resolved().latent == LatentConfig()


def test_a_saved_directory_with_legacy_extra_still_loads(tmp_path):
    """config.json written before the groups: recur's loader and transformers' RecurConfig both map `extra`."""
    from recur.modeling_recur import RecurConfig

    torch.manual_seed(0)
    model = create_model(ModelConfig(variant="ssm_mem", **SHAPE, **TYPED)).eval()
    out = save_pretrained(model, tmp_path / "old")
    config = json.loads((out / "config.json").read_text())
    for group in ("latent", "act", "ssm", "memory"):
        config.pop(group)
    (out / "config.json").write_text(json.dumps({**config, "extra": LEGACY}))
    x = torch.randint(0, 40, (1, 9))
    with torch.no_grad():
        assert torch.equal(from_pretrained(out)(x).logits, model(x).logits)
    assert RecurConfig.from_pretrained(out).model_config().resolved() == model.cfg


def test_create_model_takes_the_looped_knobs_by_keyword():
    with torch.device("meta"):
        model = create_model("nano", "recurrent", block_norm="pre", adapter_init="passthrough")
    assert (model.cfg.block_norm, model.cfg.adapter_init) == ("pre", "passthrough")


def test_print_config_shows_the_groups_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--print_config"])
    text = capsys.readouterr().out
    assert "  latent:\n    n_thoughts: 16\n" in text and "  act:\n    threshold: 0.99\n" in text
    assert "  memory:\n    n_slots: 64\n" in text and "extra" not in text


def test_a_run_config_yaml_with_legacy_extra_loads_with_config(tmp_path):
    """Every run's config.yaml before the groups had `model.extra`; --config maps it into the groups."""
    old = tmp_path / "config.yaml"
    old.write_text(
        "model:\n  variant: act\n  extra: {n_thoughts: 5, lambda_ponder: 0.1}\n"
        "recurrence: {sampling: fixed, mean_recurrence: 4, backprop_depth: 4}\n"
    )
    cfg, _ = parse_config(["--config", str(old), "--steps", "10"])
    assert cfg.model.latent.n_thoughts == 5 and cfg.model.act.lambda_ponder == 0.1


class _RecordingState:
    """Stands in for the DCP state: the model-config check runs before any weights are read."""

    format = "dcp"

    def load(self, path, world_size) -> None:
        self.loaded = path


def test_a_checkpoint_with_legacy_extra_resumes_the_same_model(tmp_path):
    from recur.checkpoint import COMPLETE, STATE_FILE, Checkpointer

    run = ModelConfig(variant="ssm_mem", **SHAPE, **TYPED).resolved()
    path = tmp_path / "step_3"
    path.mkdir()
    for name in (COMPLETE, ".metadata"):
        (path / name).write_text("")
    trainer_state = {"step": 3, "world_size": 1, "model_config": _legacy_dict(run, LEGACY)}
    (path / STATE_FILE).write_text(json.dumps(trainer_state))
    state = _RecordingState()
    assert Checkpointer(tmp_path).load(path, state, asdict(run))["step"] == 3 and state.loaded == path
    with pytest.raises(ValueError, match="is from a different model"):
        Checkpointer(tmp_path).load(path, state, asdict(ModelConfig(variant="ssm_mem", **SHAPE).resolved()))
