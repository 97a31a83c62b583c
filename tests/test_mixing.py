import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mix_datasets as mix_cli
from recur.data.mixing import MixSource, apportion, load_mix_config, mix_datasets, parse_source
from recur.data.packing import pack_dataset
from recur.data.shard_writer import file_sha256
from recur.data.validate import open_packed_dataset, row_token_counts


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    # ~1M tokens in total over three sources of different sizes and row fill (concat vs bfd).
    pack_dataset(root / "parity", tokenizer="byte", seq_len=63, tasks=["parity"], num_docs=12000, seed=1)
    pack_dataset(root / "copy", tokenizer="byte", seq_len=63, tasks=["copy"], num_docs=12000, seed=2, packing="bfd")
    pack_dataset(root / "add", tokenizer="byte", seq_len=63, tasks=["addition", "successor"], num_docs=8000, seed=3)
    pack_dataset(root / "short", tokenizer="byte", seq_len=31, tasks=["parity"], num_docs=100)
    return root


def _realised(out_dir):
    manifest = open_packed_dataset(out_dir)
    return manifest, {entry["path"]: entry["token_ratio"] for entry in manifest["sources"]}


def test_token_ratios_within_one_percent(packed, tmp_path):
    weights = {"parity": 0.5, "copy": 0.3, "add": 0.2}
    sources = [MixSource(str(packed / name), weight) for name, weight in weights.items()]
    manifest = mix_datasets(sources, tmp_path / "mix", num_shards=4, seed=0, num_tokens=1_000_000)
    manifest, ratios = _realised(tmp_path / "mix")
    for name, weight in weights.items():
        assert abs(ratios[str(packed / name)] - weight) < 0.01 * weight
    assert abs(manifest["num_tokens"] - 1_000_000) < 20_000
    rows = [shard["num_rows"] for shard in manifest["shards"]]
    assert len(set(rows)) == 1 and len(rows) == 4
    # The stored realised tokens match a recount of the written rows.
    table = pa.concat_tables([pq.read_table(tmp_path / "mix" / s["file"]) for s in manifest["shards"]])
    assert row_token_counts(table, manifest["tokenizer"]["pad_id"]).sum() == manifest["num_tokens"]
    assert any(entry["repeat_factor"] > 1 for entry in manifest["sources"])


def test_deterministic_and_seed_dependent(packed, tmp_path):
    sources = [MixSource(str(packed / "parity"), 1), MixSource(str(packed / "add"), 1)]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        mix_datasets(sources, tmp_path / name, num_shards=2, seed=seed, num_rows=600)
    shard = "shard-00000.parquet"
    a, b, c = (pq.read_table(tmp_path / n / shard).column("input_ids").to_pylist() for n in "abc")
    assert a == b and a != c


def test_default_size_repeats_nothing(packed, tmp_path, capsys):
    sources = [MixSource(str(packed / "parity"), 3), MixSource(str(packed / "add"), 1)]
    manifest = mix_datasets(sources, tmp_path / "mix", num_shards=3)
    assert all(entry["repeat_factor"] <= 1 for entry in manifest["sources"])
    assert max(entry["repeat_factor"] for entry in manifest["sources"]) > 0.99
    assert manifest["num_rows"] % 3 == 0
    assert "REPEATED" not in capsys.readouterr().out
    mix_datasets(sources, tmp_path / "big", num_rows=3 * manifest["num_rows"])
    assert "REPEATED" in capsys.readouterr().out


def test_refuses_incompatible_and_bad_sources(packed, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"source .*short has seq_len 31 but .*parity has 63"):
        mix_datasets([MixSource(str(packed / "parity"), 1), MixSource(str(packed / "short"), 1)], tmp_path / "x")
    foreign = tmp_path / "foreign"
    pack_dataset(foreign, tokenizer="byte", seq_len=63, tasks=["copy"], num_docs=50)
    manifest_path = foreign / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tokenizer"]["fingerprint"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"source .*foreign uses tokenizer 'byte' with a different fingerprint"):
        mix_datasets([MixSource(str(packed / "parity"), 1), MixSource(str(foreign), 1)], tmp_path / "y")
    with pytest.raises(FileNotFoundError, match=r"packed dataset directory '.*nowhere' does not exist"):
        mix_datasets([MixSource(str(tmp_path / "nowhere"), 1)], tmp_path / "z")
    with pytest.raises(ValueError, match="expected PATH:WEIGHT with a weight > 0"):
        parse_source("data/a:-1")
    with pytest.raises(ValueError, match="no sources to mix"):
        mix_datasets([], tmp_path / "w")
    assert mix_cli.main(["--source", "nodir:1", "--out_dir", str(tmp_path / "v")]) == 2
    assert "packed dataset directory 'nodir' does not exist" in capsys.readouterr().err


def test_empty_source_is_refused(packed, tmp_path):
    empty = tmp_path / "empty"
    pack_dataset(empty, tokenizer="byte", seq_len=63, tasks=["copy"], num_docs=5)
    manifest = json.loads((empty / "manifest.json").read_text())
    pq.write_table(pq.read_table(empty / "shard-00000.parquet").slice(0, 0), empty / "shard-00000.parquet")
    manifest.update(num_rows=0, num_tokens=0)
    manifest["shards"][0].update(num_rows=0, sha256=file_sha256(empty / "shard-00000.parquet"))  # honestly empty
    (empty / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"source .*empty is empty"):
        mix_datasets([MixSource(str(packed / "parity"), 1), MixSource(str(empty), 1)], tmp_path / "out")


def test_yaml_config_and_apportion(packed, tmp_path):
    config = tmp_path / "mix.yaml"
    config.write_text(
        f"sources:\n  - {{path: {packed / 'parity'}, weight: 2}}\n  - {{path: {packed / 'add'}, weight: 1}}\n"
    )
    assert load_mix_config(config) == [MixSource(str(packed / "parity"), 2.0), MixSource(str(packed / "add"), 1.0)]
    assert (
        mix_cli.main(
            ["--config", str(config), "--num_rows", "90", "--num_shards", "3", "--out_dir", str(tmp_path / "m")]
        )
        == 0
    )
    assert open_packed_dataset(tmp_path / "m")["num_rows"] == 90
    counts = apportion(10, np.array([1.0, 1.0, 1.0]))
    assert counts.sum() == 10 and sorted(counts) == [3, 3, 4]
