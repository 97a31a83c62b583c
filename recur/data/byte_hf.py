"""recur's byte tokenizer as a transformers PreTrainedTokenizerFast, so exports of byte runs carry
tokenizer files that AutoTokenizer loads.

Ids match ByteTokenizer: a byte-level BPE without merges maps every UTF-8 byte to its value (0..255) and
the special tokens follow in ByteTokenizer.SPECIALS order; the chat template renders
<bos> (<|role|> content <|end|>)* [<|assistant|>] as ByteTokenizer does. One difference: text that
itself contains a special token's spelling (e.g. "<|end|>") becomes that special token here, bytes there.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from recur.data.tokenizer import ByteTokenizer

CHAT_TEMPLATE = (
    "{{ '<bos>' }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('byte chat template: unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def byte_hf_tokenizer() -> PreTrainedTokenizerFast:
    # ByteLevel spells each byte as one printable character; the vocab maps that character to the byte value.
    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(ByteTokenizer.SPECIALS))  # first, so they take ids 256.. in this order
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        additional_special_tokens=list(ByteTokenizer.SPECIALS[3:]),
        chat_template=CHAT_TEMPLATE,
    )
