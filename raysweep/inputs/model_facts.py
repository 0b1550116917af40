"""What a model directory's files say, read without loading a weight and without torch: config.json, the
safetensors headers (every tensor's name and shape, the base's parameter count), the tokenizer (loaded with
the Rust `tokenizers` library: its size) and the chat template (whether it renders a 'tool' message).

The CLI checks a grid against these facts before Ray starts (cli/model_check.py): target_modules that match
no layer, a rank above the adapted layers' dimensions, a missing or unreadable weight file or tokenizer,
token ids past the vocabulary. Reading the facts costs a few file headers; they are cached per directory in
`<cache>/preflight/` (keyed by every file's name, size and modification time), so `plan` on a big model
reads one small JSON file. Only a model with no safetensors weights (pytorch_model.bin alone) needs torch,
to read its shapes on the meta device (once: the result is cached).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raysweep.inputs.cache import default_cache_dir
from raysweep.inputs.examples import DEFAULT_CHAT_TEMPLATE

FACTS_VERSION = 1  # bump when what is read or how it is judged changes: older cache entries are not reused
CACHE_DIR = "preflight"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on a header's size
_KEY = "model.name_or_path"


@dataclass
class ModelFacts:
    directory: str
    problems: list[str] = field(default_factory=list)  # one line each: the file, what is wrong, the fix
    shapes: dict[str, list[int]] = field(default_factory=dict)  # module -> its 2-D weight's shape, as stored
    modules: list[str] = field(default_factory=list)  # every module holding a tensor (norms, biases too)
    params: int | None = None  # the base's parameter count (None: weights not read)
    vocab_size: int | None = None  # len(tokenizer) (None: no tokenizer read)
    config: dict[str, Any] = field(default_factory=dict)  # model_type, vocab_size, tie_word_embeddings, ...
    tool_role: bool = True  # the chat template renders a message with role 'tool'

    @property
    def weights_read(self) -> bool:
        return self.params is not None


def inspect(directory: str | Path, complete: bool = True, use_cache: bool = True) -> ModelFacts:
    """The facts of a model directory (cached). `complete=False` (a hub snapshot that may hold only some
    files yet) reports what is unreadable, not what is missing."""
    directory = Path(directory).expanduser().resolve()
    key = _cache_key(directory, complete)
    path = default_cache_dir() / CACHE_DIR / f"model-{key}.json"
    if use_cache and path.is_file():
        try:
            return ModelFacts(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            pass  # a damaged entry is rebuilt
    facts = _read(directory, complete)
    if use_cache:
        write_cache(path, asdict(facts))
    return facts


def write_cache(path: Path, value: Any) -> None:
    """Write a cache entry whole (temp file + rename); a cache that cannot be written only costs speed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
    except OSError:
        pass


def _cache_key(directory: Path, complete: bool) -> str:
    listing = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name) if directory.is_dir() else []:
        try:
            st = entry.stat()  # follows symlinks: a hub snapshot's files are links to blobs
            listing.append((entry.name, st.st_size, st.st_mtime_ns))
        except OSError:
            listing.append((entry.name, -1, -1))
    # a slow tokenizer converts only with these installed: installing one changes the verdict
    converters = [importlib.util.find_spec(m) is not None for m in ("sentencepiece", "tiktoken")]
    text = json.dumps([FACTS_VERSION, str(directory), complete, converters, listing])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read(directory: Path, complete: bool) -> ModelFacts:
    facts = ModelFacts(str(directory))
    facts.config = _read_config(directory, facts.problems)
    _read_weights(directory, facts, complete)
    _read_tokenizer(directory, facts, complete)
    return facts


# ------------------------------------------------------------------------------------------------ config


