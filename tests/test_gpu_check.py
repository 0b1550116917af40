"""benchmarks/gpu_check.py between GPU runs: its `--device cpu --tiny` mode runs every step in seconds with the
packages the GPU machine lacks hidden, and a step that raises is recorded while the rest go on."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

# Makes installed packages look absent, as they are on the GPU machine: the path finder (the one that finds
# site-packages) answers None for them, so find_spec says "not installed" and optional imports are skipped.
HIDE = '''
import importlib.machinery
import os
import sys

HIDDEN = set(os.environ["HIDE_MODULES"].split(","))


class _Hide:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, context=None, **kwargs):  # importlib.metadata asks the finders too
        import importlib.metadata

        context = context or importlib.metadata.DistributionFinder.Context(**kwargs)
        if context.name and context.name.lower().replace("-", "_") in HIDDEN:
            return iter(())
        return importlib.machinery.PathFinder.find_distributions(context)

    @classmethod
    def invalidate_caches(cls):
        importlib.machinery.PathFinder.invalidate_caches()


sys.meta_path[:] = [_Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
'''


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def hiding(tmp_path: Path, *names: str) -> dict[str, str]:
    """An environment in which `names` look not installed (see HIDE)."""
    hide = tmp_path / "hide"
    hide.mkdir(exist_ok=True)
    (hide / "sitecustomize.py").write_text(HIDE)
    path = os.pathsep.join(p for p in (str(hide), os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"PYTHONPATH": path, "HIDE_MODULES": ",".join(names)}


def test_tiny_cpu_mode_runs_every_step_without_the_packages_the_gpu_lacks(tmp_path):
    env = hiding(tmp_path, "ray", "optuna", "bitsandbytes", "deepspeed")
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=180)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    steps = record["steps"]
    failed = {k: v.get("error") for k, v in steps.items() if v["status"] not in ("ok",)}
    assert not failed, failed
    # per-step times are differences of two short runs: on a loaded CPU in tiny mode they may even be negative,
    # so only that each number was measured is checked here (their meaning is the GPU run's)
    assert all(math.isfinite(steps["5"][k]) for k in ("pack8_vs_one_at_a_time", "member_tokens_per_s_vs_bare"))
    assert record["imported_absent"] == []  # ray, optuna, bitsandbytes, deepspeed: none was needed
    # what each step measured is there (numbers on a CPU mean nothing; their presence does)
    assert [r["loop"] for r in steps["1"]["rows"]] == ["bare peft + torch", "raysweep run_training"]
    assert math.isfinite(steps["1"]["ratio_raysweep_to_bare"]) and steps["2"]["gradient_checkpointing"] is True
    rows = {r["adapter"]: r for r in steps["3"]["rows"]}
    assert set(rows) == {"lora", "dora", "sora", "sdora", "sublora d=1000", "masked 50% unstructured"}
    assert all(r["status"] == "ok" and r["loss_falls"] and r["peak_mem_mb"] > 0 for r in rows.values()), rows
    assert rows["sublora d=1000"]["trainable_params"] == 1000 and rows["masked 50% unstructured"]["mask_violations"] == 0
    assert [r["role"] for r in steps["4"]["rows"]] == ["ok", "hog"] and steps["4"]["passed"]
    assert all(r["gpu_memory_fraction"] == 0.25 for r in steps["4"]["rows"])  # gpus_per_worker 0.25 → the cap
    assert "## step 3" in (out / "results.md").read_text()
    assert seconds < 120, f"the CPU mode took {seconds:.0f} s"  # ~20 s alone, ~27 s beside another test process


def test_a_step_that_raises_is_recorded_and_the_rest_go_on(tmp_path):
    gpu_check = load_script()
    record = {"settings": {"tiny": True, "device": "cpu"}, "env": {}, "steps": {}}
    ran = []

    def broken():
        raise ValueError("no such kernel")

    def save():
        (tmp_path / "results.md").write_text(gpu_check.markdown(record))

    steps = {"1": lambda: ran.append(1) or {"rows": [{"loop": "x", "ms_per_step": 1.5}]}, "2": broken,
             "3": lambda: ran.append(3) or {"value": 2.0}, "4": lambda: ran.append(4) or {}}
    gpu_check.run_steps(steps, record, gpu_check.Budget(60), save, inject_error="4")
    assert ran == [1, 3]
    assert [record["steps"][k]["status"] for k in "1234"] == ["ok", "error", "ok", "error"]
    assert record["steps"]["2"]["error"] == "ValueError: no such kernel"
    assert "broken" in record["steps"]["2"]["traceback"]
    assert "injected" in record["steps"]["4"]["error"]
    text = (tmp_path / "results.md").read_text()
    assert "step 2: the same with gradient checkpointing: tokens/s and memory — error" in text
    # a run past its budget skips what is left rather than starting it
    late = {"settings": {"tiny": True, "device": "cpu"}, "env": {}, "steps": {}}
    gpu_check.run_steps({"1": broken}, late, gpu_check.Budget(0), lambda: None)
    assert late["steps"]["1"]["status"] == "skipped: out of time"


def test_without_pydantic_it_stops_at_once_and_says_how_to_carry_it(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True,
                          env=hiding(tmp_path, "pydantic"), cwd=tmp_path, timeout=60)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "--fetch-wheels build/gpu_wheels" in proc.stderr
    assert "carry" in json.loads((tmp_path / "out" / "results.json").read_text())["fatal"]
