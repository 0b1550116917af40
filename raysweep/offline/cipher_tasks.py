"""Two local lm-evaluation-harness tasks over the builtin cipher task, written as task YAML + JSONL (no download):
`cipher_mc` (multiple choice: the right encoding among 4, accuracy) and `cipher_gen` (generate-until: the
encoding itself, exact match). Both are built from the builtin task's validation inputs, which no trial
trains on. Used by search_spaces/task_metrics.yaml, the tests and benchmarks/eval_cost.py:

    python -m raysweep.offline.cipher_tasks [DIR]     # default DIR: <cache>/eval_tasks (~/.cache/raysweep)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from raysweep.inputs.builtin import corpus, task
from raysweep.inputs.cache import default_cache_dir

N_CHOICES = 4

MC_YAML = """task: cipher_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

GEN_YAML = """task: cipher_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["</s>", "\\n"]
  max_gen_toks: 16
  do_sample: false
filter_list:
  - name: none
    filter:
      - function: remove_whitespace
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def default_dir() -> Path:
    return default_cache_dir() / "eval_tasks"


def write_cipher_tasks(directory: Path | None = None, n: int = task.N_VAL) -> dict[str, Path]:
    """Write cipher_mc.yaml / cipher_mc.jsonl and cipher_gen.yaml / cipher_gen.jsonl into `directory` (the
    first `n` validation inputs of the builtin task; the YAMLs name the JSONL by absolute path, so they work
    from any working directory). Returns {task name: its YAML path}."""
    directory = Path(directory or default_dir()).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    _, val = corpus.task_splits(task.N_TRAIN, task.N_VAL)
    rng = random.Random(0)
    mc, gen = [], []
    for messages in val[:n]:
        question, answer = messages[0]["content"], messages[1]["content"]
        size = len(answer.split())
        choices = [answer]
        while len(choices) < N_CHOICES:  # encodings of other inputs of the same length: only the map tells
            wrong = " ".join(corpus.encode([rng.choice(corpus.LETTERS) for _ in range(size)]))
            if wrong not in choices:
                choices.append(wrong)
        rng.shuffle(choices)
        mc.append({"question": question, "choices": choices, "label": choices.index(answer)})
        gen.append({"question": question, "answer": answer})
    out = {}
    for name, rows, template in (("cipher_mc", mc, MC_YAML), ("cipher_gen", gen, GEN_YAML)):
        data = directory / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = directory / f"{name}.yaml"
        out[name].write_text(template.format(data=json.dumps(str(data))))
    return out


if __name__ == "__main__":
    written = write_cipher_tasks(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    for name, path in written.items():
        print(f"{name}: {path}")
