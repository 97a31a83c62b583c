"""Tokenizers behind one interface: a built-in byte-level tokenizer and a wrapper over local HF tokenizers.

Both render chat documents to token ids together with an assistant mask (1 on the tokens of assistant
replies including their end-of-turn marker), which packing turns into the loss mask.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from itertools import groupby
from pathlib import Path

Messages = list[dict[str, str]]


class Tokenizer(ABC):
    name: str
    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int | None
    stop_ids: set[int]
    chat_template: str | None  # the template's source (reported by lm-eval), None when there is none

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Plain text -> ids, without special tokens."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Ids -> text, dropping special tokens."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Hex digest that changes whenever the id mapping or chat template changes."""

    @abstractmethod
    def apply_chat_template(self, messages: Messages) -> tuple[list[int], list[int]]:
        """Render a whole conversation -> (ids, assistant_mask)."""

    @abstractmethod
    def prompt_ids(self, messages: Messages) -> list[int]:
        """Render a conversation without its final assistant reply, ending in the generation prompt."""

    @abstractmethod
    def chat_text(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        """The conversation as text with its special tokens spelled out, such that
        encode_with_specials(chat_text(m)) == prompt_ids(m). add_generation_prompt=False instead leaves the
        final message open (no end of turn), for a reply whose start is given."""

    @abstractmethod
    def encode_with_specials(self, text: str) -> list[int]:
        """Like encode, but special tokens spelled out in the text become their ids."""


def _check_messages(messages: Messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"chat messages must be a non-empty list of {{role, content}} dicts, got {messages!r}")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise ValueError(f"chat message must be a dict with 'role' and string 'content', got {message!r}")


class ByteTokenizer(Tokenizer):
    """Ids 0..255 are raw UTF-8 bytes; special tokens follow. Chat template:
    <bos> (<|role|> content <|end|>)* — and the generation prompt is <|assistant|>."""

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    SPECIAL_PATTERN = re.compile("(" + "|".join(map(re.escape, SPECIALS)) + ")")
    chat_template = "<bos> (<|role|> content <|end|>)* <|assistant|>"

    def __init__(self) -> None:
        self.name = "byte"
        ids = {token: 256 + i for i, token in enumerate(self.SPECIALS)}
        self.special_ids = ids
        self.pad_id, self.bos_id, self.eos_id = ids["<pad>"], ids["<bos>"], ids["<eos>"]
        self.end_id = ids["<|end|>"]
        self.role_ids = {"system": ids["<|system|>"], "user": ids["<|user|>"], "assistant": ids["<|assistant|>"]}
        self.vocab_size = 256 + len(self.SPECIALS)
        self.stop_ids = {self.eos_id, self.end_id}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(["byte-v1", self.SPECIALS]).encode()).hexdigest()

    def _render(self, messages: Messages) -> tuple[list[int], list[int]]:
        _check_messages(messages)
        ids, mask = [self.bos_id], [0]
        for message in messages:
            role = message["role"]
            if role not in self.role_ids:
                raise ValueError(f"byte chat template: unknown role {role!r}; expected one of {list(self.role_ids)}")
            body = self.encode(message["content"]) + [self.end_id]
            flag = int(role == "assistant")
            ids += [self.role_ids[role]] + body
            mask += [0] + [flag] * len(body)
        return ids, mask

    def apply_chat_template(self, messages: Messages) -> tuple[list[int], list[int]]:
        return self._render(messages)

    def prompt_ids(self, messages: Messages) -> list[int]:
        return self._render(messages)[0] + [self.role_ids["assistant"]]

    def chat_text(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        ids = self.prompt_ids(messages) if add_generation_prompt else self._render(messages)[0][:-1]
        return self._spell(ids)

    def _spell(self, ids: list[int]) -> str:
        """Ids -> text with special tokens written as their names (decode drops them). Byte runs are decoded
        whole, since one character may span several bytes."""
        return "".join(
            bytes(run).decode("utf-8", errors="replace") if is_byte else "".join(self.SPECIALS[i - 256] for i in run)
            for is_byte, run in groupby(ids, key=lambda i: i < 256)
        )

    def encode_with_specials(self, text: str) -> list[int]:
        ids = []
        for piece in self.SPECIAL_PATTERN.split(text):
            ids += [self.special_ids[piece]] if piece in self.special_ids else self.encode(piece)
        return ids


class HFTokenizer(Tokenizer):
    """Wraps `transformers.AutoTokenizer` loaded from a local directory (never from a hub).

    The assistant mask is computed from character spans: for each assistant turn k the template is
    rendered for messages[:k] with the generation prompt (where the reply starts) and for
    messages[:k+1] (where the turn ends); both must be prefixes of the full rendering, otherwise the
    template is not prefix-stable and we refuse rather than guess. Tokens whose first character lies in
    a span are assistant tokens (the offset mapping of the fast tokenizer gives those positions).
    """

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        directory = Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"tokenizer '{path}' not found: expected 'byte' or a local directory with tokenizer files"
            )
        try:
            self.hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as error:
            raise ValueError(f"tokenizer directory '{path}' could not be loaded: {error}") from error
        if not self.hf.is_fast:
            raise ValueError(f"tokenizer '{path}' is not a fast tokenizer; offsets are needed for assistant masks")
        if self.hf.eos_token_id is None:
            raise ValueError(f"tokenizer '{path}' has no eos token; expected eos_token in its config")
        self.name = directory.resolve().name
        self.vocab_size = len(self.hf)
        self.eos_id = int(self.hf.eos_token_id)
        self.bos_id = None if self.hf.bos_token_id is None else int(self.hf.bos_token_id)
        # Tokenizers without a pad token pad with EOS; padding is located by position (loss_mask 0,
        # last doc_starts segment), never by comparing ids, so the aliasing is harmless.
        self.pad_id = self.eos_id if self.hf.pad_token_id is None else int(self.hf.pad_token_id)
        self.stop_ids = {self.eos_id} | self._end_of_turn_ids()

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def fingerprint(self) -> str:
        payload = json.dumps(
            [self.hf.backend_tokenizer.to_str(), self.hf.chat_template, self.pad_id, self.eos_id, self.bos_id]
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    @property
    def chat_template(self) -> str | None:
        return self.hf.chat_template

    def _render_text(self, messages: Messages, generation_prompt: bool, open_final: bool = False) -> str:
        if not self.hf.chat_template:
            raise ValueError(f"tokenizer '{self.name}' has no chat_template; chat documents need one")
        return self.hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, continue_final_message=open_final
        )

    def assistant_char_spans(self, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
        """Full rendered text and the [start, end) character spans of each assistant reply."""
        _check_messages(messages)
        full = self._render_text(messages, generation_prompt=False)
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start_text = self._render_text(messages[:k], generation_prompt=True) if k else ""
            end_text = self._render_text(messages[: k + 1], generation_prompt=False)
            if not (full.startswith(start_text) and full.startswith(end_text) and len(start_text) <= len(end_text)):
                raise ValueError(
                    f"chat template of tokenizer '{self.name}' is not prefix-stable at message {k}; "
                    "cannot locate the assistant reply"
                )
            spans.append((len(start_text), len(end_text)))
        return full, spans

    def apply_chat_template(self, messages: Messages) -> tuple[list[int], list[int]]:
        full, spans = self.assistant_char_spans(messages)
        encoding = self.hf(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        mask = [int(any(lo <= first < hi for lo, hi in spans)) for first, _ in encoding["offset_mapping"]]
        return ids, mask

    def prompt_ids(self, messages: Messages) -> list[int]:
        return self.encode_with_specials(self.chat_text(messages))

    def chat_text(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        _check_messages(messages)
        return self._render_text(messages, add_generation_prompt, open_final=not add_generation_prompt)

    def encode_with_specials(self, text: str) -> list[int]:
        return self.encode(text)  # HF tokenizers already parse special tokens written in the text

    def _end_of_turn_ids(self) -> set[int]:
        """Special tokens the template emits after an assistant reply (e.g. <|im_end|>)."""
        if not self.hf.chat_template:
            return set()
        probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        full, spans = self.assistant_char_spans(probe)
        lo, hi = spans[0]
        tail = full[lo:hi].split("y", 1)[-1]
        special = set(self.hf.all_special_ids)
        return {i for i in self.encode(tail) if i in special}


def load_tokenizer(spec: str) -> Tokenizer:
    """'byte' -> the built-in byte tokenizer; anything else is a local HF tokenizer directory."""
    if spec == "byte":
        return ByteTokenizer()
    return HFTokenizer(spec)
