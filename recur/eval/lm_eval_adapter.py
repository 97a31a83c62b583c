"""lm-evaluation-harness model "recur": any model recur loads (a saved directory from
utils/export_checkpoint.py or utils/convert_hf.py, a run or checkpoint directory) scored at a chosen
recurrence depth.

    python -m recur.eval.lm_eval_adapter --model recur \
        --model_args path=models/tinyllama-4-8-4,num_steps=8 --tasks hellaswag,arc_easy
    python utils/lm_eval_depths.py --path models/tinyllama-4-8-4 --depths 1,4,8,16 --tasks arc_easy

lm-eval has no plugin discovery, so its stock `lm_eval` command does not know "recur": run this module
(same flags as `lm_eval`), or import it before calling `lm_eval.simple_evaluate(model="recur", ...)`.

Scoring: log-likelihoods come from one teacher-forced forward per request (right padding in a batch is
harmless: the model is causal). Generation is greedy with the per-depth KV cache (recur.eval.generate), in
left-padded batches of batch_size (padding is a document of its own, so a row decodes as it would alone); a
row stops at the end-of-text token or as soon as its text contains one of the request's `until` strings, and
the text is cut before the first of them.

`--apply_chat_template` renders prompts with the tokenizer's own chat template (the byte tokenizer's
`<bos> (<|role|> content <|end|>)* <|assistant|>`, or an HF tokenizer's), as text with the special tokens
spelled out; tok_encode parses them back, so a rendered prompt scores exactly as the template's ids.
"""

from __future__ import annotations

import sys
from itertools import groupby

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from recur.data.tokenizer import load_tokenizer
from recur.eval.generate import generate
from recur.eval.load import load_model


def _resolve_device(device: str | None) -> str:
    """None/"auto" -> cuda when present. lm-eval's CLI passes "cuda" unless told otherwise, so on a machine
    without CUDA we run on the CPU and say so (as lm-eval's own HF model does)."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"[recur lm-eval] device '{device}' requested but CUDA is not available; using cpu", file=sys.stderr)
        return "cpu"
    return device


@register_model("recur")
class RecurLM(TemplateLM):
    def __init__(
        self,
        path: str,
        num_steps: int | None = None,
        tokenizer: str | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        max_length: int | None = None,
        add_bos: bool | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        """`path`: anything recur.eval.load.load_model reads; `num_steps`: recurrence depth (default: the model's
        default_num_steps); `tokenizer`: "byte" or a directory (default: the model's own); `add_bos`: prepend BOS to
        every sequence (default: when the tokenizer has one, as Llama/OLMo were trained); batch_size "auto"
        means max_batch_size (default 8): padding never changes a score, so any batch size is exact."""
        super().__init__()
        device = _resolve_device(device)
        self.model, _, meta = load_model(path, device=device)
        self.num_steps = int(num_steps) if num_steps is not None else self.model.cfg.default_num_steps
        if self.num_steps < 1:
            raise ValueError(f"--model_args num_steps must be >= 1, got {self.num_steps}")
        self.tok = load_tokenizer(tokenizer or meta.tokenizer or "byte")
        bos = getattr(self.tok, "bos_id", None)
        self.bos_id = bos if (add_bos if add_bos is not None else bos is not None) else None
        self._device = torch.device(device)
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else int(max_batch_size or 8)
        self.max_length = int(max_length or self.model.cfg.max_seq_len)

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.bos_id if self.bos_id is not None else self.tok.eos_id

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tok, "name", "byte")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Special tokens written in the text (a chat-templated prompt) become their ids, as HF tokenizers do;
        BOS is prepended unless the text starts with one already (chat templates write it)."""
        ids = self.tok.encode_with_specials(string)
        if self.bos_id is not None and add_special_tokens is not False and ids[:1] != [self.bos_id]:
            ids = [self.bos_id] + ids
        return ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The template's source, which lm-eval records with the results; a template name has nothing to pick
        from, since a recur tokenizer has one template."""
        return self.tok.chat_template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's prompt string; without the generation prompt the final (assistant) message stays open, as
        lm-eval's HF model renders a reply whose start (gen_prefix) is given."""
        return self.tok.chat_text(chat_history, add_generation_prompt)

    # ---- scoring ----

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy decode) for each token pair."""
        results: list[tuple[float, bool]] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            # The last max_length + 1 tokens: inputs are all but the last, targets all but the first.
            seqs = [(ctx + cont)[-(self.max_length + 1) :] for ctx, cont in chunk]
            width = max(len(s) - 1 for s in seqs)
            inputs = torch.full((len(seqs), width), self.tok.eos_id, dtype=torch.long)
            for i, s in enumerate(seqs):
                inputs[i, : len(s) - 1] = torch.tensor(s[:-1])
            logits = self.model(inputs.to(self._device), num_steps=self.num_steps).logits.float()
            logprobs = F.log_softmax(logits, dim=-1).cpu()
            for i, ((_, cont), s) in enumerate(zip(chunk, seqs)):
                n = len(cont)
                rows = logprobs[i, len(s) - 1 - n : len(s) - 1]
                target = torch.tensor(s[-n:])
                results.append((rows.gather(1, target[:, None]).sum().item(), bool((rows.argmax(-1) == target).all())))
        return results

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        out = []
        for start in tqdm(range(0, len(pairs), self.batch_size), disable=disable_tqdm, desc="loglikelihood"):
            out += self._score(pairs[start : start + self.batch_size])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for req in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            (text,) = req.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    self.tok_encode(text, add_special_tokens=False), self.prefix_token_id, self.max_length, 1
                )
            ]
            totals.append(sum(ll for ll, _ in self._score(windows)))
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        settings = [_generation_settings(req.args[1]) for req in requests]
        prompts = [
            self.tok_encode(req.args[0])[-(self.max_length - max_new) :]
            for req, (_, max_new) in zip(requests, settings)
        ]
        outputs: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for chunk in self._generation_batches(settings, prompts):
            texts = self._generate([prompts[i] for i in chunk], [settings[i][0] for i in chunk], settings[chunk[0]][1])
            for i, text in zip(chunk, texts):
                outputs[i] = text
            bar.update(len(chunk))
        bar.close()
        return outputs

    def _generation_batches(self, settings: list[tuple[list[str], int]], prompts: list[list[int]]) -> list[list[int]]:
        """Request indices decoded together: at most batch_size of one max_gen_toks, longest prompts first so
        that a batch's rows need little padding."""
        order = sorted(range(len(prompts)), key=lambda i: (settings[i][1], -len(prompts[i])))
        groups = [list(group) for _, group in groupby(order, key=lambda i: settings[i][1])]
        return [
            group[start : start + self.batch_size]
            for group in groups
            for start in range(0, len(group), self.batch_size)
        ]

    def _generate(self, prompts: list[list[int]], untils: list[list[str]], max_new: int) -> list[str]:
        """One left-padded greedy batch; each row stops once its text contains one of its stop strings."""
        out = generate(
            self.model,
            prompts,
            max_new,
            {self.tok.eos_id},
            num_steps=self.num_steps,
            batch_size=len(prompts),
            pad_id=self.tok.pad_id,
            stop_when=lambda row, ids: any(stop in self.tok_decode(ids) for stop in untils[row]),
        )
        return [_cut(self.tok_decode(ids), until) for ids, until in zip(out.tokens, untils)]


