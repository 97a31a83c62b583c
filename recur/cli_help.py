"""`train.py --help` text from the config dataclasses' own field comments, so the two cannot drift apart."""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing

FIELD_LINE = re.compile(r"    (\w+)\s*:")  # a field at the class body's indentation


def _comments_by_row(source: str) -> dict[int, str]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {token.start[0]: token.string.lstrip("# ").strip() for token in tokens if token.type == tokenize.COMMENT}


def _block_above(row: int, lines: list[str], comments: dict[int, str]) -> str:
    """The comment-only lines directly above line `row` (1-based), joined."""
    texts: list[str] = []
    while row - 1 in comments and lines[row - 2].lstrip().startswith("#"):
        row -= 1
        texts.insert(0, comments[row])
    return " ".join(texts)


def field_comments(cls: type) -> dict[str, str]:
    """{field: comment} of a dataclass: the comment ending the field's line, else the comment lines
    right above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines, comments = source.splitlines(), _comments_by_row(source)
    names = {f.name for f in dataclasses.fields(cls)}
    found: dict[str, str] = {}
    for row, line in enumerate(lines, start=1):
        match = FIELD_LINE.match(line)
        if match and match[1] in names:
            text = comments.get(row) or _block_above(row, lines, comments)
            if text:
                found[match[1]] = text
    return found


def nested_field_comments(cls: type, prefix: str = "") -> dict[str, str]:
    """field_comments of a dataclass and of the dataclasses nested in it, keyed by dotted flag name."""
    hints = typing.get_type_hints(cls)
    found = {prefix + name: text for name, text in field_comments(cls).items()}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found.update(nested_field_comments(hints[f.name], f"{prefix}{f.name}."))
    return found
