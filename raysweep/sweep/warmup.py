"""Import the training stack in the background as soon as a trial actor's process starts.

A reused actor pays for importing torch, transformers and peft once, on its first trial. Ray spends the
seconds before that trial's code runs on Tune's own actor set-up, mostly waiting on RPCs, so the imports
can run alongside it (benchmarks/RESULTS.md (c)). `start` is the Ray job's `worker_process_setup_hook`
(sweep/driver.py init_ray sets it for the actor executor): it must return at once, or it would only move
the wait (Ray runs the hook before the worker takes work), hence the thread. `wait` is called by a trial
before its own imports, so no module is ever imported from two threads at once.
"""

from __future__ import annotations

import threading

# what run_training imports on its first call, heaviest first (most of a fresh process's time to its first
# step)
MODULES = (
    "torch",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "transformers.optimization",
    "peft",
    "raysweep.inputs.models",
    "raysweep.adapters",
    "raysweep.inputs.data",
    "raysweep.inputs.model_cache",
    "raysweep.inputs.builtin",
)

_thread: threading.Thread | None = None


def _import_all() -> None:
    import importlib

    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the trial imports it again and reports the real error there
            return


def start() -> None:
    """Begin the imports in a daemon thread and return (Ray's worker_process_setup_hook)."""
    global _thread
    if _thread is None:
        _thread = threading.Thread(target=_import_all, name="raysweep-warmup", daemon=True)
        _thread.start()


def wait() -> None:
    """Block until the background imports (if any were started in this process) are done."""
    if _thread is not None:
        _thread.join()
