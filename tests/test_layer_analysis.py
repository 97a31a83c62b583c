import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hf_fixtures import make_tiny_llama, make_tiny_olmo2
from hypothesis import given, settings
from hypothesis import strategies as st

from recur.convert.layer_analysis import (
    BUILTIN_PROMPTS,
    LayerSplit,
    ZoneBoundaries,
    choose_split,
    collect_layer_metrics,
    decoder_layers,
    find_zone_boundaries,
    load_calibration_texts,
    load_model,
    validate_split,
)

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "utils" / "layer_analysis.py"


def _load_cli():
    """The CLI module, loaded from its file so it runs in-process (saves interpreter start-ups)."""
    spec = importlib.util.spec_from_file_location("layer_analysis_cli", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


main = _load_cli().main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Encode (falling), think (plateau), decode (rising): the ETD shape.
U_CURVE = [0.45, 0.30, 0.18, 0.12, 0.10, 0.095, 0.09, 0.092, 0.094, 0.09, 0.095, 0.10, 0.12, 0.2, 0.35, 0.5]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("hf"), n_layers=6)


# ----------------------------------------------------------------- zones and split (no model)


def test_zone_boundaries_follow_the_knees_of_the_angular_curve():
    zones = find_zone_boundaries(U_CURVE)
    assert (zones.encode_knee, zones.decode_knee, zones.curve_minimum) == (2, 12, 6)
    assert (zones.prelude_size, zones.coda_size) == (2, 3)
    assert zones.source == {"encode_think": "kneedle", "think_decode": "kneedle"}


def test_zone_boundaries_fall_back_to_one_layer_when_no_knee():
    zones = find_zone_boundaries(np.linspace(0.5, 0.1, 8))  # straight line: no knee on either side
    assert (zones.prelude_size, zones.coda_size) == (1, 1)
    assert zones.source == {"encode_think": "fallback", "think_decode": "fallback"}
    with pytest.raises(ValueError, match="at least 3"):
        find_zone_boundaries([0.2, 0.1])


def test_split_without_target_keeps_the_whole_thinking_zone():
    split = choose_split([0.1] * 16, find_zone_boundaries(U_CURVE))
    assert (split.prelude_size, split.start_index, split.block_size, split.coda_size) == (2, 2, 11, 3)
    assert "DROPPED" not in split.zones()


def test_target_smaller_than_zone_keeps_highest_bi_window_and_drops_the_rest():
    bi = [0.5, 0.4, 0.01, 0.02, 0.3, 0.3, 0.3, 0.01, 0.4, 0.5]
    zones = ZoneBoundaries(prelude_size=2, coda_size=2, encode_knee=2, decode_knee=7, curve_minimum=4)
    split = choose_split(bi, zones, target_recurrent_size=3)
    assert (split.prelude_size, split.start_index, split.block_size, split.coda_size) == (2, 4, 3, 2)
    assert split.zones() == ["Prelude"] * 2 + ["DROPPED"] * 2 + ["Recurrent"] * 3 + ["DROPPED"] + ["Coda"] * 2
    assert split.cli_flags() == "--prelude_size 2 --start_index 4 --block_size 3 --coda_size 2"


