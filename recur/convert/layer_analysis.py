"""Decide which layers of a pretrained causal LM become prelude, recurrent block and coda.

Two per-layer metrics from one no-grad forward pass over a calibration set (H_i = input of layer i,
H_{i+1} = its output; padding masked out, averaged over all real tokens):

* Block Influence (ShortGPT, arXiv:2403.03853): ``BI_i = 1 - E[cos(H_i, H_{i+1})]``; low = redundant.
* Angular distance (Encode-Think-Decode, arXiv:2510.07358): ``E[arccos(cos(H_i, H_{i+1})) / pi]``.

The angular-distance curve is high for the first (encoding) layers, plateaus in the middle (thinking)
and rises again at the end (decoding). We split it at its minimum and run Kneedle on each side: the
left side is convex-decreasing, its knee is the first thinking layer; the right side is
convex-increasing, its knee is the last thinking layer. Where a side has no knee we fall back to a
one-layer prelude/coda and record that in ``ZoneBoundaries.source``.

Split convention (shared with the converter): layers ``[0, prelude_size)`` are the prelude,
``[start_index, start_index + block_size)`` the recurrent block, ``[n - coda_size, n)`` the coda,
everything else is dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from recur.convert.kneedle import find_knee, smooth

Zone = Literal["Prelude", "Recurrent", "Coda", "DROPPED"]

# Broad-domain prompts (prose, code, maths, dialogue, lists, several languages) so that the per-layer
# statistics reflect the model's general behaviour when no calibration corpus is given.
BUILTIN_PROMPTS: tuple[str, ...] = (
    "The history of the Roman Empire spans more than a thousand years, from the founding of the city to the fall of Constantinople.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "Photosynthesis converts light energy into chemical energy, producing glucose and oxygen from carbon dioxide and water.",
    "Q: If a train travels 120 kilometres in 1.5 hours, what is its average speed? A: 80 kilometres per hour.",
    "Dear Maria, thank you for your letter. I am glad to hear that the garden is finally blooming after the long winter.",
    "SELECT name, COUNT(*) AS orders FROM customers JOIN orders USING (customer_id) GROUP BY name ORDER BY orders DESC;",
    "The mitochondria is often called the powerhouse of the cell because it produces most of the cell's supply of ATP.",
    "In 1969, Neil Armstrong and Buzz Aldrin became the first humans to walk on the surface of the Moon.",
    "Recipe: whisk two eggs with a cup of milk, add flour gradually, and let the batter rest for thirty minutes before frying.",
    "The derivative of sin(x) is cos(x), and the integral of 1/x with respect to x is ln|x| plus a constant.",
    "User: Can you recommend a good book about economics?\nAssistant: You might enjoy 'Thinking, Fast and Slow' by Daniel Kahneman.",
    "La Révolution française a profondément transformé la société et les institutions politiques de la France.",
    "Die Quantenmechanik beschreibt das Verhalten von Teilchen auf atomarer und subatomarer Ebene.",
    "El cambio climático afecta a los ecosistemas, la agricultura y la disponibilidad de agua en todo el mundo.",
    "Shopping list: apples, bread, coffee beans, olive oil, tomatoes, fresh basil, and a bottle of sparkling water.",
    "The stock market fell sharply on Tuesday as investors reacted to rising interest rates and weak earnings reports.",
    "A binary search tree keeps its keys in sorted order, so lookup, insertion and deletion take logarithmic time on average.",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "To reset your password, open the settings page, choose 'Security', and follow the instructions sent to your email.",
    "The Pythagorean theorem states that in a right triangle the square of the hypotenuse equals the sum of the squares of the other two sides.",
    "import numpy as np\nx = np.linspace(0, 1, 100)\ny = np.sin(2 * np.pi * x)\nprint(y.mean())",
    "Volcanoes form where magma from the Earth's mantle reaches the surface, often along the boundaries of tectonic plates.",
    "The committee will meet on Thursday at 3 pm to review the budget proposal and vote on the new hiring plan.",
    "Once upon a time, in a village at the edge of a dark forest, there lived a clever girl who was never afraid of wolves.",
    "Water boils at 100 degrees Celsius at sea level, but at higher altitudes the boiling point is lower because air pressure drops.",
    '{"id": 42, "name": "sensor-7", "readings": [21.5, 21.7, 22.0], "status": "ok"}',
    "The defendant pleaded not guilty, and the trial is expected to last several weeks as both sides present expert witnesses.",
    "Machine learning models generalise poorly when the training data does not represent the distribution seen at deployment.",
    "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
    "Step 1: preheat the oven to 180 degrees. Step 2: grease the tin. Step 3: pour in the batter and bake for 25 minutes.",
    "The symphony opens with a quiet theme in the strings before the brass section enters with a triumphant fanfare.",
    "Prime numbers less than fifty: 2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47.",
)


# ---------------------------------------------------------------------------------------------
# Split convention
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSplit:
    """A prelude / recurrent block / coda split of ``n_layers`` decoder layers (see module doc)."""

    n_layers: int
    prelude_size: int
    start_index: int
    block_size: int
    coda_size: int

    def __post_init__(self) -> None:
        validate_split(self.n_layers, self.prelude_size, self.start_index, self.block_size, self.coda_size)

    def zone(self, layer: int) -> Zone:
        if layer < self.prelude_size:
            return "Prelude"
        if self.start_index <= layer < self.start_index + self.block_size:
            return "Recurrent"
        if layer >= self.n_layers - self.coda_size:
            return "Coda"
        return "DROPPED"

    def zones(self) -> list[Zone]:
        return [self.zone(i) for i in range(self.n_layers)]

    @property
    def sections(self) -> dict[str, list[int]]:
        """The source layers of the prelude, the recurrent block ("core") and the coda, in order."""
        return {
            "prelude": list(range(self.prelude_size)),
            "core": list(range(self.start_index, self.start_index + self.block_size)),
            "coda": list(range(self.n_layers - self.coda_size, self.n_layers)),
        }

    @property
    def dropped(self) -> list[int]:
        kept = {i for layers in self.sections.values() for i in layers}
        return [i for i in range(self.n_layers) if i not in kept]

    def cli_flags(self) -> str:
        return (
            f"--prelude_size {self.prelude_size} --start_index {self.start_index} "
            f"--block_size {self.block_size} --coda_size {self.coda_size}"
        )


def validate_split(n_layers: int, prelude_size: int, start_index: int, block_size: int, coda_size: int) -> None:
    """Raise ValueError naming the offending flag unless the split fits the convention."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    for name, value in (("prelude_size", prelude_size), ("start_index", start_index), ("coda_size", coda_size)):
        if value < 0:
            raise ValueError(f"--{name} must be >= 0, got {value}")
    if block_size < 1:
        raise ValueError(f"--block_size must be >= 1, got {block_size}")
    if prelude_size > start_index:
        raise ValueError(
            f"--prelude_size ({prelude_size}) must be <= --start_index ({start_index}): "
            "the prelude [0, prelude_size) may not overlap the recurrent block"
        )
    coda_start = n_layers - coda_size
    if start_index + block_size > coda_start:
        raise ValueError(
            f"recurrent block [{start_index}, {start_index + block_size}) overlaps the coda "
            f"[{coda_start}, {n_layers}) or runs past the {n_layers} layers: need "
            "--start_index + --block_size <= n_layers - --coda_size"
        )


