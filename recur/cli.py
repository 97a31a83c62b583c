"""Command line for training: jsonargparse over the TrainConfig dataclass, with size presets as defaults.

Precedence, lowest first: dataclass defaults < the --model_size preset < --config files < --flags.
"""

from __future__ import annotations

import sys
from jsonargparse import ActionConfigFile, ArgumentParser

from recur.config import TrainConfig, validate_config
from recur.models.presets import PRESETS


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="train.py", description="Train a recurrent-depth language model.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s); later flags override")
    parser.add_class_arguments(TrainConfig, nested_key=None, fail_untyped=False)
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[TrainConfig, str]:
    """Parse argv into a TrainConfig; returns it with its complete YAML dump."""
    argv = list(sys.argv[1:] if argv is None else argv)
    print_only = "--print_config" in argv
    if print_only:  # handled here so the printout includes the preset's values
        argv.remove("--print_config")
    parser = build_parser()
    first = parser.parse_args(argv)  # only to learn the size and variant the user asked for
    if first.model_size not in PRESETS:
        raise ValueError(f"--model_size: unknown size '{first.model_size}'; expected one of {', '.join(PRESETS)}")
    defaults = {f"model.{k}": v for k, v in PRESETS[first.model_size].items()}
    if first.variant is not None:
        defaults["model.variant"] = first.variant
    parser.set_defaults(defaults)
    namespace = parser.parse_args(argv)
    if namespace.variant is not None and namespace.model.variant != namespace.variant:
        raise ValueError(f"--variant {namespace.variant} contradicts --model.variant {namespace.model.variant}")
    yaml_text = parser.dump(namespace, skip_none=False)
    namespace.pop("config", None)
    if print_only:
        print(yaml_text, end="")
        sys.exit(0)
    fields = vars(parser.instantiate_classes(namespace))
    cfg = TrainConfig(**{k: v for k, v in fields.items() if k in TrainConfig.__dataclass_fields__})
    validate_config(cfg)
    return cfg, yaml_text