def test_target_larger_than_zone_grows_into_higher_bi_neighbours():
    bi = [0.9, 0.2, 0.5, 0.5, 0.6, 0.1, 0.9]
    zones = ZoneBoundaries(prelude_size=3, coda_size=3, encode_knee=3, decode_knee=3, curve_minimum=3)
    split = choose_split(bi, zones, target_recurrent_size=3)  # zone [3]; takes 4 (0.6), then 2 (0.5)
    assert split.zones() == ["Prelude", "Prelude", "Recurrent", "Recurrent", "Recurrent", "Coda", "Coda"]
    split = choose_split(bi, zones, target_recurrent_size=5)  # everything but one prelude/coda layer
    assert (split.prelude_size, split.block_size, split.coda_size) == (1, 5, 1)
    for bad in (0, 6):
        with pytest.raises(ValueError, match="--target_recurrent_size must be between 1 and 5"):
            choose_split(bi, zones, target_recurrent_size=bad)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_any_curve_and_target_give_a_valid_split(data):
    n = data.draw(st.integers(3, 24))
    angular = data.draw(st.lists(st.floats(0.01, 0.6), min_size=n, max_size=n))
    bi = data.draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))
    target = data.draw(st.none() | st.integers(1, n - 2))
    split = choose_split(bi, find_zone_boundaries(angular), target)
    assert split.prelude_size >= 1 and split.coda_size >= 1 and split.block_size >= 1
    if target is not None:
        assert split.block_size == target
    zones = split.zones()
    assert zones.count("Recurrent") == split.block_size and zones[0] == "Prelude" and zones[-1] == "Coda"


@pytest.mark.parametrize(
    "args,match",
    [
        ((6, 2, 1, 2, 1), "--prelude_size \\(2\\) must be <= --start_index"),
        ((6, 1, 1, 4, 2), "overlaps the coda"),
        ((6, 1, 1, 0, 1), "--block_size must be >= 1"),
        ((6, -1, 1, 2, 1), "--prelude_size must be >= 0"),
    ],
)
def test_invalid_splits_are_rejected(args, match):
    with pytest.raises(ValueError, match=match):
        validate_split(*args)
    with pytest.raises(ValueError, match=match):
        LayerSplit(*args)


# ----------------------------------------------------------------- calibration data


def test_calibration_sources(tmp_path):
    assert load_calibration_texts(None) == list(BUILTIN_PROMPTS) and len(BUILTIN_PROMPTS) == 32
    jsonl = tmp_path / "cal.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"sample {i}", "id": i}) for i in range(5)) + "\n")
    assert load_calibration_texts(jsonl, 3) == ["sample 0", "sample 1", "sample 2"]
    parquet = tmp_path / "cal.parquet"
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(7)], "url": ["u"] * 7}), parquet)
    assert load_calibration_texts(parquet) == [f"doc {i}" for i in range(7)]

    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "ok"}\n{"content": "no text"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: expected an object with a 'text' field"):
        load_calibration_texts(bad_jsonl)
    no_col = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["x"]}), no_col)
    with pytest.raises(ValueError, match="no 'text' column"):
        load_calibration_texts(no_col)
    with pytest.raises(ValueError, match="expected a .parquet or .jsonl"):
        (tmp_path / "cal.txt").write_text("x")
        load_calibration_texts(tmp_path / "cal.txt")
    with pytest.raises(FileNotFoundError, match="--calibration"):
        load_calibration_texts(tmp_path / "missing.jsonl")
    empty_text = tmp_path / "empty.jsonl"
    empty_text.write_text('{"text": "ok"}\n{"text": "  "}\n')
    with pytest.raises(ValueError, match="sample 1 is not a non-empty string"):
        load_calibration_texts(empty_text)


# ----------------------------------------------------------------- metrics on a real HF model


