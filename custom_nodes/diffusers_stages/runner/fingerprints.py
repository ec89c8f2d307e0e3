"""Model files fingerprinted by content: name, size and SHA-256, each file hashed once.

A batch records the fingerprint of every model file its runs read, so a resume notices a file replaced
under the same name. Hashing a 12 GB file takes seconds, so digests are cached by (path, size, mtime):
in the process, and in a small JSON file (``$DIFFUSERS_STAGES_CACHE_DIR`` or ``~/.cache/diffusers_stages``)
across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading

from .files import write_json

CHUNK = 16 * 2 ** 20
_lock = threading.Lock()
_digests: dict[tuple[str, int, int], str] = {}
hashed_files: list[str] = []  # every file actually read for hashing in this process (tests count them)


def _cache_path() -> str:
    root = os.environ.get("DIFFUSERS_STAGES_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "diffusers_stages")
    return os.path.join(root, "file_hashes.json")


def _disk_cache() -> dict[str, str]:
    try:
        with open(_cache_path(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(key: tuple[str, int, int], digest: str) -> None:
    _digests[key] = digest
    try:
        os.makedirs(os.path.dirname(_cache_path()), exist_ok=True)
        write_json(_cache_path(), {**_disk_cache(), "|".join(map(str, key)): digest})
    except OSError:
        pass  # a read-only home: the in-process cache still holds it


def file_sha256(path: str) -> str:
    path = os.path.abspath(path)
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _digests:
            return _digests[key]
        stored = _disk_cache().get("|".join(map(str, key)))
        if stored:
            _digests[key] = stored
            return stored
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        hashed_files.append(path)
        _remember(key, digest.hexdigest())
        return _digests[key]


def fingerprint(path: str) -> dict[str, object]:
    """{"size", "sha256"} of a model file; a diffusers folder gives one digest over its files' names and digests."""
    if os.path.isdir(path):
        entries = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                entries.append((os.path.relpath(full, path).replace(os.sep, "/"), os.path.getsize(full),
                                file_sha256(full)))
        combined = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
        return {"size": sum(size for _, size, _ in entries), "sha256": combined}
    return {"size": os.path.getsize(path), "sha256": file_sha256(path)}


def changed(recorded: dict[str, dict[str, object]]) -> list[str]:
    """The recorded model files that are gone or whose content differs now."""
    problems = []
    for path, before in sorted(recorded.items()):
        if not os.path.exists(path):
            problems.append(f"'{path}' is gone")
        elif fingerprint(path) != before:
            problems.append(f"'{path}' was replaced (its size or content differs)")
    return problems
