"""Where experiments live: a directory, or an object store (`s3://bucket/prefix`, `gs://…`), through one
filesystem layer: pyarrow.fs, the layer Ray Tune itself writes a URI storage with (Tune's files and
checkpoints go there through Ray; raysweep's own files through the functions below).

A location is a string: a local path, or a URI pyarrow understands (credentials and a custom endpoint from
the usual environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for MinIO or moto, or
pyarrow's URI options such as `?endpoint_override=host:port&scheme=http`).

Commands that read an experiment with plain file I/O (analyze, export, bounds, eval, the live report) work on
a *mirror*: a local copy under the cache directory that `pull` keeps in step with the object store
(unchanged files are not downloaded again) and whose new or changed files `push` uploads back. Nothing but
such caches is written to local disk for an object-store experiment.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

COMPLETE_MARKER = ".complete"  # uploaded last into a shared store entry (masks, baselines): the entry is whole


def is_uri(location: str | Path | None) -> bool:
    """An object-store URI (s3://, gs://, …), not a local path (`file://` counts as local)."""
    return bool(location) and "://" in str(location) and not str(location).startswith("file://")


def join(location: str | Path, *parts: str) -> str:
    """`location`/part/…, keeping a URI's scheme and query (`?endpoint_override=…`) intact."""
    if not is_uri(location):
        return str(_local(location).joinpath(*parts))
    scheme, netloc, path, query, fragment = urlsplit(str(location))
    path = "/".join([path.rstrip("/"), *[p.strip("/") for p in parts if p]])
    return urlunsplit((scheme, netloc, path, query, fragment))


def name_of(location: str | Path) -> str:
    """The last component: an experiment's name."""
    return urlsplit(str(location)).path.rstrip("/").rsplit("/", 1)[-1] if is_uri(location) else Path(location).name


def display(location: str | Path) -> str:
    """What to print: a local path resolved, a URI as given."""
    return str(location) if is_uri(location) else str(_local(location).resolve())


def _local(location: str | Path) -> Path:
    return Path(os.path.expanduser(str(location)))


# Local locations use the standard library (no pyarrow import in a command that never touches a store);
# object-store ones the pyarrow filesystem of their URI:
def _filesystem(uri: str | Path):
    """(pyarrow filesystem, path on it) of an object-store URI."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(str(uri))


def _info(uri: str | Path):
    fs, path = _filesystem(uri)
    return fs.get_file_info(path)

def exists(location: str | Path) -> bool:
    if not is_uri(location):
        return _local(location).exists()
    import pyarrow.fs as pafs

    return _info(location).type != pafs.FileType.NotFound


def is_file(location: str | Path) -> bool:
    if not is_uri(location):
        return _local(location).is_file()
    import pyarrow.fs as pafs

    return _info(location).type == pafs.FileType.File


def is_dir(location: str | Path) -> bool:
    """A directory (on an object store: a prefix that holds at least one object)."""
    if not is_uri(location):
        return _local(location).is_dir()
    import pyarrow.fs as pafs

    return _info(location).type == pafs.FileType.Directory  # S3: a prefix with objects under it


def bucket_exists(location: str | Path) -> bool:
    """Whether the bucket of an object-store location exists (a local location: True)."""
    if not is_uri(location):
        return True
    import pyarrow.fs as pafs

    fs, path = _filesystem(location)
    return fs.get_file_info(path.split("/", 1)[0]).type != pafs.FileType.NotFound


def read_text(location: str | Path) -> str:
    """The file's text (undecodable bytes replaced); FileNotFoundError when there is none."""
    if not is_uri(location):
        return _local(location).read_text(errors="replace")
    fs, path = _filesystem(location)
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        raise
    except OSError as exc:  # pyarrow reports a missing object as OSError on some stores
        if not is_file(location):
            raise FileNotFoundError(str(location)) from exc
        raise


def write_text(location: str | Path, text: str) -> None:
    """Write a whole file so readers see the old or the new one, never a part: locally written beside it and
    renamed; on an object store one PUT (objects are replaced whole)."""
    if not is_uri(location):
        path = _local(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, path)
        return
    fs, path = _filesystem(location)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def make_dirs(location: str | Path) -> None:
    """Create a local directory (an object store has no directories to create)."""
    if not is_uri(location):
        _local(location).mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------- local mirrors

def cache_root() -> Path:
    """$RAYSWEEP_CACHE if set, else ~/.cache/raysweep (the builtin model, tokenized data, mirrors)."""
    env = os.environ.get("RAYSWEEP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "raysweep"


def mirror_of(location: str | Path) -> Path:
    """The local directory mirroring an object-store location (a local location is its own mirror):
    <cache>/storage/<scheme>/<bucket>/<path>, the query left out."""
    if not is_uri(location):
        return _local(location).resolve()
    parts = urlsplit(str(location))
    safe = [re.sub(r"[^A-Za-z0-9._=-]", "_", p) for p in [parts.scheme, parts.netloc, *parts.path.split("/")] if p]
    return cache_root().joinpath("storage", *safe)


def pull(location: str | Path, local: Path | None = None) -> Path:
    """Bring everything under `location` into its mirror (or `local`), downloading only files that are new
    or differ in size or time from the mirror's copy; files gone from the store stay (a cache)."""
    if not is_uri(location):
        return mirror_of(location)
    import pyarrow.fs as pafs

    local = local or mirror_of(location)
    fs, root = _filesystem(location)
    listing = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=True))
    for info in listing:
        if info.type != pafs.FileType.File:
            continue
        target = local / info.path[len(root):].lstrip("/")
        stamp = info.mtime_ns
        if target.is_file() and target.stat().st_size == info.size and (
                stamp is None or target.stat().st_mtime_ns == stamp):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with fs.open_input_stream(info.path) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        if stamp is not None:
            os.utime(partial, ns=(stamp, stamp))
        os.replace(partial, target)
    return local


