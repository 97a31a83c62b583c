"""Command line for training: jsonargparse over the TrainConfig dataclass, with size presets as defaults.

Precedence, lowest first: dataclass defaults < the --model_size preset < the --init_from model's own config
< --config files < --flags, whatever the order of --config and the flags on the command line. Every rejected
command line is one ValueError naming the flag (train.py prints it as one line and exits 2), raised before
anything is written.
"""

from __future__ import annotations

import difflib
import re
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any, get_args, get_origin

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from recur.cli_help import nested_field_comments
from recur.config import TrainConfig, default_warmup_steps, validate_config
from recur.models.config import VARIANTS, ModelConfig, flat_fields, upgrade_legacy
from recur.models.presets import PRESETS

CONFIG_FLAG = "--config"


# Help for flags whose train.py default is not the dataclass's own.
CLI_NOTES = {"optim.schedule.warmup_steps": "when not given: min(30, --steps // 10)"}
# Choices that live in code rather than in a field comment.
CHOICES = {"model_size": tuple(PRESETS), "variant": VARIANTS, "model.variant": VARIANTS}


def _preset_defaults(size: str, variant: str | None, init_from: str | None = None) -> dict[str, Any]:
    """Parser defaults of a --model_size preset, then of the --init_from model (its weights fix the shape and
    its runtime fields, e.g. context length and default depth, are what it was converted/trained with), then
    --variant: they sit between dataclass and config files."""
    if size not in PRESETS:
        raise ValueError(f"--model_size: unknown size '{size}'; expected one of {', '.join(PRESETS)}")
    defaults = {f"model.{k}": v for k, v in PRESETS[size].items()}
    if init_from is not None and Path(init_from).is_dir():  # a missing one is named by validate_config
        from recur.eval.load import saved_config

        defaults.update(flat_fields(saved_config(init_from), "model."))
    if variant is not None:
        defaults["model.variant"] = variant
    return defaults


def _add_help(parser: ArgumentParser) -> None:
    """Each flag's help is its field's comment in the config dataclasses; preset-filled fields say so."""
    comments = nested_field_comments(TrainConfig)
    preset_keys = {f"model.{k}" for shape in PRESETS.values() for k in shape}
    for action in parser._actions:
        notes = [comments.get(action.dest), CLI_NOTES.get(action.dest)]
        if action.dest in CHOICES:
            notes.append(f"one of {', '.join(CHOICES[action.dest])}")
        if action.dest in preset_keys:
            notes.append(f"the --model_size preset fills the default (shown: {TrainConfig.model_size})")
        if any(notes):
            action.help = "; ".join(filter(None, notes))


def build_parser() -> ArgumentParser:
    # exit_on_error=False: jsonargparse's own handler prints the ~85-line usage; parse() makes it one line.
    parser = ArgumentParser(prog="train.py", description="Train a recurrent-depth language model.", exit_on_error=False)
    parser.add_argument(CONFIG_FLAG, action=ActionConfigFile, help="YAML config file(s); flags override them")
    parser.add_class_arguments(TrainConfig, nested_key=None, fail_untyped=False)
    # The default size's shape, so that --help shows the model that a plain `train.py` trains.
    parser.set_defaults(_preset_defaults(TrainConfig.model_size, None))
    _add_help(parser)
    return parser


def _flag_names(parser: ArgumentParser) -> list[str]:
    return [flag for flag in parser._option_string_actions if flag.startswith("--")]


def _is_list_flag(parser: ArgumentParser, flag: str) -> bool:
    """Whether the flag's type is a list or tuple (or an optional one)."""
    hint = getattr(parser._option_string_actions.get(flag), "_typehint", None)
    return any(get_origin(t) in (list, tuple) for t in (hint, *get_args(hint)))


def _type_name(hint: Any) -> str:
    """'int', 'int | None', 'list[str]'."""
    plain_class = get_origin(hint) is None and isinstance(hint, type)
    return hint.__name__ if plain_class else str(hint).replace("typing.", "")


def _unknown_flag_error(flag: str, parser: ArgumentParser) -> str:
    close = difflib.get_close_matches(flag, _flag_names(parser), n=1)
    return f"unknown flag {flag}" + (f"; did you mean {close[0]}?" if close else " (train.py --help lists them)")


def _unknown_key_error(key: str, parser: ArgumentParser) -> str:
    """A key of a --config file (or of a group's YAML value) that no flag has."""
    close = difflib.get_close_matches(key, [flag[2:] for flag in _flag_names(parser)], n=1)
    return f"unknown option {key} (from a --config file)" + (f"; did you mean {close[0]}?" if close else "")


def _key_error(key: str, reason: str, parser: ArgumentParser) -> str:
    """'--key: …' from jsonargparse's multi-line 'Parser key' message."""
    flag = f"--{key}"
    value = re.findall(r"(?:Got|Given) value: (.*)", reason)
    hint = getattr(parser._option_string_actions.get(flag), "_typehint", None)
    if value and hint is not None:  # a value of the wrong type
        return f"{flag}: expected {_type_name(hint)}, got '{value[-1].strip()}'"
    return f"{flag}: {' '.join(reason.split())}"


