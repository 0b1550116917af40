"""Base model and tokenizer: 'builtin', a Hugging Face id, or a local directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raysweep.inputs import sources

BUILTIN = sources.BUILTIN_MODEL


def _looks_like_path(name: str) -> bool:
    # a hub id is "org/name"; anything that exists on disk or starts like a path is a local path
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def check_source(name_or_path: str) -> str | None:
    """A problem with `model.name_or_path` found before Ray starts (None: looks usable)."""
    if name_or_path == BUILTIN:
        return None
    path = Path(name_or_path).expanduser()
    if _looks_like_path(name_or_path):
        if not path.exists():
            return (f"model.name_or_path: local path {name_or_path!r} does not exist; give a model directory "
                    "(with config.json), a Hugging Face id, or 'builtin'")
        if not (path / "config.json").is_file():
            return (f"model.name_or_path: {name_or_path!r} has no config.json; point it to a directory "
                    "written by save_pretrained")
        return None
    try:  # a hub id already in the Hugging Face cache: its config is on disk (no transformers import)
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            return None
    except Exception:  # noqa: BLE001 - an id huggingface_hub rejects is judged by AutoConfig below
        pass
    try:  # a hub id: fetch (or find cached) its config only, which is small
        from transformers import AutoConfig

        AutoConfig.from_pretrained(name_or_path)
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return (f"model.name_or_path: {name_or_path!r} is neither a local directory nor a reachable "
                f"Hugging Face id ({reason}); fix the id or path, or use 'builtin'")
    return None


def local_files(name_or_path: str) -> tuple[Path | None, bool]:
    """(the directory holding the model's files on this machine, whether it must be complete) without
    building or downloading anything: the builtin model once built, a local directory, or a hub id's
    snapshot in the Hugging Face cache (which may hold some files only: the rest download in the trial).
    (None, False) when there is nothing to read yet."""
    if name_or_path == BUILTIN:
        from raysweep.inputs.builtin.model import MODEL_VERSION
        from raysweep.inputs.cache import default_cache_dir

        built = default_cache_dir() / "models" / f"builtin-{MODEL_VERSION}"  # ensure_builtin_model's directory
        return (built, True) if built.is_dir() else (None, False)
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        return (path, True) if (path / "config.json").is_file() else (None, False)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True)), False
    except Exception:  # noqa: BLE001 - not cached here (or not a valid id: check_source says so)
        return None, False


def facts(name_or_path: str):
    """What the model's files say (inputs/model_facts.py, cached per directory), or None if they are not on
    this machine yet (a hub id not downloaded, the builtin model before its first build)."""
    from raysweep.inputs import model_facts

    directory, complete = local_files(name_or_path)
    return model_facts.inspect(directory, complete=complete) if directory is not None else None


def resolve(name_or_path: str) -> str:
    """The string to hand to from_pretrained (the builtin model is created on first use)."""
    if name_or_path == BUILTIN:
        return str(sources.builtin_model_dir())
    path = Path(name_or_path).expanduser()
    return str(path) if path.exists() else name_or_path


def keep_4bit_weights_as_loaded(model) -> None:
    """Turn off bitsandbytes' (>= 0.49) CPU inference repacking of 4-bit weights.

    On a CPU with AVX512-BF16, `Linear4bit.forward` under no_grad in eval mode rewrites the weight in place
    into a CPU-specific layout with bf16 absmax, and `state_dict()` (every adapter save) converts it back by
    re-quantizing absmax: the base weights change with every eval + save. That breaks the per-process base
    cache (a trial's view shares the cached quantized weights) and makes a trial's numbers depend on the CPU
    (tests/test_qlora.py: a cached base gave 5.1612 instead of 5.1736). With the flag off, the generic
    dequantize + matmul path runs everywhere. The flag is bitsandbytes' own attribute of Linear4bit."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


QUANT_MISSING = ("model.load_in_4bit needs bitsandbytes, which is not installed; install the quant extra "
                 "(pip install -e '.[quant]') or set model.load_in_4bit: false")


def check_quantization(model_cfg: dict[str, Any]) -> str | None:
    """A problem with 4-bit loading found before Ray starts (None: fine or not asked for). No import."""
    import importlib.util

    if model_cfg.get("load_in_4bit") and importlib.util.find_spec("bitsandbytes") is None:
        return QUANT_MISSING
    return None


def quantization_config(model_cfg: dict[str, Any]):
    """transformers' BitsAndBytesConfig for `model.load_in_4bit` (QLoRA: nf4 + double quantization by
    default; matmuls in bnb_4bit_compute_dtype, else the model dtype), or None."""
    if not model_cfg.get("load_in_4bit"):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    compute = model_cfg.get("bnb_4bit_compute_dtype") or model_cfg.get("dtype", "float32")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=model_cfg.get("bnb_4bit_quant_type", "nf4"),
                              bnb_4bit_use_double_quant=model_cfg.get("bnb_4bit_use_double_quant", True),
                              bnb_4bit_compute_dtype=getattr(torch, compute))


def load(model_cfg: dict[str, Any], device=None):
    """(model, tokenizer) in the configured dtype: on CPU for the caller to move, except a 4-bit model, which
    bitsandbytes quantizes while loading straight onto `device` (quantized weights are not moved after)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve(model_cfg["name_or_path"])
    dtype = getattr(torch, model_cfg.get("dtype", "float32"))
    trust = model_cfg.get("trust_remote_code", False)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
    quant = quantization_config(model_cfg)
    if quant is None:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust), tokenizer
    if check_quantization(model_cfg):
        raise RuntimeError(QUANT_MISSING)
    from peft import prepare_model_for_kbit_training

    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust, quantization_config=quant,
                                                 device_map={"": str(device or "cpu")})
    keep_4bit_weights_as_loaded(model)
    # QLoRA's k-bit preparation: frozen base, norms and head in float32 for stable training; gradient
    # checkpointing is the trial's own choice (train.gradient_checkpointing), not forced here
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), tokenizer
