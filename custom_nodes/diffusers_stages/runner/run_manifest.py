"""The run manifest: what a result was made with, so it can be reproduced or audited.

It records the pack's version and the version of every node of ours the prompt uses; torch, diffusers and
transformers versions and the device; every model file the loaders read (name, size, SHA-256: hashed once per file,
see ``fingerprints``); and the seeds. A batch writes it beside its plan (``provenance.json``, the seeds of every
run); every PNG a run saves carries its own in a ``diffusers_stages`` text chunk (which ComfyUI ignores when the
picture is dropped back in).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

from . import fingerprints

PNG_KEY = "diffusers_stages"  # the PNG text chunk holding a run's manifest
SEED_INPUTS = ("seed", "noise_seed")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The software and the device the runs use."""
    import torch

    from .. import __version__, host

    device = host.compute_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"pack": {"name": "diffusers-stages", "version": __version__},
            "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": _version("diffusers"), "transformers": _version("transformers"),
            "device": {"type": device.type, "name": name}}


def node_versions(prompt: dict[str, Any], classes: dict[str, Any]) -> dict[str, str]:
    """{node id of ours: its version} for the node types the prompt uses."""
    kinds = sorted({node["class_type"] for node in prompt.values()})
    return {kind: classes[kind].VERSION for kind in kinds if hasattr(classes.get(kind), "VERSION")}


def seeds(prompt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{node id: {"class_type", "title", the seed inputs}} of every node with a literal seed."""
    found = {}
    for nid, node in prompt.items():
        values = {name: value for name, value in node.get("inputs", {}).items()
                  if name in SEED_INPUTS and isinstance(value, int)}
        if values:
            found[nid] = {"class_type": node["class_type"], "title": node.get("_meta", {}).get("title"), **values}
    return found


def models(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Name, path, size and SHA-256 of each model file or folder (a folder: one digest over its files)."""
    return [{"name": os.path.basename(path.rstrip("/\\")), "path": path, **fingerprints.fingerprint(path)}
            for path in sorted(set(paths))]


def for_run(prompt: dict[str, Any], classes: dict[str, Any],
            model_files: Callable[[list[dict[str, Any]]], list[str]]) -> dict[str, Any]:
    """One run's manifest."""
    return {**environment(), "nodes": node_versions(prompt, classes), "models": models(model_files([prompt])),
            "seeds": seeds(prompt)}


def for_batch(runs: list[dict[str, Any]], classes: dict[str, Any],
              model_files: Callable[[list[dict[str, Any]]], list[str]]) -> dict[str, Any]:
    """A batch's manifest: what every run shares, and each run's seeds (run 1 first)."""
    kinds = {kind for prompt in runs for kind in node_versions(prompt, classes).items()}
    return {**environment(), "nodes": dict(sorted(kinds)), "models": models(model_files(runs)),
            "runs": [{"run": index + 1, "seeds": seeds(prompt)} for index, prompt in enumerate(runs)]}
