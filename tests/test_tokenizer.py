import pytest
from tiny_hf_tokenizer import build_tiny_hf_tokenizer

from recur.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

CONVERSATION = [
    {"role": "system", "content": "be exact"},
    {"role": "user", "content": "add 12+34"},
    {"role": "assistant", "content": "46"},
    {"role": "user", "content": "copy héllo wörld"},
    {"role": "assistant", "content": "héllo wörld"},
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return build_tiny_hf_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module", params=["byte", "hf"])
def tokenizer(request, hf_dir):
    return load_tokenizer("byte" if request.param == "byte" else str(hf_dir))


def _masked_runs(ids, mask):
    runs, current = [], []
    for token, flag in zip(ids, mask):
        if flag:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_encode_decode_roundtrip(tokenizer):
    text = "parity 10110101 -> ünïcode ✓"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert max(tokenizer.encode(text)) < tokenizer.vocab_size
    assert {tokenizer.pad_id, tokenizer.eos_id} <= set(range(tokenizer.vocab_size))
    assert tokenizer.eos_id in tokenizer.stop_ids


def test_assistant_mask_covers_exactly_the_replies(tokenizer):
    ids, mask = tokenizer.apply_chat_template(CONVERSATION)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    runs = _masked_runs(ids, mask)
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert len(runs) == len(replies)
    for run, reply in zip(runs, replies):
        # Each run is the reply followed by end-of-turn material that contains a stop token.
        assert tokenizer.decode(run).strip() == reply
        assert any(token in tokenizer.stop_ids for token in run)
        assert tokenizer.decode(run).startswith(reply)


def test_hf_mask_matches_rendered_template(hf_dir):
    tok = load_tokenizer(str(hf_dir))
    assert isinstance(tok, HFTokenizer)
    ids, mask = tok.apply_chat_template(CONVERSATION)
    rendered = tok.hf.apply_chat_template(CONVERSATION, tokenize=False)
    # Same tokens as tokenizing the rendered template, and the masked text is exactly the text between
    # each "<|im_start|>assistant\n" and the newline after its "<|im_end|>".
    assert ids == tok.hf.encode(rendered, add_special_tokens=False)
    expected = [part.split("<|im_end|>")[0] + "<|im_end|>\n" for part in rendered.split("<|im_start|>assistant\n")[1:]]
    got = [tok.hf.decode(run) for run in _masked_runs(ids, mask)]
    assert got == expected
    assert tok.stop_ids == {tok.eos_id, tok.hf.convert_tokens_to_ids("<|im_end|>")}


def test_byte_template_layout():
    tok = ByteTokenizer()
    ids, mask = tok.apply_chat_template(CONVERSATION[1:3])
    assert ids[0] == tok.bos_id and ids[-1] == tok.end_id
    user, assistant = tok.role_ids["user"], tok.role_ids["assistant"]
    assert ids == [tok.bos_id, user, *b"add 12+34", tok.end_id, assistant, *b"46", tok.end_id]
    assert mask == [0] * 13 + [1, 1, 1]


def test_prompt_ids_end_with_generation_prompt(tokenizer):
    prompt = tokenizer.prompt_ids(CONVERSATION[:2])
    full, mask = tokenizer.apply_chat_template(CONVERSATION[:3])
    first_reply_token = mask.index(1)
    assert full[:first_reply_token] == prompt


def test_fingerprint_stable_and_distinct(hf_dir):
    assert load_tokenizer("byte").fingerprint() == load_tokenizer("byte").fingerprint()
    assert load_tokenizer(str(hf_dir)).fingerprint() == load_tokenizer(str(hf_dir)).fingerprint()
    assert load_tokenizer("byte").fingerprint() != load_tokenizer(str(hf_dir)).fingerprint()


def test_bad_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer '.*missing_tok' not found: expected 'byte' or a local"):
        load_tokenizer(str(tmp_path / "missing_tok"))
    (tmp_path / "empty_tok").mkdir()
    with pytest.raises(ValueError, match="tokenizer directory '.*empty_tok' could not be loaded"):
        load_tokenizer(str(tmp_path / "empty_tok"))
    with pytest.raises(ValueError, match="unknown role 'robot'"):
        ByteTokenizer().apply_chat_template([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="non-empty list"):
        ByteTokenizer().apply_chat_template([])
