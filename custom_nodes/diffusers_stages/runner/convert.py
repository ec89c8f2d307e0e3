"""UI-format workflow (what the ComfyUI editor saves, version 0.4) -> API-format prompt.

What the editor does when it queues a workflow, done here from the node definitions:
* positional ``widgets_values`` mapped to input names, skipping the frontend's
  control_after_generate value after seed-like INTs (kept aside for batch seed control)
  and frontend-only values such as Load Image's upload button;
* links resolved through Reroute nodes, PrimitiveNode values copied into their targets,
  Note/MarkdownNote dropped, muted nodes (mode 2) dropped, bypassed nodes (mode 4)
  replaced by a pass-through of their first input of the same type;
* subgraphs flattened into their inner nodes, ids joined with ':' as ComfyUI does, with
  promoted widget values (``proxyWidgets``) applied to the inner nodes;
* groups ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .node_defs import input_spec, widget_layout

VIRTUAL_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED, BYPASSED = 2, 4
SUBGRAPH_INPUT = -10  # the subgraph's input node in its links (outputs are read from definition['outputs'])
CONTROL_MODES = ("fixed", "increment", "decrement", "randomize")


class ConversionError(ValueError):
    pass


@dataclass
class Conversion:
    prompt: dict[str, dict[str, Any]]
    controls: dict[tuple[str, str], str] = field(default_factory=dict)  # (node id, input) -> fixed/increment/…
    missing: dict[str, str] = field(default_factory=dict)  # node type -> pack it belongs to (as the file says)
    # (node id, input) -> position in that top-level node's widgets_values, to write run values back into the UI
    widget_slots: dict[tuple[str, str], int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what was filled in or guessed, naming the node


@dataclass
class _Link:
    origin: int
    origin_slot: int
    target: int
    target_slot: int
    type: str


def _links(raw_links) -> dict[int, _Link]:
    links = {}
    for link in raw_links or []:
        if isinstance(link, dict):
            links[link["id"]] = _Link(link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                                      link.get("type", "*"))
        elif link:
            links[link[0]] = _Link(link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else "*")
    return links


class _Scope:
    """One graph level: the top level, or the inside of one subgraph instance."""

    def __init__(self, nodes, links, prefix: str, instance=None, parent: _Scope | None = None, definition=None):
        self.nodes = {node["id"]: node for node in nodes}
        self.links = _links(links)
        self.prefix = prefix
        self.instance = instance  # the subgraph instance node in the parent scope
        self.parent = parent
        self.definition = definition

    def api_id(self, node_id) -> str:
        return f"{self.prefix}{node_id}"


def _pack_of(node: dict[str, Any]) -> str:
    properties = node.get("properties") or {}
    return properties.get("cnr_id") or properties.get("aux_id") or "an unknown custom node pack"


def _is_subgraph(node, subgraphs) -> bool:
    return node.get("type") in subgraphs


class Converter:
    def __init__(self, definitions: dict[str, dict[str, Any]]):
        self.definitions = definitions

    def convert(self, workflow: dict[str, Any]) -> Conversion:
        if "nodes" not in workflow or not isinstance(workflow["nodes"], list):
            raise ConversionError("not a UI-format workflow (no 'nodes' list)")
        self.subgraphs = {sg["id"]: sg for sg in (workflow.get("definitions") or {}).get("subgraphs", [])}
        self.result = Conversion({})
        self._convert_scope(_Scope(workflow["nodes"], workflow.get("links"), ""))
        return self.result

    # ---- scopes and nodes ----------------------------------------------------------------------
    def _convert_scope(self, scope: _Scope, overrides: dict[tuple[int, str], Any] | None = None) -> None:
        for node in scope.nodes.values():
            mode = node.get("mode", 0)
            if node.get("type") in VIRTUAL_TYPES or mode in (MUTED, BYPASSED):
                continue
            if _is_subgraph(node, self.subgraphs):
                self._expand_subgraph(scope, node)
                continue
            self._convert_node(scope, node, overrides or {})

    def _expand_subgraph(self, scope: _Scope, instance) -> None:
        definition = self.subgraphs[instance["type"]]
        inner = _Scope(definition.get("nodes", []), definition.get("links"), f"{scope.api_id(instance['id'])}:",
                       instance=instance, parent=scope, definition=definition)
        # Promoted widgets: the instance shows inner widgets; its values win over the inner nodes' own.
        overrides: dict[tuple[int, str], Any] = {}
        proxies = (instance.get("properties") or {}).get("proxyWidgets") or []
        values = instance.get("widgets_values") or []
        for (inner_id, widget_name), value in zip(proxies, values):
            try:
                overrides[(int(inner_id), widget_name)] = value
            except (TypeError, ValueError):
                continue
        self._convert_scope(inner, overrides)

    def _convert_node(self, scope: _Scope, node, overrides) -> None:
        node_type = node["type"]
        api_id = scope.api_id(node["id"])
        definition = self.definitions.get(node_type)
        if definition is None:
            self.result.missing.setdefault(node_type, _pack_of(node))
            self.result.prompt[api_id] = {"class_type": node_type, "inputs": {}, "_meta": {"title": node.get("title")
                                                                                                  or node_type}}
            return
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values")
        layout = widget_layout(definition)
        if isinstance(values, dict):  # some packs save widgets by name
            inputs.update({k: v for k, v in values.items() if input_spec(definition, k)})
        elif isinstance(values, list):
            missing = [name for name, role in layout[len(values):] if role == "value"]
            if missing and not scope.prefix:
                title = node.get("title") or definition.get("display_name") or node_type
                self.result.warnings.append(
                    f"node {api_id} ({title}): the workflow holds {len(values)} widget values, the node has "
                    f"{len(layout)}; {', '.join(missing)} take the default (saved by an older version, or edited)")
            for index, ((name, role), value) in enumerate(zip(layout, values)):
                if role == "value":
                    inputs[name] = value
                    if not scope.prefix:
                        self.result.widget_slots[(api_id, name)] = index
                elif role == "control" and value in CONTROL_MODES:
                    self.result.controls[(api_id, name)] = value
        for name, role in layout:  # saved before the widget existed: the frontend's default
            if role == "value" and name not in inputs:
                default = (input_spec(definition, name) or (None, {}))[1].get("default")
                if default is not None:
                    inputs[name] = default
        for (inner_id, name), value in overrides.items():
            if inner_id == node["id"]:
                inputs[name] = value
        for slot in node.get("inputs") or []:
            link_id = slot.get("link")
            if link_id is None:
                continue
            source = self._resolve(scope, link_id)
            name = slot.get("widget", {}).get("name") if slot.get("widget") else slot["name"]
            if source is None:
                continue  # from a muted node or an unconnected subgraph input: the widget value stays
            if isinstance(source, tuple):
                inputs[name] = [source[0], source[1]]
            else:
                inputs[name] = source.value
                if source.control:
                    self.result.controls[(api_id, name)] = source.control
        self.result.prompt[api_id] = {"class_type": node_type, "inputs": inputs,
                                      "_meta": {"title": node.get("title") or definition.get("display_name",
                                                                                            node_type)}}

    # ---- links -------------------------------------------------------------------------------------
    def _resolve(self, scope: _Scope, link_id, seen: frozenset = frozenset()):
        """Where a link's value comes from: (api node id, slot), a _Literal, or None."""
        link = scope.links.get(link_id)
        if link is None or (scope.prefix, link_id) in seen:
            return None
        seen = seen | {(scope.prefix, link_id)}
        if link.origin == SUBGRAPH_INPUT:
            return self._resolve_subgraph_input(scope, link.origin_slot, seen)
        origin = scope.nodes.get(link.origin)
        if origin is None:
            return None
        return self._resolve_output(scope, origin, link.origin_slot, link.type, seen)

    def _resolve_output(self, scope: _Scope, node, slot: int, link_type: str, seen):
        node_type = node.get("type")
        mode = node.get("mode", 0)
        if node_type == "PrimitiveNode":
            values = node.get("widgets_values") or []
            control = values[1] if len(values) > 1 and values[1] in CONTROL_MODES else None
            return _Literal(values[0], control) if values else None
        if node_type == "Reroute":
            upstream = next((i.get("link") for i in node.get("inputs") or [] if i.get("link") is not None), None)
            return self._resolve(scope, upstream, seen) if upstream is not None else None
        if mode == MUTED:
            return None
        if mode == BYPASSED:
            out_type = _slot_type(node.get("outputs") or [], slot) or link_type
            for inp in node.get("inputs") or []:
                if inp.get("link") is not None and _types_match(inp.get("type"), out_type):
                    return self._resolve(scope, inp["link"], seen)
            return None
        if _is_subgraph(node, self.subgraphs):
            definition = self.subgraphs[node_type]
            inner = _Scope(definition.get("nodes", []), definition.get("links"), f"{scope.api_id(node['id'])}:",
                           instance=node, parent=scope, definition=definition)
            outputs = definition.get("outputs") or []
            if slot >= len(outputs):
                return None
            for link_id in outputs[slot].get("linkIds") or []:
                source = self._resolve(inner, link_id, seen)
                if source is not None:
                    return source
            return None
        return (scope.api_id(node["id"]), slot)

    def _resolve_subgraph_input(self, scope: _Scope, slot: int, seen):
        instance, parent = scope.instance, scope.parent
        if instance is None or parent is None:
            return None
        name = ((scope.definition or {}).get("inputs") or [{}] * (slot + 1))[slot].get("name")
        for inp in instance.get("inputs") or []:
            if inp.get("name") == name and inp.get("link") is not None:
                return self._resolve(parent, inp["link"], seen)
        return None


@dataclass(frozen=True)
class _Literal:
    value: Any
    control: str | None = None


def _slot_type(slots, index: int):
    return slots[index].get("type") if 0 <= index < len(slots) else None


def _types_match(a, b) -> bool:
    if a in (None, "*") or b in (None, "*"):
        return True
    return bool(set(str(a).split(",")) & set(str(b).split(",")))


def is_api_prompt(data: dict[str, Any]) -> bool:
    return bool(data) and all(isinstance(v, dict) and "class_type" in v for v in data.values())