def _generation_settings(gen_kwargs: dict) -> tuple[list[str], int]:
    """(non-empty stop strings, max new tokens) of one request; sampling is refused."""
    if gen_kwargs.get("do_sample") or gen_kwargs.get("temperature", 0.0) > 0:
        raise ValueError("recur lm-eval model decodes greedily; set do_sample=false, temperature=0")
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    return [stop for stop in until if stop], int(gen_kwargs.get("max_gen_toks", 256))


def _cut(text: str, until: list[str]) -> str:
    """The text before the first stop string it contains."""
    return text[: min((text.find(stop) for stop in until if stop in text), default=len(text))]


def evaluate_at_depths(
    path: str,
    tasks: list[str],
    depths: list[int],
    include_path: str | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    device: str | None = None,
    batch_size: int = 1,
    tokenizer: str | None = None,
    include_defaults: bool = True,
    apply_chat_template: bool = False,
) -> dict[int, dict]:
    """Run the same lm-eval tasks at each recurrence depth (model loaded once); {depth: results dict}.
    include_defaults=False skips indexing lm-eval's built-in tasks (only include_path's are known);
    apply_chat_template renders prompts with the tokenizer's chat template (lm_eval --apply_chat_template)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if not depths or min(depths) < 1:
        raise ValueError(f"--depths: expected positive integers, got {depths}")
    lm = RecurLM(path, num_steps=depths[0], tokenizer=tokenizer, device=device, batch_size=batch_size)
    manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    results = {}
    for depth in depths:
        lm.num_steps = depth
        out = simple_evaluate(
            model=lm,
            tasks=tasks,
            limit=limit,
            num_fewshot=num_fewshot,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=0,
            apply_chat_template=apply_chat_template,
        )
        results[depth] = out["results"]
    return results


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
