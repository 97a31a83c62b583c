"""A batch whose rows are single documents trains with plain causal attention (doc_ids None), and that is
the same computation as the document mask it replaces."""

import pytest
import torch

from recur.models import create_model
from recur.models.config import VARIANTS
from recur.train_loop import _batch_to


def _batch(doc_ids: list[list[int]]) -> dict:
    docs = torch.tensor(doc_ids, dtype=torch.int32)
    ids = torch.randint(0, 64, docs.shape, generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "loss_mask": torch.ones_like(ids, dtype=torch.uint8), "doc_ids": docs}


def test_single_document_rows_drop_the_mask() -> None:
    *_, docs = _batch_to(_batch([[0] * 9, [0] * 9]), torch.device("cpu"))
    assert docs is None


def test_a_document_start_keeps_the_mask_and_the_last_target_is_not_an_input() -> None:
    *_, docs = _batch_to(_batch([[0] * 9, [0] * 5 + [1] * 4]), torch.device("cpu"))
    assert docs is not None and docs.shape == (2, 8) and docs[1, -1] == 1
    # A new document that begins only at the last position is a target, never an input: no mask needed.
    *_, docs = _batch_to(_batch([[0] * 8 + [1]]), torch.device("cpu"))
    assert docs is None


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_doc_ids_equal_no_doc_ids(variant: str) -> None:
    torch.manual_seed(0)
    model = create_model("tiny", variant=variant, vocab_size=64, max_seq_len=32).eval()
    x = torch.randint(0, 64, (2, 16))
    kwargs = {"num_steps": 2} if variant in ("recurrent", "shared_loop") else {}
    with torch.no_grad():
        torch.manual_seed(1)
        masked = model(x, doc_ids=torch.zeros_like(x), **kwargs).logits
        torch.manual_seed(1)
        plain = model(x, **kwargs).logits
    torch.testing.assert_close(masked, plain, rtol=1e-5, atol=1e-5)
