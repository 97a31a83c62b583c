"""HF Llama / OLMo-2 -> LoopedLM conversion: logit equivalence, dropped layers, RoPE scaling, save/load, untie."""

from __future__ import annotations

import json

import pytest
import torch
from hf_fixtures import TINY_VOCAB, make_tiny_llama, make_tiny_olmo2, make_tiny_tokenizer
from safetensors.torch import load_file, save_file

from recur.convert.hf import convert_hf_model, convert_to_dir
from recur.convert.untie import untie_hf_checkpoint
from recur.hf_model import from_pretrained, load_pretrained_into, read_model_config
from recur.models import create_model
from recur.models.layers import rope_frequencies

TOL = 1e-4


def _randomize(path, seed: int = 0) -> None:
    """Re-draw every weight of a saved HF model: large matrices and non-unit norm gains, so that any
    swapped or misplaced tensor (e.g. attn_norm <-> mlp_norm, gate <-> up) moves the logits by far more than TOL."""
    gen = torch.Generator().manual_seed(seed)
    state = load_file(str(path / "model.safetensors"))
    for name, t in state.items():
        if t.dim() == 1:
            state[name] = 1.0 + 0.5 * torch.randn(t.shape, generator=gen)
        else:
            state[name] = torch.randn(t.shape, generator=gen) / t.shape[-1] ** 0.5
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def _hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()


def _hf_logits(model, ids, keep=None) -> torch.Tensor:
    """Logits of the HF model, optionally with only the layers in `keep` (in order)."""
    if keep is not None:
        model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in keep)
        model.config.num_hidden_layers = len(keep)
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def _ours(model, ids, r=1) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids, num_steps=r).logits


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = make_tiny_llama(tmp_path_factory.mktemp("llama"), n_layers=5)
    _randomize(path, seed=1)
    return path


@pytest.fixture(scope="module")
def olmo_dir(tmp_path_factory):
    path = make_tiny_olmo2(tmp_path_factory.mktemp("olmo"), n_layers=5)
    _randomize(path, seed=2)
    return path


