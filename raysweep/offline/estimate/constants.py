"""Ray's part of a trial's life, and the calibration cache's name and version.

Measured on a 2-core AMD EPYC with Ray 2.60 and a local Ray (how, and the raw numbers: benchmarks/RESULTS.md
(c) and (g); benchmarks/estimate_constants.py re-measures them). Everything else a trial costs is calibrated
per shape and machine (calibration.py).
"""

from __future__ import annotations

CALIBRATION_FILE = "calibration.json"  # in the builtin cache directory ($RAYSWEEP_CACHE)
CALIBRATION_VERSION = 1  # bump when what a Calibration measures changes: older entries are ignored

# actor executor, first trial on a slot: Tune's launch → loop ready, minus the calibrated fresh-process costs;
# negative because each actor starts importing when its process starts, before Tune reports the launch
ACTOR_START_S = -0.8
# actor executor, a trial that follows another on the same (reused) actor: Tune's actor reset
ACTOR_REUSE_S = 0.01
# last report → Tune sees the trial end and frees the slot: actor executor
ACTOR_END_S = 0.31
# ... and train executor (its controller and worker group shut down)
TRAIN_END_S = 3.78
# train executor, every trial: slot free → our training code runs (three process starts with torch/ray
# imports, Train controller and worker group); transformers/peft imports, model load, tokenization on top
TRAIN_START_S = 17.4
# the `run` command before the first trial launches: CLI start, imports, ray.init, Tuner set-up
RUN_START_S = 7.8
# ... and after the last trial ends: summary, ray.shutdown, exit
RUN_STOP_S = 0.71
# slow-down of each of two 1-thread trials running at once on 2 cores (shared caches, memory bandwidth, Ray's
# own processes); applied to CPU trials whenever more than one slot runs at once
CONTENTION = 1.04
