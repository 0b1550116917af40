"""Integration: a sweep tokenizes its data once, whatever the number of trials and processes (real Ray, CLI)."""

from __future__ import annotations

import json

import pytest

from raysweep.experiment import layout
from raysweep.experiment import metrics as M
from raysweep.inputs import tokenized
from tests.helpers import write_cipher_chats
from tests.test_integration import read_trials, results_of, run_cli

pytestmark = pytest.mark.integration

CONVERSATIONS = 100_000


def test_a_100k_conversation_sweep_of_8_trials_on_2_processes_tokenizes_once(tmp_path, builtin_model_dir):
    chat = tmp_path / "chat.jsonl"
    write_cipher_chats(chat, CONVERSATIONS)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""name: seeds
data: {{task: chat, train_file: {chat}, max_seq_len: 32, max_eval_examples: 64}}
train: {{max_steps: 2, eval_every: 2, batch_size: 8}}
resources: {{cpus_per_worker: 1}}
grid:
  train.seed: [0, 1, 2, 3, 4, 5, 6, 7]
""")
    storage = tmp_path / "runs"
    proc = run_cli("run", grid, "--storage", storage)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_trials(storage / "seeds")
    assert len(rows) == 8 and {r["status"] for r in rows} == {"TERMINATED"}
    assert tokenized.builds(storage) == 1  # one tokenization for the whole sweep
    last = [results_of(p.parent)[-1] for p in (storage / "seeds").glob(f"*/{layout.RESULT_FILE}")]
    assert len(last) == 8 and sum(bool(r[M.SYS_DATA_TOKENIZED]) for r in last) == 1
    assert len({r[M.SYS_PID] for r in last}) == 2  # the trials really ran in two processes
    assert {r[M.TRAIN_EXAMPLES] for r in last} == {CONVERSATIONS - CONVERSATIONS // 10}
    entries = [p for p in tokenized.root_dir(storage).iterdir() if p.is_dir()]
    meta = json.loads((entries[0] / tokenized.META_FILE).read_text())
    assert len(entries) == 1 and meta["examples"]["train"] == CONVERSATIONS
