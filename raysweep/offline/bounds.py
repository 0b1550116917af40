"""`raysweep bounds PATH`: the SubLoRA PAC-Bayes bounds of a trained checkpoint, recomputed from it.

Rebuilds the base model, the SubLoRA adapter (its state from the checkpoint) and the training examples
from the checkpoint's trial config, then computes the same report as the end of training
(adapters/sublora/bounds.py `compute_bounds`), optionally with other bound options (levels, quantizer,
sample, delta: they are not part of what defines θ).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from raysweep.adapters.sublora.adapter import SubloraAdapter
from raysweep.adapters.sublora.bounds import compute_bounds
from raysweep.adapters.sublora.options import FAMILY as SUBLORA
from raysweep.adapters.sublora.options import SubloraOptions
from raysweep.experiment.layout import BOUNDS_REPORT
from raysweep.inputs import data, models
from raysweep.trial import checkpointing


def training_examples(config: dict[str, Any], tokenizer) -> list:
    """The trial's tokenized training examples, rebuilt from its config (as the training loop built them)."""
    train, _ = data.load_splits(tokenizer, config["data"])
    return train


def bounds_for_checkpoint(checkpoint_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Rebuild base model + SubLoRA adapter from a checkpoint (its trial config + adapter state) and compute
    the same report as the end of training. `overrides`: bound options (bound_levels=21, bound_quantizer=
    "kmeans", bound_sample=..., ...) and `device`. Returns the report; its "metrics" are the bound/* metrics.
    Nothing is written (the caller decides where the report goes: `write_report`)."""
    checkpoint_dir = Path(checkpoint_dir)
    config_path = checkpoint_dir / checkpointing.TRIAL_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a trial checkpoint (no {checkpointing.TRIAL_CONFIG})")
    config = json.loads(config_path.read_text())
    if config["adapter"]["type"] != SUBLORA.name:
        raise ValueError(f"{checkpoint_dir}: adapter {config['adapter']['type']!r} has no bounds (only {SUBLORA.name})")
    device = torch.device(overrides.pop("device", None) or ("cuda" if torch.cuda.is_available() else "cpu"))
    valid = [k for k in SubloraOptions.model_fields if k.startswith("bound_")]  # not what defines θ
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown bound option(s) {unknown}; valid: {', '.join(valid)}")
    config["adapter"] = config["adapter"] | overrides | {"bounds": True}
    adapter = SubloraAdapter(config["adapter"])  # validates the options before the model is loaded
    base, tokenizer = models.load(config["model"])
    model = adapter.build(base.to(device))
    adapter.load_state_dict(model, checkpointing.load_adapter_state(checkpoint_dir))
    data.prepare_tokenizer(tokenizer)
    train = training_examples(config, tokenizer)
    # eos/pad ids from the model config, as at the end of training (the same documents and batches)
    _, report = compute_bounds(model, adapter, config, train, device=device)
    report["checkpoint"] = str(checkpoint_dir)
    return report


def write_report(directory: Path, report: dict[str, Any]) -> Path:
    path = Path(directory) / BOUNDS_REPORT
    path.write_text(json.dumps(report, indent=2, default=float))
    return path


def summary(report: dict[str, Any]) -> str:
    """A few lines for the CLI."""
    lines = [f"message {report['message']['total_bits']} bits (KL {report['message']['kl_nats']:.1f} nats), "
             f"{report['quantization']['levels_used']} levels"]
    for level, r in report["levels"].items():
        b = r["bpd"]["bound"]
        tops = ", ".join(f"top{k} ≤ {v['value']:.3f}" for k, v in r["top_k"].items())
        lines.append(f"{level}: bpd ≤ {b['value']:.3f} (empirical {r['bpd_empirical']:.3f}, α={r['bpd']['alpha']}, "
                     f"{'vacuous' if b['vacuous'] else 'non-vacuous'}; m={r['units']}, n={r['sampled']}); {tops}")
    return "\n".join(lines)
