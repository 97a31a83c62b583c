"""The documented schema of every evaluation JSON (results_<suite>.json, sweep files) and its validator.

The schema is a JSON-Schema-like dict (subset: type, properties, required, items, values, enum), small
enough to validate without a dependency. docs/eval.md renders the same structure for readers.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
GRID_VERSION = "tasks-v1"  # bump when task generators, difficulty grids or needle prompts change
SUITES = ("algorithmic", "longctx", "perplexity", "all", "sweep")

_NUM = ["number", "integer"]
_OPT_NUM = ["number", "integer", "null"]
_OPT_INT = ["integer", "null"]
_OPT_STR = ["string", "null"]


def _obj(required: dict, optional: dict | None = None) -> dict:
    return {"type": "object", "properties": {**required, **(optional or {})}, "required": list(required)}


# 95% Wilson interval of a cell's accuracy; optional so results written before it existed stay valid.
_CI = {"ci_low": {"type": _NUM}, "ci_high": {"type": _NUM}}

_SKIP = _obj(
    {"reason": {"type": "string"}},
    {"task": {"type": "string"}, "difficulty": {"type": "integer"}, "context_length": {"type": "integer"}},
)

ALGORITHMIC = _obj(
    {
        "tasks": {
            "type": "object",
            "values": _obj(
                {
                    "knob": {"type": "string"},
                    "train_difficulty": {"type": "integer"},
                    "results": {
                        "type": "array",
                        "items": _obj(
                            {
                                "depth": {"type": "integer"},
                                "difficulty": {"type": "integer"},
                                "in_distribution": {"type": "boolean"},
                                "accuracy": {"type": _NUM},
                                "correct": {"type": "integer"},
                                "num_samples": {"type": "integer"},
                                "mean_steps": {"type": _NUM},
                                "max_new_tokens": {"type": "integer"},
                            },
                            _CI,
                        ),
                    },
                }
            ),
        },
        "summary": {
            "type": "array",
            "items": _obj(
                {
                    "depth": {"type": "integer"},
                    "in_distribution": {"type": _OPT_NUM},
                    "ood": {"type": _OPT_NUM},
                }
            ),
        },
        "skipped": {"type": "array", "items": _SKIP},
    }
)

LONGCTX = _obj(
    {
        "results": {
            "type": "array",
            "items": _obj(
                {
                    "context_length": {"type": "integer"},
                    "prompt_tokens": {"type": "integer"},
                    "needle_position": {"type": _NUM},
                    "depth": {"type": "integer"},
                    "accuracy": {"type": _NUM},
                    "correct": {"type": "integer"},
                    "num_samples": {"type": "integer"},
                },
                _CI,
            ),
        },
        "summary": {
            "type": "array",
            "items": _obj(
                {
                    "context_length": {"type": "integer"},
                    "depth": {"type": "integer"},
                    "accuracy": {"type": _NUM},
                }
            ),
        },
        "skipped": {"type": "array", "items": _SKIP},
    }
)

PERPLEXITY = _obj(
    {
        "data": {"type": "string"},
        "rows": {"type": "integer"},
        "results": {
            "type": "array",
            "items": _obj(
                {
                    "depth": {"type": "integer"},
                    "loss": {"type": _NUM},
                    "perplexity": {"type": _NUM},
                    "tokens": {"type": "integer"},
                }
            ),
        },
    }
)

METADATA = _obj(
    {
        "created": {"type": "string"},
        "commit": {"type": "string"},
        "commit_dirty": {"type": ["boolean", "null"]},
        "seed": {"type": "integer"},
        "grid_version": {"type": "string"},
        "device": {"type": "string"},
        "checkpoint": _obj(
            {
                "path": {"type": "string"},
                "kind": {"type": "string"},
                "run_dir": {"type": _OPT_STR},
                "step": {"type": _OPT_INT},
                "tokens": {"type": _OPT_INT},
            }
        ),
        "model": _obj(
            {
                "variant": {"type": "string"},
                "params": {"type": "integer"},
                "config": {"type": "object"},
                "looped": {"type": "boolean"},
            }
        ),
        "tokenizer": {"type": "string"},
        "depths": {"type": "array", "items": {"type": "integer"}},
        "depth_note": {"type": _OPT_STR},
        "decoding": _obj(
            {
                "strategy": {"enum": ["greedy"]},
                "max_new_tokens": {"type": ["integer", "string"]},
                "stop_ids": {"type": "array", "items": {"type": "integer"}},
                "kv_cache": {"type": "boolean"},
                "exit_rule": {"type": ["object", "null"]},
            }
        ),
    }
)

RESULTS = _obj(
    {"schema_version": {"enum": [SCHEMA_VERSION]}, "suite": {"enum": list(SUITES)}, "metadata": METADATA},
    {"algorithmic": ALGORITHMIC, "longctx": LONGCTX, "perplexity": PERPLEXITY},
)

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "integer": int,
    "number": float,
}


def _is_type(value: object, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def schema_errors(value: object, schema: dict, where: str = "$") -> list[str]:
    """Every place where `value` departs from `schema` (empty list: valid)."""
    errors = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is_type(value, t) for t in types):
            return [f"{where}: expected {' or '.join(types)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing key '{key}'" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, f"{where}.{key}")
        if "values" in schema:
            for key, item in value.items():
                errors += schema_errors(item, schema["values"], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


def validate_results(data: dict, where: str = "results") -> None:
    """Raise ValueError listing the first problems if `data` does not follow RESULTS."""
    errors = schema_errors(data, RESULTS)
    if not errors and data["suite"] in ("algorithmic", "longctx", "perplexity") and data["suite"] not in data:
        errors.append(f"$: suite '{data['suite']}' but no '{data['suite']}' section")
    if errors:
        raise ValueError(f"{where} does not follow the eval schema v{SCHEMA_VERSION}: " + "; ".join(errors[:5]))
