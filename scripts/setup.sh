#!/usr/bin/env bash
# Create .venv with torch first (CPU 2.13.0 here; a plain `torch` requirement resolved with no torch
# installed pulls a multi-GB CUDA build), then the project with its dev extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
fi
stamp=.venv/.raysweep-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  # quant: bitsandbytes, QLoRA tests run on CPU too; deepspeed: ZeRO strategies, their tests run on CPU (gloo).
  # DeepSpeed ships as source: DS_BUILD_OPS=0 compiles none of its C++/CUDA ops at install (raysweep uses
  # torch's AdamW and torch.distributed, no DeepSpeed op); the torch installed above satisfies it and stays
  # track: wandb and mlflow (tracking: in grid.yaml), tested offline / against a local MLflow server
  # eval: lm-evaluation-harness (evaluate.lm_eval); report: plotly for report.html, selenium for its browser test
  DS_BUILD_OPS=0 .venv/bin/python -m pip install --quiet -e ".[dev,quant,deepspeed,track,eval,report]"
  touch "$stamp"
fi
# The interactive report's test drives a headless Chromium. Debian's package, not a browser downloaded at run
# time (nothing may download binaries here); installed only where we are root on a Debian-like system.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null
fi