def _read_json(path: Path, problems: list[str], what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        problems.append(f"{_KEY}: {path}:{exc.lineno}: not valid JSON ({exc.msg}); fix or re-save the {what} "
                        "(save_pretrained writes it)")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{_KEY}: {path} cannot be read ({exc}); fix its permissions or re-save the {what}")
    return None


def _read_config(directory: Path, problems: list[str]) -> dict[str, Any]:
    config = _read_json(directory / "config.json", problems, "model config")
    if config is None:
        return {}
    if not isinstance(config, dict):
        problems.append(f"{_KEY}: {directory / 'config.json'} is not a JSON object; re-save the model with "
                        "save_pretrained")
        return {}
    if not config.get("model_type"):
        problems.append(f"{_KEY}: {directory / 'config.json'} has no \"model_type\", so transformers cannot tell "
                        "the architecture; re-save the model with save_pretrained")
    keys = ("model_type", "vocab_size", "tie_word_embeddings", "hidden_size", "n_embd", "max_position_embeddings",
            "n_positions")
    return {k: config[k] for k in keys if k in config}


# ------------------------------------------------------------------------------------------------ weights


def _read_weights(directory: Path, facts: ModelFacts, complete: bool) -> None:
    tensors: dict[str, list[int]] = {}
    if (directory / SAFETENSORS_INDEX).is_file() or (directory / SAFETENSORS).is_file():
        for path in _shards(directory, SAFETENSORS, SAFETENSORS_INDEX, facts.problems):
            try:
                tensors |= safetensors_shapes(path)
            except ValueError as exc:
                facts.problems.append(f"{_KEY}: {path} is not a readable safetensors file ({exc}); the file is "
                                      "truncated or damaged: copy or download it again")
    elif (directory / BIN_INDEX).is_file() or (directory / BIN).is_file():
        shards = _shards(directory, BIN, BIN_INDEX, facts.problems)
        tensors = _bin_shapes(shards)
    else:
        if complete:
            facts.problems.append(f"{_KEY}: {directory} has config.json but no weights ({SAFETENSORS} or {BIN}): "
                                  "the directory is incomplete; copy the weight files into it or save the model "
                                  "again with save_pretrained")
        return
    if not tensors:
        return
    facts.params = sum(_numel(shape) for shape in tensors.values())
    facts.modules = sorted({name.rpartition(".")[0] for name in tensors})
    facts.shapes = {name.removesuffix(".weight"): shape for name, shape in tensors.items()
                    if name.endswith(".weight") and len(shape) == 2}


def _shards(directory: Path, single: str, index: str, problems: list[str]) -> list[Path]:
    if not (directory / index).is_file():
        return [directory / single]
    weight_map = (_read_json(directory / index, problems, "weight index") or {}).get("weight_map")
    if not isinstance(weight_map, dict):
        problems.append(f"{_KEY}: {directory / index} has no \"weight_map\"; re-save the model with save_pretrained")
        return []
    shards = [directory / name for name in sorted(set(weight_map.values()))]
    for path in shards:
        if not path.is_file():
            problems.append(f"{_KEY}: {directory / index} lists {path.name}, which is missing; copy it into "
                            f"{directory} (an interrupted download or copy)")
    return [p for p in shards if p.is_file()]


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header (8-byte length, then JSON); ValueError if the
    header does not parse or the data it describes is past the end of the file (a truncated copy)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than a header")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"header length {n} does not fit the file's {size} bytes")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    shapes, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shapes[name] = [int(d) for d in info["shape"]]
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise ValueError(f"tensor {name!r} has no shape/data_offsets") from None
    if 8 + n + end > size:
        raise ValueError(f"its tensors need {8 + n + end} bytes, the file has {size}")
    return shapes


def _bin_shapes(paths: list[Path]) -> dict[str, list[int]]:
    """Shapes from pytorch_model.bin files: they are pickles, so this needs torch (mapped on the meta device,
    nothing read); cached by `inspect` like the rest. {} if a file does not load that way (legacy format)."""
    try:
        import torch
    except ImportError:
        return {}
    shapes = {}
    for path in paths:
        try:
            state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - the trial's own loading reports a truly broken file
            return {}
        shapes |= {k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    return shapes


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ------------------------------------------------------------------------------------------------ tokenizer


def _read_tokenizer(directory: Path, facts: ModelFacts, complete: bool) -> None:
    problems = facts.problems
    config = directory / "tokenizer_config.json"
    tok_config = _read_json(config, problems, "tokenizer config") if config.is_file() else {}
    tok_config = tok_config if isinstance(tok_config, dict) else {}
    fast, spm = directory / "tokenizer.json", directory / "tokenizer.model"
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if fast.is_file():
        try:
            from tokenizers import Tokenizer

            facts.vocab_size = Tokenizer.from_file(str(fast)).get_vocab_size(with_added_tokens=True)
        except Exception as exc:  # noqa: BLE001 - the Rust library's own reason, on one line
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            problems.append(f"{_KEY}: {fast} does not load as a tokenizer ({reason}); save the tokenizer again "
                            "with tokenizer.save_pretrained")
    elif spm.is_file():
        if not any(importlib.util.find_spec(m) for m in ("sentencepiece", "tiktoken")):
            problems.append(f"{_KEY}: {directory} has only a slow tokenizer ({spm.name}), which needs sentencepiece "
                            "to load: pip install sentencepiece, or save a fast tokenizer (tokenizer.json) there")
    elif vocab.is_file():
        if not merges.is_file():
            problems.append(f"{_KEY}: {directory} has vocab.json but no merges.txt, so its BPE tokenizer does not "
                            "load; copy merges.txt next to it or save the tokenizer again")
        else:
            words = _read_json(vocab, problems, "tokenizer vocabulary")
            added = tok_config.get("added_tokens_decoder") or {}
            if isinstance(words, dict):  # len(tokenizer): the vocabulary plus added tokens it does not hold
                ids = {v for v in words.values() if isinstance(v, int)} | {int(k) for k in added if str(k).isdigit()}
                facts.vocab_size = len(ids)
    elif not (directory / "vocab.txt").is_file() and not list(directory.glob("*.tiktoken")) and complete:
        problems.append(f"{_KEY}: {directory} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json + "
                        "merges.txt); save it next to the model: tokenizer.save_pretrained(<that directory>)")
    facts.tool_role = renders_tool(chat_template(directory, tok_config), tok_config)


def chat_template(directory: Path, tok_config: dict[str, Any]) -> str:
    """The template the trial applies: chat_template.jinja, tokenizer_config's chat_template (the default one
    of a named list), else raysweep's default (examples.DEFAULT_CHAT_TEMPLATE)."""
    path = directory / "chat_template.jinja"
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return DEFAULT_CHAT_TEMPLATE
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # [{name, template}, ...]: transformers applies "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else DEFAULT_CHAT_TEMPLATE


def renders_tool(template: str, tok_config: dict[str, Any]) -> bool:
    """Whether the template renders a 'tool' message's content. Rendered with jinja2's sandbox the way
    transformers does; a template that fails without the tool message too cannot tell, so tool is allowed."""
    try:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return True

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: "2026-01-01"
    specials = {k: v if isinstance(v, str) else (v or {}).get("content", "") for k, v in tok_config.items()
                if k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    probe = "raysweep-tool-probe-7f3a"
    base = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    with_tool = [base[0], {"role": "tool", "content": probe}, base[1]]
    try:
        compiled = env.from_string(template)
        compiled.render(messages=base, add_generation_prompt=False, **specials)
    except Exception:  # noqa: BLE001 - a template this probe cannot render: no verdict
        return True
    try:
        return probe in compiled.render(messages=with_tool, add_generation_prompt=False, **specials)
    except Exception:  # noqa: BLE001 - raise_exception on an unknown role, typically
        return False
