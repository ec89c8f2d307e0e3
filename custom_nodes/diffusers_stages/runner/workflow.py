"""Reading workflows (UI or API JSON, or a PNG with the workflow embedded) and preparing prompts to run."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .convert import Conversion, ConversionError, Converter, is_api_prompt
from .execute import WorkflowError


@dataclass
class Workflow:
    prompt: dict[str, dict[str, Any]]  # API format
    ui: dict[str, Any] | None = None  # the UI workflow, when we have it (goes into saved PNGs)
    controls: dict[tuple[str, str], str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    widget_slots: dict[tuple[str, str], int] = field(default_factory=dict)
    source: str = ""
    warnings: list[str] = field(default_factory=list)  # from the conversion, each naming its node

    def ui_for(self, prompt: dict[str, Any]) -> dict[str, Any] | None:
        """The UI workflow with this run's widget values (seeds, --set values) written in, for the saved PNG."""
        if self.ui is None:
            return None
        ui = copy.deepcopy(self.ui)
        nodes = {str(node["id"]): node for node in ui.get("nodes", [])}
        for (node_id, name), index in self.widget_slots.items():
            value = prompt.get(node_id, {}).get("inputs", {}).get(name)
            values = nodes.get(node_id, {}).get("widgets_values")
            if isinstance(values, list) and index < len(values) and not (isinstance(value, list) and len(value) == 2):
                values[index] = value
        ui.setdefault("extra", {})["diffusers_stages"] = {"node_versions": node_versions(prompt)}
        return ui


def node_versions(prompt: dict[str, Any]) -> dict[str, str]:
    """Version of each of our node types the prompt uses, kept in saved workflows for later migrations."""
    from ..nodes import NODE_CLASS_MAPPINGS

    kinds = {node["class_type"] for node in prompt.values()}
    return {kind: NODE_CLASS_MAPPINGS[kind].VERSION for kind in sorted(kinds) if kind in NODE_CLASS_MAPPINGS}


def read_file(path: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(UI workflow, API prompt) found in a .json or .png file; either may be None."""
    if not os.path.isfile(path):
        raise WorkflowError([f"workflow file '{path}' does not exist"])
    if path.lower().endswith(".png"):
        return _read_png(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise WorkflowError([f"'{path}' is not valid JSON text ({type(error).__name__}: {str(error)[:200]}); "
                             "give a workflow saved by ComfyUI (Save / Export, or Export (API))"]) from error
    except OSError as error:
        raise WorkflowError([f"'{path}' cannot be read ({error.strerror or error})"]) from error
    if isinstance(data, dict) and "prompt" in data and is_api_prompt(data.get("prompt") or {}):
        return data.get("workflow"), data["prompt"]  # a /prompt request body
    if isinstance(data, dict) and is_api_prompt(data):
        return None, data
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return data, None
    raise WorkflowError([f"'{path}' is neither a ComfyUI UI workflow nor an API prompt"])


def _read_png(path: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The workflow chunks ComfyUI's Save Image writes into a PNG."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # reads the text chunks that follow the pixels, too
            text = dict(getattr(image, "text", {}) or {})
    except (OSError, SyntaxError, ValueError) as error:  # PIL: not a PNG, truncated, damaged chunks
        raise WorkflowError([f"'{path}' cannot be read as a PNG image ({error})"]) from error
    found = []
    for chunk in ("workflow", "prompt"):
        try:
            found.append(json.loads(text[chunk]) if chunk in text else None)
        except (json.JSONDecodeError, RecursionError) as error:
            raise WorkflowError([f"'{path}': its embedded '{chunk}' is not valid JSON ({str(error)[:200]}); the "
                                 "PNG was damaged or edited after ComfyUI saved it"]) from error
    ui, api = found
    if not isinstance(ui, dict | None) or not isinstance(api, dict | None) or (ui is None and api is None):
        raise WorkflowError([f"'{path}' has no embedded workflow (no 'workflow' or 'prompt' PNG text chunk "
                             "holding one)"])
    return ui, api


def load(path: str, definitions: dict[str, dict[str, Any]]) -> Workflow:
    ui, api = read_file(path)
    if ui is not None:
        try:
            conversion: Conversion = Converter(definitions).convert(ui)
        except (ConversionError, KeyError, TypeError, AttributeError, ValueError, IndexError) as error:
            raise WorkflowError([f"'{path}': the UI workflow cannot be converted ({type(error).__name__}: "
                                 f"{str(error)[:200]}); it is damaged or not a ComfyUI workflow"]) from error
        return Workflow(conversion.prompt, ui, conversion.controls, conversion.missing, conversion.widget_slots, path,
                        conversion.warnings)
    return Workflow(api, None, source=path)


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def find_node(prompt: dict[str, Any], key: str) -> str:
    if key in prompt:
        return key
    matches = [nid for nid, node in prompt.items() if (node.get("_meta") or {}).get("title") == key]
    if len(matches) == 1:
        return matches[0]
    titles = ", ".join(sorted({f"{nid} ({(n.get('_meta') or {}).get('title', n['class_type'])})"
                               for nid, n in prompt.items()}))
    if matches:
        raise WorkflowError([f"--set: the title '{key}' names several nodes ({', '.join(matches)}); use a node id"])
    raise WorkflowError([f"--set: no node with id or title '{key}'. Nodes: {titles}"])


def parse_set(item: str) -> tuple[str, str, str]:
    """'NODE.INPUT=VALUE' -> (node, input, value text). NODE may be an id or a title (titles may contain dots)."""
    target, sep, value = item.partition("=")
    node, dot, name = target.rpartition(".")
    if not sep or not dot or not node or not name:
        raise WorkflowError([f"--set '{item}': write it as NODE.INPUT=VALUE (NODE: a node id or title)"])
    return node, name, value
