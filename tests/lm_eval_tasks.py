"""Local lm-eval tasks (no download): three YAMLs over one jsonl file, shared by the lm-eval tests."""

from __future__ import annotations

import json
from pathlib import Path

DOCS = [
    {"question": "The cat sat on the", "choices": [" mat", " moon", " river"], "answer": 0, "text": "a b c d e f"},
    {"question": "Two plus two is", "choices": [" four", " seven"], "answer": 0, "text": "hello world, again"},
    {"question": "Water is", "choices": [" wet", " dry", " blue"], "answer": 1, "text": "one two three four"},
]
TASKS = ["recur_tiny_mc", "recur_tiny_ppl", "recur_tiny_gen"]


def write_local_tasks(root: Path) -> Path:
    """Multiple choice, rolling perplexity and generation tasks in `root` (an lm-eval include_path)."""
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (root / "mc.yaml").write_text(
        "task: recur_tiny_mc\n" + common + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n"
    )
    (root / "ppl.yaml").write_text(
        "task: recur_tiny_ppl\n" + common + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n"
    )
    (root / "gen.yaml").write_text(
        "task: recur_tiny_gen\n" + common + "output_type: generate_until\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: '{{choices[answer]}}'\ngeneration_kwargs:\n  until: ['.']\n  max_gen_toks: 6\n"
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n"
    )
    return root


def plain_hf_results(model_dir: Path, task_dir: Path, num_steps: int) -> dict:
    """lm-eval's own `hf` model on the local tasks, as `lm_eval --model hf --model_args
    pretrained=DIR,trust_remote_code=True,num_steps=N` runs it."""
    import lm_eval.models  # noqa: F401  registers `hf`, as the lm_eval CLI does
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},trust_remote_code=True,num_steps={num_steps}",
        tasks=TASKS,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        device="cpu",
        batch_size=3,
    )["results"]
