"""Files written so that a kill at any moment leaves either the whole file or none under its name."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path``; when the block ends it is flushed to disk and renamed over
    ``path`` (atomic on one file system). If the block fails, the temporary file is removed."""
    partial = f"{path}.{os.getpid()}.partial"
    try:
        yield partial
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_text(path: str, text: str) -> None:
    with atomic_file(path) as partial, open(partial, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, data: Any) -> None:
    write_text(path, json.dumps(data))