def test_metrics_match_direct_computation_and_ignore_padding(llama_dir):
    model, tokenizer = load_model(llama_dir, torch.device("cpu"))
    texts = list(BUILTIN_PROMPTS[:6])
    batched = collect_layer_metrics(model, tokenizer, texts, max_length=48, batch_size=6)
    single = collect_layer_metrics(model, tokenizer, texts, max_length=48, batch_size=1)
    np.testing.assert_allclose(batched.block_influence, single.block_influence, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(batched.angular_distance, single.angular_distance, rtol=1e-4, atol=1e-6)
    assert batched.num_tokens == single.num_tokens

    # Reference: every layer's raw input/output from hooks, one unpadded text at a time.
    layers = decoder_layers(model)
    cos_all = [[] for _ in layers]
    for text in texts:
        ids = torch.tensor([tokenizer(text, truncation=True, max_length=48)["input_ids"]])
        pairs = []
        hooks = [
            layer.register_forward_hook(lambda m, a, o, k=i, pairs=pairs: pairs.append((k, a[0], o)))
            for i, layer in enumerate(layers)
        ]
        with torch.no_grad():
            model(input_ids=ids)
        for h in hooks:
            h.remove()
        for k, inp, out in pairs:
            cos_all[k].append(torch.nn.functional.cosine_similarity(inp[0], out[0], dim=-1))
    cos = [torch.cat(c).double() for c in cos_all]
    np.testing.assert_allclose(batched.block_influence, [1 - c.mean().item() for c in cos], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        batched.angular_distance,
        [(torch.arccos(c.clamp(-1, 1)) / np.pi).mean().item() for c in cos],
        rtol=1e-4,
        atol=1e-6,
    )
    assert all(0 < b < 2 for b in batched.block_influence)


def test_cli_prints_table_and_writes_json_and_png(llama_dir, tmp_path, capsys):
    out_json = tmp_path / "out" / "analysis.json"
    assert main(["--model_path", str(llama_dir), "--out_json", str(out_json), "--max_length", "32"]) == 0
    stdout = capsys.readouterr().out
    table_rows = [line for line in stdout.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert len(table_rows) == 6
    assert "--prelude_size" in stdout and "--start_index" in stdout and "--coda_size" in stdout

    data = json.loads(out_json.read_text())
    assert data["n_layers"] == 6 and data["num_samples"] == 32 and data["num_tokens"] > 100
    assert [row["layer"] for row in data["layers"]] == list(range(6))
    assert {"block_influence", "angular_distance", "zone"} <= set(data["layers"][0])
    split = data["split"]
    validate_split(6, split["prelude_size"], split["start_index"], split["block_size"], split["coda_size"])
    assert data["cli_flags"] in stdout
    assert set(data["zones"]) >= {"prelude_size", "coda_size", "encode_knee", "decode_knee", "source"}

    png = out_json.with_suffix(".png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000
    assert not list(out_json.parent.glob(".*tmp"))  # atomic writes left no temp files


def test_cli_target_size_and_calibration_file_on_olmo2(tmp_path, capsys):
    model_dir = make_tiny_olmo2(tmp_path, n_layers=5)
    cal = tmp_path / "cal.jsonl"
    cal.write_text("\n".join(json.dumps({"text": t}) for t in BUILTIN_PROMPTS[::-1]) + "\n")
    out_json, plot = tmp_path / "o.json", tmp_path / "plots" / "o.png"
    assert (
        main(
            [
                "--model_path",
                str(model_dir),
                "--calibration",
                str(cal),
                "--num_samples",
                "5",
                "--target_recurrent_size",
                "2",
                "--out_json",
                str(out_json),
                "--save_plot",
                str(plot),
            ]
        )
        == 0
    )
    data = json.loads(out_json.read_text())
    assert data["num_samples"] == 5 and data["target_recurrent_size"] == 2
    assert data["split"]["block_size"] == 2 and [r["zone"] for r in data["layers"]].count("Recurrent") == 2
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    assert "--block_size 2" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_error_with_exit_code_2(llama_dir, tmp_path, capsys):
    assert (
        main(["--model_path", str(llama_dir), "--target_recurrent_size", "9", "--out_json", str(tmp_path / "a.json")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert (
        err == "error: --target_recurrent_size must be between 1 and 4 for a model with 6 layers "
        "(one prelude and one coda layer are kept), got 9"
    )
    assert not (tmp_path / "a.json").exists()
    assert main(["--model_path", str(tmp_path), "--out_json", str(tmp_path / "a.json")]) == 2
    assert "no config.json" in capsys.readouterr().err

    # As a real script: missing model directory.
    proc = subprocess.run(
        [sys.executable, str(CLI), "--model_path", str(tmp_path / "nope"), "--out_json", str(tmp_path / "b.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --model_path {tmp_path / 'nope'}: directory not found"]