# ---------------------------------------------------------------------------------------------
# Calibration data
# ---------------------------------------------------------------------------------------------


def _parquet_texts(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if "text" not in parquet.schema_arrow.names:
        raise ValueError(
            f"--calibration {path}: parquet file has no 'text' column (columns: {parquet.schema_arrow.names})"
        )
    for batch in parquet.iter_batches(columns=["text"], batch_size=1024):
        yield from batch.column("text").to_pylist()


def _jsonl_texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"--calibration {path}:{line_no}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict) or "text" not in record:
                raise ValueError(f"--calibration {path}:{line_no}: expected an object with a 'text' field")
            yield record["text"]


def load_calibration_texts(path: str | Path | None, num_samples: int | None = None) -> list[str]:
    """Up to ``num_samples`` texts from a parquet (``text`` column) or jsonl (``text`` field) file,
    or from ``BUILTIN_PROMPTS`` when ``path`` is None. Every text must be a non-empty string."""
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1, got {num_samples}")
    if path is None:
        source: Iterator[str] = iter(BUILTIN_PROMPTS)
        where = "built-in prompts"
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--calibration {path}: file not found")
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            source = _parquet_texts(path)
        elif suffix == ".jsonl":
            source = _jsonl_texts(path)
        else:
            raise ValueError(f"--calibration {path}: expected a .parquet or .jsonl file, got '{suffix}'")
        where = f"--calibration {path}"
    texts: list[str] = []
    for text in source:
        if num_samples is not None and len(texts) == num_samples:
            break
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: sample {len(texts)} is not a non-empty string: {text!r:.60}")
        texts.append(text)
    if not texts:
        raise ValueError(f"{where}: contains no samples")
    return texts


# ---------------------------------------------------------------------------------------------
# Model loading and metrics
# ---------------------------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine (use --device cpu or auto)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def _model_dir(model_path: str | Path) -> Path:
    path = Path(model_path)
    if not path.is_dir():
        raise FileNotFoundError(f"--model_path {path}: directory not found")
    if not (path / "config.json").is_file():
        raise ValueError(f"--model_path {path}: not a Hugging Face model directory (no config.json)")
    return path


def count_layers(model_path: str | Path) -> int:
    """Number of decoder layers, from the config alone (no weights loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(_model_dir(model_path)), local_files_only=True)
    return config.get_text_config().num_hidden_layers


def load_model(model_path: str | Path, device: torch.device, dtype: str = "float32"):
    """``(model, tokenizer)`` from a local HF directory; never touches the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _model_dir(model_path)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=DTYPES[dtype])
    return model.to(device).eval(), tokenizer


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder's layer stack (``model.model.layers`` for Llama, OLMo-2, Qwen, Mistral, ...)."""
    layers = getattr(model.get_decoder(), "layers", None)
    n_layers = model.config.get_text_config().num_hidden_layers
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != n_layers:
        raise ValueError(
            f"{type(model).__name__}: cannot locate its {n_layers} decoder layers (expected get_decoder().layers)"
        )
    return layers


