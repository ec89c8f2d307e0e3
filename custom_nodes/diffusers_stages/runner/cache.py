"""Node outputs kept across prompts, least recently used first out, within a memory budget.

ComfyUI's classic cache keeps only what the latest prompt used, so a process that alternates two
models loads each again at every switch. Here outputs of earlier prompts that hold a model (loaders,
LoRA, and prompts encoded by a model) stay while their tensors fit the budget; outputs of earlier
prompts that hold no model (latents, images) are dropped at once, as ComfyUI drops them: they are
cheap to make again and a batch of new seeds would otherwise pile them up. Sizes count each tensor
storage once, however many outputs share it (a LoRA handle shares its base model's weights).
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


def holds_model(value: Any, depth: int = 0) -> bool:
    """Whether a node output reaches a torch module (a model handle, or something that keeps one)."""
    if depth > 8 or value is None or isinstance(value, (str, bytes, int, float, bool, torch.Tensor)):
        return False
    if isinstance(value, torch.nn.Module):
        return True
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(holds_model(getattr(value, item.name), depth + 1) for item in dataclasses.fields(value))
    if isinstance(value, dict):
        return any(holds_model(item, depth + 1) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(holds_model(item, depth + 1) for item in value)
    return False


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
        self._models: set[str] = set()  # signatures whose outputs hold a model

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
        if holds_model(outputs):
            self._models.add(signature)

    def held_bytes(self) -> int:
        merged: dict[int, int] = {}
        for sizes in self._sizes.values():
            merged.update(sizes)
        return sum(merged.values())

    def _drop(self, signature: str) -> None:
        del self._entries[signature]
        del self._sizes[signature]
        self._models.discard(signature)

    def trim(self, keep: set[str]) -> None:
        """Drop the outputs not in ``keep`` that hold no model, then the least recently used others until what is
        held fits the budget."""
        for signature in [s for s in self._entries if s not in keep and s not in self._models]:
            self._drop(signature)
        held = self.held_bytes()
        for signature in list(self._entries):
            if held <= self.budget:
                return
            if signature not in keep:
                self._drop(signature)
                held = self.held_bytes()
