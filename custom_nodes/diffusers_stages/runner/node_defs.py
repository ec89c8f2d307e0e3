"""Node definitions in ComfyUI's /object_info shape, used to read UI-format workflows.

UI workflows store widget values by position, so converting one needs each node type's
input order. Ours and the headless core nodes' (Load Image, Save Image, Preview Image) come from their
classes; a full /object_info dump can be added for other node types.
"""

from __future__ import annotations

import json
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def definition_of(cls) -> dict[str, Any]:
    """The /object_info entry ComfyUI would publish for a V1 node class."""
    spec = cls.INPUT_TYPES()
    return {
        "name": getattr(cls, "NODE_ID", cls.__name__),
        "display_name": getattr(cls, "DISPLAY_NAME", cls.__name__),
        "input": {section: {name: list(entry) if isinstance(entry, tuple) else entry for name, entry in inputs.items()}
                  for section, inputs in spec.items()},
        "input_order": {section: list(inputs) for section, inputs in spec.items()},
        "output": list(cls.RETURN_TYPES),
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES))),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "category": getattr(cls, "CATEGORY", ""),
    }


def load_definitions(classes: dict[str, type], extra_files: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """Definitions for the given classes and any /object_info dumps (the classes win)."""
    definitions: dict[str, dict[str, Any]] = {}
    for path in extra_files:
        with open(path, encoding="utf-8") as f:
            definitions.update(json.load(f))
    definitions.update({node_id: definition_of(cls) for node_id, cls in classes.items()})
    return definitions


def input_spec(definition: dict[str, Any], name: str) -> tuple[Any, dict[str, Any]] | None:
    for section in ("required", "optional"):
        entry = definition.get("input", {}).get(section, {}).get(name)
        if entry is not None:
            kind = entry[0]
            options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            return kind, options
    return None


def is_widget(kind: Any, options: dict[str, Any]) -> bool:
    if options.get("forceInput") or options.get("rawLink"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def has_control_widget(name: str, kind: Any, options: dict[str, Any]) -> bool:
    """INT (or combo) widgets followed by the frontend's fixed/increment/decrement/randomize value."""
    if options.get("control_after_generate"):
        return True
    return kind == "INT" and name in ("seed", "noise_seed")


def widget_layout(definition: dict[str, Any]) -> list[tuple[str | None, str]]:
    """Positions of ``widgets_values``: (input name, role) with role 'value', 'control' or 'ui' (frontend-only)."""
    layout: list[tuple[str | None, str]] = []
    order = definition.get("input_order", {})
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = input_spec(definition, name)
            if spec is None or not is_widget(*spec):
                continue
            kind, options = spec
            layout.append((name, "value"))
            if has_control_widget(name, kind, options):
                layout.append((name, "control"))
            if options.get("image_upload") or options.get("video_upload") or options.get("audio_upload"):
                layout.append((None, "ui"))  # the upload button's own value
    return layout