@dataclass
class LayerMetrics:
    block_influence: list[float]
    angular_distance: list[float]
    num_tokens: int


def _batches(
    tokenizer, texts: Sequence[str], max_length: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(input_ids, attention_mask)`` batches. We pad ourselves so models whose
    tokenizer has no pad token work too; the pad id is irrelevant because padding is masked."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(texts), batch_size):
        encoded = [
            tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts[start : start + batch_size]
        ]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        yield input_ids, mask


@torch.no_grad()
def collect_layer_metrics(
    model: torch.nn.Module, tokenizer, texts: Sequence[str], max_length: int = 512, batch_size: int = 8
) -> LayerMetrics:
    """Block Influence and angular distance per decoder layer, averaged over all non-pad tokens."""
    if max_length < 2:
        raise ValueError(f"--max_length must be >= 2, got {max_length}")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
    layers = decoder_layers(model)
    n_layers = len(layers)
    device = next(model.parameters()).device
    # HF replaces hidden_states[-1] with the final-norm output; the last layer's raw output is taken
    # from a hook so its metric compares like with like.
    captured: dict[str, torch.Tensor] = {}

    def keep_last_output(_module, _args, output) -> None:
        captured["last"] = output[0] if isinstance(output, tuple) else output

    handle = layers[-1].register_forward_hook(keep_last_output)
    cos_sum = torch.zeros(n_layers, dtype=torch.float64)
    angle_sum = torch.zeros(n_layers, dtype=torch.float64)
    num_tokens = 0
    try:
        n_batches = math.ceil(len(texts) / batch_size)
        for input_ids, mask in tqdm(
            _batches(tokenizer, texts, max_length, batch_size), total=n_batches, desc="layer analysis", unit="batch"
        ):
            input_ids, mask = input_ids.to(device), mask.to(device)
            out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
            states = list(out.hidden_states[:n_layers]) + [captured.pop("last")]
            valid = mask.bool()
            num_tokens += int(valid.sum())
            for i in range(n_layers):
                cos = torch.nn.functional.cosine_similarity(states[i].float(), states[i + 1].float(), dim=-1)
                cos = cos[valid].clamp(-1.0, 1.0).double()
                cos_sum[i] += cos.sum().cpu()
                angle_sum[i] += (torch.arccos(cos) / math.pi).sum().cpu()
    finally:
        handle.remove()
    return LayerMetrics(
        block_influence=(1.0 - cos_sum / num_tokens).tolist(),
        angular_distance=(angle_sum / num_tokens).tolist(),
        num_tokens=num_tokens,
    )


# ---------------------------------------------------------------------------------------------
# Zones and split
# ---------------------------------------------------------------------------------------------


@dataclass
class ZoneBoundaries:
    """Thinking zone ``[prelude_size, n_layers - coda_size)`` from the angular-distance knees."""

    prelude_size: int
    coda_size: int
    encode_knee: int | None  # first thinking layer, None when Kneedle found no knee
    decode_knee: int | None  # last thinking layer, None when Kneedle found no knee
    curve_minimum: int
    source: dict[str, str] = field(default_factory=dict)  # "kneedle" or "fallback" per boundary


def find_zone_boundaries(
    angular_distance: Sequence[float], sensitivity: float = 1.0, smooth_window: int = 1
) -> ZoneBoundaries:
    n = len(angular_distance)
    if n < 3:
        raise ValueError(f"model has {n} decoder layers; a prelude/recurrent/coda split needs at least 3")
    curve = smooth(np.asarray(angular_distance, dtype=np.float64), smooth_window)
    minimum = int(np.argmin(curve))
    encode_knee = decode_knee = None
    if minimum + 1 >= 3:
        encode_knee = find_knee(np.arange(minimum + 1), curve[: minimum + 1], "convex", "decreasing", sensitivity)
    if n - minimum >= 3:
        knee = find_knee(np.arange(n - minimum), curve[minimum:], "convex", "increasing", sensitivity)
        decode_knee = None if knee is None else minimum + knee
    # Kneedle never returns an end point, so a found knee always leaves >= 1 prelude and coda layer.
    prelude_size = encode_knee if encode_knee is not None else 1
    coda_size = n - 1 - decode_knee if decode_knee is not None else 1
    source = {
        "encode_think": "kneedle" if encode_knee is not None else "fallback",
        "think_decode": "kneedle" if decode_knee is not None else "fallback",
    }
    return ZoneBoundaries(prelude_size, coda_size, encode_knee, decode_knee, minimum, source)


def check_target_recurrent_size(size: int, n_layers: int) -> None:
    if not 1 <= size <= n_layers - 2:
        raise ValueError(
            f"--target_recurrent_size must be between 1 and {n_layers - 2} for a model with "
            f"{n_layers} layers (one prelude and one coda layer are kept), got {size}"
        )


def choose_split(
    block_influence: Sequence[float], zones: ZoneBoundaries, target_recurrent_size: int | None = None
) -> LayerSplit:
    """Turn the thinking zone into a split.

    * No target: the whole thinking zone is the recurrent block; nothing is dropped.
    * Target N <= zone size: the block must stay contiguous, so we keep the N-layer window of the
      zone with the highest total BI; the zone's remaining (edge) layers are dropped.
    * Target N > zone size: the zone grows one layer at a time into whichever neighbour (last prelude
      layer or first coda layer) has the higher BI, always keeping >= 1 prelude and >= 1 coda layer.
    """
    n = len(block_influence)
    bi = np.asarray(block_influence, dtype=np.float64)
    lo, hi = zones.prelude_size, n - zones.coda_size
    if target_recurrent_size is None:
        return LayerSplit(n, lo, lo, hi - lo, zones.coda_size)
    check_target_recurrent_size(target_recurrent_size, n)
    size = target_recurrent_size
    if size <= hi - lo:
        window_bi = [bi[s : s + size].sum() for s in range(lo, hi - size + 1)]
        start = lo + int(np.argmax(window_bi))
        return LayerSplit(n, lo, start, size, zones.coda_size)
    while hi - lo < size:
        can_take_prelude, can_take_coda = lo > 1, hi < n - 1
        if can_take_prelude and (not can_take_coda or bi[lo - 1] >= bi[hi]):
            lo -= 1
        else:
            hi += 1
    return LayerSplit(n, lo, lo, size, n - hi)


@dataclass
class LayerAnalysis:
    model_path: str
    n_layers: int
    num_samples: int
    num_tokens: int
    metrics: LayerMetrics
    zones: ZoneBoundaries
    split: LayerSplit
    target_recurrent_size: int | None


def analyse_model(
    model_path: str | Path,
    calibration: str | Path | None = None,
    num_samples: int | None = None,
    max_length: int = 512,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "float32",
    target_recurrent_size: int | None = None,
    sensitivity: float = 1.0,
    smooth_window: int = 1,
) -> LayerAnalysis:
    """Load, measure, find zones and choose a split; the whole analysis in one call."""
    texts = load_calibration_texts(calibration, num_samples)
    if target_recurrent_size is not None:  # fail before loading weights and the forward pass
        check_target_recurrent_size(target_recurrent_size, count_layers(model_path))
    model, tokenizer = load_model(model_path, resolve_device(device), dtype)
    n_layers = len(decoder_layers(model))
    metrics = collect_layer_metrics(model, tokenizer, texts, max_length, batch_size)
    zones = find_zone_boundaries(metrics.angular_distance, sensitivity, smooth_window)
    split = choose_split(metrics.block_influence, zones, target_recurrent_size)
    return LayerAnalysis(
        str(model_path), n_layers, len(texts), metrics.num_tokens, metrics, zones, split, target_recurrent_size
    )