def push(local: Path, location: str | Path, files: list[Path] | None = None) -> list[str]:
    """Upload `files` (default: every file under `local`) to the same places under `location`; the
    locations written. A local `location` that is `local` itself needs nothing."""
    if not is_uri(location):
        return []
    fs, root = _filesystem(location)
    written = []
    for file in sorted(files if files is not None else [p for p in Path(local).rglob("*") if p.is_file()]):
        relative = Path(file).relative_to(local).as_posix()
        with Path(file).open("rb") as src, fs.open_output_stream(f"{root}/{relative}") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        written.append(join(location, relative))
    return written


def snapshot(local: Path) -> dict[str, tuple[int, int]]:
    """Every file under `local` with its (size, mtime): what `changed_since` compares with."""
    return {p.as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(local).rglob("*") if p.is_file()}


def changed_since(local: Path, before: dict[str, tuple[int, int]]) -> list[Path]:
    return [Path(p) for p, stamp in snapshot(local).items() if before.get(p) != stamp]


@contextlib.contextmanager
def opened(location: str | Path, write_back: bool = True) -> Iterator[Path]:
    """`location` (an experiment, trial or checkpoint) as a local directory while the block runs: itself, or
    its pulled mirror, whose files the block writes or changes are pushed back when it ends without error."""
    if not is_uri(location):
        yield _local(location)
        return
    local = pull(location)
    before = snapshot(local)
    yield local
    if write_back:
        push(local, location, changed_since(local, before))


def shown(path: str | Path, local: Path, location: str | Path) -> str:
    """A path inside the mirror `local` of `location`, as the user names it (in the object store)."""
    text, base = str(path), str(local)
    if not is_uri(location) or not (text == base or text.startswith(base + "/")):
        return text
    return join(location, text[len(base):].lstrip("/")) if text != base else str(location)


def in_store(path: str, location: str | Path) -> str:
    """A path Ray reported inside the object-store `location` without its scheme (Ray keeps a checkpoint in
    object storage as "bucket/prefix/…" on its filesystem), as the URI a user gives back; anything else
    unchanged."""
    if not path or not is_uri(location) or "://" in path:
        return path
    scheme, rest = str(location).split("?", 1)[0].split("://", 1)
    return f"{scheme}://{path}" if path == rest.rstrip("/") or path.startswith(rest.rstrip("/") + "/") else path


def relocate(recorded: str, recorded_root: str | None, root: str | Path) -> str:
    """A recorded location inside an experiment (a checkpoint), rewritten under the experiment's current
    place: the experiment was moved or copied, or `root` is the local mirror of its object-store copy."""
    if not isinstance(recorded, str) or not recorded or not recorded_root:
        return recorded
    if not is_uri(recorded) and Path(recorded).exists():
        return recorded
    old = recorded_root.split("?", 1)[0].rstrip("/")
    bare = re.sub(r"^[a-z0-9+.-]+://", "", old)  # Ray records object-store paths without their scheme
    for prefix in (old, bare):
        if recorded == prefix or recorded.startswith(prefix + "/"):
            return str(Path(root) / recorded[len(prefix):].lstrip("/"))
    return recorded
