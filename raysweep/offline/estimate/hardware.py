"""The machine a calibration holds for (CPU model, cores, GPU names) and the cache key it is stored under.

Light on purpose: no torch (GPU names come from nvidia-smi), so `plan` and the `run` header stay fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from raysweep.offline.estimate.constants import CALIBRATION_VERSION

_HARDWARE: dict[str, Any] | None = None


def gpu_names() -> list[str]:
    """GPU names without importing torch (nvidia-smi)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """The machine a calibration holds for: CPU model, cores, GPU names (probed once per process)."""
    global _HARDWARE
    if _HARDWARE is None:
        _HARDWARE = {"cpu": cpu_model(), "cores": os.cpu_count() or 1, "gpus": gpu_names()}
    return _HARDWARE


def device_for(shape: dict[str, Any], hw: dict[str, Any]) -> str:
    """Where a trial of this shape computes here: a GPU if it asks for one and one exists, else the CPU."""
    return hw["gpus"][0] if shape["resources"]["gpus_per_worker"] and hw["gpus"] else "cpu"


def cache_key(shape: str, hw: dict[str, Any] | None = None) -> str:
    """Cache key of a calibration: shape + hardware + the threads (cpus_per_worker) it ran with."""
    hw = hw or hardware()
    s = json.loads(shape)
    ident = {"v": CALIBRATION_VERSION, "shape": s, "cpu": hw["cpu"], "cores": hw["cores"],
             "device": device_for(s, hw), "threads": max(1, int(s["resources"]["cpus_per_worker"]))}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