def one_line_error(error: ArgumentError, parser: ArgumentParser) -> str:
    """jsonargparse's message as one line naming the flag (a typo'd flag gets its nearest real one)."""
    message = str(error)
    if unknown := re.match(r"unrecognized arguments: (\S+)", message):
        return _unknown_flag_error(unknown[1], parser)
    if top_key := re.match(r"Option '([^']+)' is not accepted", message):
        return _unknown_key_error(top_key[1], parser)
    if group_key := re.match(r"Group '([^']+)' does not accept option '([^']+)'", message):
        return _unknown_key_error(f"{group_key[1]}.{group_key[2]}", parser)
    if keyed := re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.S):
        return _key_error(keyed[1], keyed[2], parser)
    if argument := re.match(r"argument (\S+): (.*)", message, re.S):  # e.g. a flag without its value
        return f"{argument[1].split('/')[0]}: {' '.join(argument[2].split())}"
    return " ".join(message.split())


def _split_equals(argv: list[str]) -> list[str]:
    """`--flag=value` -> `--flag value`, so the rewrites below see one form."""
    return [
        part for token in argv for part in (token.split("=", 1) if token.startswith("--") and "=" in token else [token])
    ]


def _legacy_config_text(path: str) -> str | None:
    """A --config file written before the variant groups (its `model` has an `extra` dict, as every run's
    config.yaml did) as YAML text with `extra` mapped into the groups; None for any other file."""
    import yaml

    file = Path(path)
    data = yaml.safe_load(file.read_text()) if file.is_file() and file.suffix in (".yaml", ".yml") else None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or "extra" not in model:
        return None
    variant = model.get("variant") or data.get("variant") or ModelConfig.variant
    return yaml.safe_dump({**data, "model": upgrade_legacy(model, variant)}, sort_keys=False)


def _upgrade_legacy_configs(argv: list[str]) -> list[str]:
    """Each legacy --config FILE replaced by its upgraded text (jsonargparse takes a YAML string there too)."""
    out = list(argv)
    for i, token in enumerate(argv[:-1]):
        if token == CONFIG_FLAG and (text := _legacy_config_text(argv[i + 1])) is not None:
            out[i + 1] = text
    return out


def _config_files_first(argv: list[str]) -> list[str]:
    """argv with every --config FILE moved to the front (keeping their order): jsonargparse applies
    arguments left to right, so a flag given before --config would otherwise lose to the file."""
    configs: list[str] = []
    rest: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == CONFIG_FLAG:
            configs += [token, next(tokens, "")]
        else:
            rest.append(token)
    return configs + rest


def _join_list_values(argv: list[str], parser: ArgumentParser) -> list[str]:
    """`--data.tasks parity addition` -> `--data.tasks [parity, addition]`: jsonargparse takes one token
    per flag. A single JSON/YAML list (`'[parity]'`) or `null` passes unchanged."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        out.append(argv[i])
        if not _is_list_flag(parser, argv[i]):
            i += 1
            continue
        end = i + 1
        while end < len(argv) and not argv[end].startswith("--"):
            end += 1
        values = argv[i + 1 : end]
        single_list = len(values) == 1 and (values[0].lstrip().startswith("[") or values[0] == "null")
        out += values if single_list or not values else ["[" + ", ".join(values) + "]"]
        i = end
    return out


def _parse(parser: ArgumentParser, argv: list[str]) -> Namespace:
    try:
        return parser.parse_args(argv)
    except ArgumentError as error:
        raise ValueError(one_line_error(error, parser)) from None


def parse_config(argv: list[str] | None = None) -> tuple[TrainConfig, str]:
    """Parse argv into a TrainConfig; returns it with its complete YAML dump."""
    argv = list(sys.argv[1:] if argv is None else argv)
    print_only = "--print_config" in argv
    if print_only:  # handled here so the printout includes the preset's values
        argv.remove("--print_config")
    parser = build_parser()
    argv = _join_list_values(_config_files_first(_upgrade_legacy_configs(_split_equals(argv))), parser)
    first = _parse(parser, argv)  # only to learn the size, variant and run length the user asked for
    defaults = _preset_defaults(first.model_size, first.variant, first.init_from)
    defaults["optim.schedule.warmup_steps"] = default_warmup_steps(first.steps)
    parser.set_defaults(defaults)
    namespace = _parse(parser, argv)
    if namespace.variant is not None and namespace.model.variant != namespace.variant:
        raise ValueError(f"--variant {namespace.variant} contradicts --model.variant {namespace.model.variant}")
    yaml_text = parser.dump(namespace, skip_unset=False)
    namespace.pop("config", None)
    if print_only:
        print(yaml_text, end="")
        sys.exit(0)
    values = vars(parser.instantiate(namespace))
    cfg = TrainConfig(**{k: v for k, v in values.items() if k in TrainConfig.__dataclass_fields__})
    validate_config(cfg)
    return cfg, yaml_text
