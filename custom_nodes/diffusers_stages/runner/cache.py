"""Node outputs kept across prompts, least recently used first out, within a memory budget.

ComfyUI's classic cache keeps only what the latest prompt used, so a process that alternates two
models loads each again at every switch. Here outputs of earlier prompts stay while the tensors they
hold (model weights above all) fit the budget. Sizes count each tensor storage once, however many
outputs share it (a LoRA handle shares its base model's weights).
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from typing import Any

import torch

DEFAULT_SHARE = 0.5  # of the machine's memory, when no budget is given


def default_budget() -> int:
    configured = os.environ.get("DIFFUSERS_STAGES_CACHE_GB")
    if configured:
        return int(float(configured) * 2 ** 30)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * DEFAULT_SHARE)
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return 8 * 2 ** 30


def storages(value: Any, found: dict[int, int] | None = None, depth: int = 0) -> dict[int, int]:
    """{storage address: bytes} of every tensor reachable from a node output (tensors, modules, engine handles,
    dicts, lists)."""
    found = {} if found is None else found
    if depth > 8 or value is None or isinstance(value, (str, bytes, int, float, bool)):
        return found
    if isinstance(value, torch.Tensor):
        if value.device.type != "meta":
            storage = value.untyped_storage()
            found[storage.data_ptr()] = storage.nbytes()
    elif isinstance(value, torch.nn.Module):
        for tensor in (*value.parameters(), *value.buffers()):
            storages(tensor, found, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            storages(getattr(value, item.name), found, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            storages(item, found, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            storages(item, found, depth + 1)
    return found


class OutputCache:
    def __init__(self, budget: int | None = None):
        self.budget = default_budget() if budget is None else budget
        self._entries: OrderedDict[str, list[list[Any]]] = OrderedDict()
        self._sizes: dict[str, dict[int, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, signature: str) -> list[list[Any]] | None:
        if signature not in self._entries:
            return None
        self._entries.move_to_end(signature)
        return self._entries[signature]

    def put(self, signature: str, outputs: list[list[Any]]) -> None:
        self._entries[signature] = outputs
        self._entries.move_to_end(signature)
        self._sizes[signature] = storages(outputs)

    def held_bytes(self) -> int:
        merged: dict[int, int] = {}
        for sizes in self._sizes.values():
            merged.update(sizes)
        return sum(merged.values())

    def trim(self, keep: set[str]) -> None:
        """Drop the least recently used outputs not in ``keep`` until what is held fits the budget."""
        for signature in list(self._entries):
            if self.held_bytes() <= self.budget:
                return
            if signature not in keep:
                del self._entries[signature]
                del self._sizes[signature]