IDS = torch.randint(0, TINY_VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def hf_models(llama_dir, olmo_dir):
    """Each HF model loaded once (loading dominates the runtime); tests deep-copy before editing layers."""
    return {"llama": _hf(llama_dir), "olmo2": _hf(olmo_dir)}


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
@pytest.mark.parametrize(
    "split,keep",
    [
        ((1, 1, 3, 1), None),  # all layers kept
        ((0, 0, 5, 0), None),  # the whole model as the recurrent block
        ((2, 2, 2, 1), [0, 1, 2, 3, 4]),  # layer-for-layer again, different boundaries
        ((1, 2, 2, 1), [0, 2, 3, 4]),  # layer 1 dropped
        ((1, 1, 1, 2), [0, 1, 3, 4]),  # layer 2 dropped
        ((1, 3, 1, 0), [0, 3]),  # layers 1, 2, 4 dropped, no coda
    ],
)
def test_converted_model_equals_hf_at_r1(arch, split, keep, llama_dir, olmo_dir, hf_models):
    import copy

    path = llama_dir if arch == "llama" else olmo_dir
    ours = convert_hf_model(path, *split, arch=arch)
    expected = _hf_logits(copy.deepcopy(hf_models[arch]), IDS, keep)
    assert expected.abs().max() > 1.0  # the randomised model is far from trivial
    assert (_ours(ours, IDS) - expected).abs().max() < TOL


@pytest.mark.parametrize(
    "adapter_init,keep",
    [
        ("state", [0, 1, 1, 2, 3, 4]),  # r = 2 applies the one-layer block to its own output: layer 1 twice
        ("passthrough", [0, 1, 2, 3, 4]),  # r = 2 recomputes the block on the prelude output: same as r = 1
    ],
)
def test_converted_adapter_at_r2(adapter_init, keep, llama_dir, hf_models):
    import copy

    ours = convert_hf_model(llama_dir, 1, 1, 1, 3, arch="llama", adapter_init=adapter_init)
    expected = _hf_logits(copy.deepcopy(hf_models["llama"]), IDS, keep)
    assert (_ours(ours, IDS, r=2) - expected).abs().max() < TOL
    with pytest.raises(ValueError, match="init_state 'input'"):
        convert_hf_model(llama_dir, 1, 1, 1, 3, arch="llama", adapter_init="state", init_state="random")


def test_recur_baseline_loops_into_a_recurrent_model(tmp_path):
    """An exported recur baseline converts like an HF model: r = 1 is the baseline, r = 2 with a one-layer
    block and the state adapter is the baseline with that layer run twice; the byte tokenizer and special ids
    carry over."""
    import copy

    from recur.hf_model import save_pretrained

    base = create_model("tiny", "baseline", n_layers=5, vocab_size=300).eval()
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    save_pretrained(base, tmp_path / "base", special_ids={"bos": 1, "eos": 2, "pad": 0}, tokenizer="byte")
    ids = IDS % 300
    with torch.no_grad():
        looped = convert_to_dir(tmp_path / "base", tmp_path / "all", 1, 1, 3, 1)
        assert (_ours(looped, ids) - base(ids).logits).abs().max() < TOL
        twice = copy.deepcopy(base)
        twice.layers = torch.nn.ModuleList(base.layers[i] for i in (0, 1, 1, 2, 3, 4))
        one = convert_to_dir(tmp_path / "base", tmp_path / "one", 1, 1, 1, 3, adapter_init="state")
        assert (_ours(one, ids, r=2) - twice(ids).logits).abs().max() < TOL
    saved = json.loads((tmp_path / "one" / "config.json").read_text())
    assert (saved["variant"], saved["n_core"], saved["recur_tokenizer"], saved["eos_token_id"]) == (
        "recurrent",
        1,
        "byte",
        2,
    )
    generation = json.loads((tmp_path / "one" / "generation_config.json").read_text())
    assert generation["num_steps"] == one.cfg.default_num_steps
    with pytest.raises(ValueError, match="only a 'baseline' can be looped"):
        convert_to_dir(tmp_path / "one", tmp_path / "again", 1, 1, 1, 2)
    with pytest.raises(ValueError, match="init_state 'input'"):  # the caller's init_state is not overridden
        convert_to_dir(tmp_path / "base", tmp_path / "bad", 1, 1, 1, 3, adapter_init="state", init_state="random")
    untied = convert_to_dir(tmp_path / "base", tmp_path / "untied", 1, 1, 3, 1, tie_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.tok_embeddings.weight.data_ptr()
    with torch.no_grad():
        assert (_ours(untied, ids) - base(ids).logits).abs().max() < TOL


def test_misplaced_weight_is_detected(llama_dir, hf_models):
    """The equivalence test has teeth: swapping two norms of one layer breaks it by far more than TOL."""
    ours = convert_hf_model(llama_dir, 1, 1, 3, 1)
    block = ours.core[0]
    with torch.no_grad():
        a, m = block.attn_norm.weight.clone(), block.mlp_norm.weight.clone()
        block.attn_norm.weight.copy_(m)
        block.mlp_norm.weight.copy_(a)
    assert (_ours(ours, IDS) - _hf_logits(hf_models["llama"], IDS)).abs().max() > 100 * TOL


@pytest.fixture(scope="module")
def llama3_tied_dir(tmp_path_factory):
    """GQA + tied embeddings + Llama-3 RoPE scaling with a short original context, so scaled, smoothed and
    unscaled frequency bands all occur within the test's positions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=1,
        num_hidden_layers=3,
        vocab_size=TINY_VOCAB,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        rope_parameters=rope,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llama3") / "m"
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    make_tiny_tokenizer(path)
    _randomize(path, seed=3)
    return path


def test_llama3_rope_tied_gqa(llama3_tied_dir):
    hf = _hf(llama3_tied_dir)
    ours = convert_hf_model(llama3_tied_dir, 1, 1, 1, 1)
    assert ours.cfg.tie_embeddings and ours.lm_head.weight is ours.tok_embeddings.weight
    assert ours.cfg.rope_scaling["rope_type"] == "llama3" and ours.cfg.n_kv_heads == 1
    hf_inv = hf.model.rotary_emb.inv_freq.float()
    ours_inv = rope_frequencies(ours.cfg)
    assert torch.allclose(ours_inv, hf_inv, rtol=1e-6, atol=0)
    base = 1.0 / (500000.0 ** (torch.arange(0, 16, 2).double() / 16))
    assert not torch.allclose(ours_inv.double(), base, rtol=1e-3)  # scaling really changed some bands
    ids = torch.randint(0, TINY_VOCAB, (1, 200), generator=torch.Generator().manual_seed(1))
    assert (_ours(ours, ids) - _hf_logits(hf, ids)).abs().max() < TOL


@pytest.mark.parametrize("arch", ["llama", "olmo2"])
def test_save_load_round_trip_is_exact(arch, llama_dir, olmo_dir, tmp_path):
    src = llama_dir if arch == "llama" else olmo_dir
    out = tmp_path / "converted"
    model = convert_to_dir(src, out, 1, 2, 2, 1, arch=arch, default_num_steps=3)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "recur"
    assert (config["n_prelude"], config["n_core"], config["n_coda"]) == (1, 2, 1)
    assert config["conversion"]["source_layers"] == {"prelude": [0], "core": [2, 3], "coda": [4]}
    assert config["conversion"]["dropped_layers"] == [1]
    assert (out / "tokenizer.json").is_file()
    loaded = from_pretrained(out)
    assert loaded.cfg == model.cfg
    expected = model.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    # Bit-exact outputs at a depth beyond 1, where the adapter and the state both matter.
    assert torch.equal(_ours(loaded, IDS, r=3), _ours(model, IDS, r=3))


def test_load_pretrained_into_and_errors(llama_dir, llama3_tied_dir, tmp_path):
    out = tmp_path / "tied"
    convert_to_dir(llama3_tied_dir, out, 1, 1, 1, 1)
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))  # tied head stored once
    fresh = create_model(read_model_config(out, default_num_steps=2))
    load_pretrained_into(fresh, out)
    assert fresh.lm_head.weight is fresh.tok_embeddings.weight
    assert torch.equal(_ours(fresh, IDS), _ours(from_pretrained(out), IDS))
    with pytest.raises(ValueError, match="fix its weight shapes"):
        read_model_config(out, d_model=128)
    other = convert_hf_model(llama_dir, 1, 1, 3, 1)
    with pytest.raises(ValueError, match="--init_from"):
        load_pretrained_into(other, out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_to_dir(llama3_tied_dir, out, 1, 1, 1, 1)


def test_bf16_storage_loads_close(llama_dir, tmp_path):
    model = convert_to_dir(llama_dir, tmp_path / "bf16", 1, 1, 3, 1, dtype="bfloat16")
    loaded = from_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert torch.equal(loaded.core[0].attn.wq.weight, model.core[0].attn.wq.weight.bfloat16().float())


def test_cli_and_bad_input(llama_dir, olmo_dir, tmp_path, capsys):
    from utils.convert_hf import main

    out = tmp_path / "cli"
    assert (
        main(
            [
                "--arch",
                "llama",
                "--model_path",
                str(llama_dir),
                "--out",
                str(out),
                "--prelude_size",
                "1",
                "--start_index",
                "1",
                "--block_size",
                "3",
                "--coda_size",
                "1",
            ]
        )
        == 0
    )
    assert from_pretrained(out).cfg.n_core == 3
    bad = [
        "--model_path",
        str(llama_dir),
        "--out",
        str(tmp_path / "x"),
        "--prelude_size",
        "2",
        "--start_index",
        "1",
        "--block_size",
        "3",
        "--coda_size",
        "1",
    ]
    assert main(bad) == 2 and "--prelude_size (2) must be <= --start_index (1)" in capsys.readouterr().err
    wrong_arch = [
        "--arch",
        "llama",
        "--model_path",
        str(olmo_dir),
        "--out",
        str(tmp_path / "y"),
        "--prelude_size",
        "1",
        "--start_index",
        "1",
        "--block_size",
        "3",
        "--coda_size",
        "1",
    ]
    assert main(wrong_arch) == 2 and "model_type 'olmo2'" in capsys.readouterr().err
    assert (
        main(
            bad[:2]
            + [
                "--out",
                str(tmp_path / "z"),
                "--prelude_size",
                "0",
                "--start_index",
                "0",
                "--block_size",
                "9",
                "--coda_size",
                "0",
            ]
        )
        == 2
    )
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_unmapped_source_weight_is_an_error(llama_dir, tmp_path):
    import shutil

    path = tmp_path / "biased"
    shutil.copytree(llama_dir, path)
    state = load_file(str(path / "model.safetensors"))
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match="does not map"):
        convert_hf_model(path, 1, 1, 3, 1)


def test_untie_embeddings(llama3_tied_dir, tmp_path):
    from utils.untie_embeddings import main

    out = tmp_path / "untied"
    assert main(["--model_path", str(llama3_tied_dir), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    untied, tied = _hf(out), _hf(llama3_tied_dir)
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    assert torch.equal(untied.lm_head.weight, tied.model.embed_tokens.weight)
    assert torch.equal(_hf_logits(untied, IDS), _hf_logits(tied, IDS))
    # Converting the untied copy gives an untied recurrent model with the same outputs.
    ours = convert_hf_model(out, 1, 1, 1, 1)
    assert not ours.cfg.tie_embeddings
    assert (_ours(ours, IDS) - _hf_logits(tied, IDS)).abs().max() < TOL
    with pytest.raises(ValueError, match="already false"):
        untie_hf_checkpoint(out, tmp_path / "again")


def test_untie_sharded(llama3_tied_dir, tmp_path):
    """A sharded checkpoint gets the head as an extra shard listed in the index."""
    import shutil

    src = tmp_path / "sharded"
    shutil.copytree(llama3_tied_dir, src)
    state = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: state[n] for n in part}, str(src / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = untie_hf_checkpoint(src, tmp_path / "untied_sharded")
    untied = _hf(out)
    assert torch.equal(_hf_logits(untied, IDS), _hf_logits(_hf(llama3_tied_dir), IDS))
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


def test_conversion_loads_with_automodel_and_every_reader(llama3_tied_dir, tmp_path):
    """A conversion (llama3 RoPE scaling, tied head, GQA) is the same directory format as an export:
    transformers and recur's eval reader give recur's logits."""
    from transformers import AutoModelForCausalLM

    from recur.eval.load import load_model

    out = tmp_path / "converted"
    model = convert_to_dir(llama3_tied_dir, out, 1, 1, 1, 1, default_num_steps=2)
    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    assert hf.model.cfg == model.cfg
    for steps in (1, 3):
        want = _ours(model.eval(), IDS, r=steps)
        assert (hf(IDS, num_steps=steps).logits - want).abs().max() < 1e-4
        assert torch.equal(_ours(load_model(out)[0], IDS, r=steps), want)
