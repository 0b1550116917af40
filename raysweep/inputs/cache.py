"""Build-once, concurrency-safe cache directories (builtin artifacts, masks, calibrations).

Several Ray workers on one node may ask for the same artifact at once. A file
lock serializes the builders, and each artifact is built in a temp dir next to
its final place and renamed into it atomically, so a directory that exists is
always complete (a crashed build leaves only a temp dir, never a half dir).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from raysweep.experiment import storage


def default_cache_dir() -> Path:
    """$RAYSWEEP_CACHE if set, else ~/.cache/raysweep."""
    return storage.cache_root()


def build_once(final_dir: Path, build: Callable[[Path], None]) -> Path:
    """Return final_dir, calling build(tmp_dir) to create it if it is missing."""
    if final_dir.is_dir():  # fast path: no lock needed, dirs appear atomically
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final_dir) + ".lock"):
        if final_dir.is_dir():  # another process built it while we waited
            return final_dir
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", dir=final_dir.parent))
        try:
            build(tmp)
            # mkdtemp (and some writers) create owner-only files; the cache may
            # be shared by other users/containers on the node, so open it up.
            os.chmod(tmp, 0o755)
            for f in tmp.iterdir():
                os.chmod(f, 0o644)
            os.rename(tmp, final_dir)  # atomic on one filesystem
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final_dir


def build_once_shared(store: str | Path | None, relative: str, build: Callable[[Path], None]) -> Path:
    """`build_once` for an entry shared through the sweeps' storage (`<store>/<relative>`, e.g. masks/<key>):
    a local directory entry as above; on an object store (s3://) the entry is built in this node's mirror of
    the store under the same file lock, then uploaded with a completion marker last, and a node that finds
    the marker downloads the entry instead of building it. Two nodes may build one key at the same time (an
    object store has no lock); both write the same result. Returns the local directory."""
    if not storage.is_uri(store):
        return build_once(Path(store or default_cache_dir()) / relative, build)
    remote = storage.join(store, relative)
    local = storage.mirror_of(remote)

    def fetch_or_build(tmp: Path) -> None:
        if storage.is_file(storage.join(remote, storage.COMPLETE_MARKER)):
            storage.pull(remote, tmp)
            return
        build(tmp)
        storage.push(tmp, remote)
        (tmp / storage.COMPLETE_MARKER).write_text("")
        storage.push(tmp, remote, [tmp / storage.COMPLETE_MARKER])

    return build_once(local, fetch_or_build)
