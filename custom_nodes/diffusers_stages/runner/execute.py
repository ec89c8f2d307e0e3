"""In-process execution of an API-format prompt with ComfyUI's semantics.

* Only output nodes and their ancestors run, in topological order (ties in prompt order).
* Everything is checked before anything runs: node types, links and their types, required
  inputs, combo values, min/max, and each node's VALIDATE_INPUTS.
* List semantics: a node receiving a list output is called once per element (shorter
  lists repeat their last element) unless it declares INPUT_IS_LIST.
* Results are cached by input signature, as ComfyUI's classic cache: a node whose inputs and
  ancestors did not change between two runs is not run again, so models stay loaded across
  repeated runs. Output nodes always run (a batch wants every run's files).
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from ..engine.errors import InputError, StageError
from .cache import OutputCache
from .values import Refused, coerce, range_problem

log = logging.getLogger("diffusers_stages.runner")


class WorkflowError(ValueError):
    """A workflow that cannot run; ``problems`` lists every reason, each naming node and input."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the workflow cannot run:\n  - " + "\n  - ".join(problems))


class NodeFailure(WorkflowError):
    """A node refused its input (or failed) while running; says which node. ``__cause__`` keeps the original."""

    def __init__(self, label: str, message: str):
        self.problems = [f"{label}: {message}"]
        ValueError.__init__(self, self.problems[0])


def failure(label: str, error: BaseException) -> NodeFailure:
    """The one message a user sees for an exception raised inside a node."""
    if isinstance(error, StageError):
        return NodeFailure(label, str(error))
    if isinstance(error, InputError):  # the headless core nodes name the input, not the node
        return NodeFailure(label, f"{error.input_name}: {error.problem} Fix: {error.fix}")
    if isinstance(error, RecursionError | MemoryError):
        return NodeFailure(label, f"{type(error).__name__}: the input is too large or too deeply nested to process.")
    detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    return NodeFailure(label, f"unexpected {type(error).__name__}{': ' + detail if detail else ''}. "
                              "Run with --debug for the traceback, and please report it with the workflow.")


def _linked_node(prompt: dict[str, Any], value: Any) -> tuple[str, dict[str, Any]] | None:
    """(class_type, inputs) of the node a link comes from; None when ``value`` is not a link."""
    if not _is_link(value) or value[0] not in prompt:
        return None
    node = prompt[value[0]]
    return node["class_type"], node.get("inputs", {})


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)

def _types_compatible(produced: str, wanted: Any) -> bool:
    if isinstance(wanted, list):  # a combo driven by a link
        return produced in ("COMBO", "*") or produced.startswith("COMBO")
    if "*" in (produced, wanted):
        return True
    return bool(set(str(produced).split(",")) & set(str(wanted).split(",")))

@dataclass
class RunResult:
    ui: dict[str, dict[str, Any]] = field(default_factory=dict)  # output node id -> its "ui" dict
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)

class Executor:
    def __init__(self, classes: dict[str, type], packs: dict[str, str] | None = None,
                 cache_budget: int | None = None):
        """``cache_budget``: bytes of tensors that node outputs kept across prompts may hold (default: half the
        machine's memory); the outputs the latest prompt used are always kept."""
        self.classes = classes
        self.packs = packs or {}  # node type -> pack name, for "missing node" messages
        self._instances: dict[tuple[str, str], Any] = {}
        self.cache = OutputCache(cache_budget)

    # ---- checks ------------------------------------------------------------------------------------
    def _label(self, prompt, node_id: str) -> str:
        node = prompt[node_id]
        title = (node.get("_meta") or {}).get("title") or node.get("class_type")
        return f"node {node_id} ({title})"

    def needed_nodes(self, prompt: dict[str, Any]) -> list[str]:
        outputs = [nid for nid, node in prompt.items()
                   if getattr(self.classes.get(node.get("class_type")), "OUTPUT_NODE", False)]
        needed, stack = set(), list(outputs)
        while stack:
            nid = stack.pop()
            if nid in needed or nid not in prompt:
                continue
            needed.add(nid)
            stack.extend(v[0] for v in prompt[nid].get("inputs", {}).values() if _is_link(v))
        return [nid for nid in prompt if nid in needed]

    def check(self, prompt: dict[str, Any]) -> list[str]:
        """All problems that would stop the run (empty if it can run). Widget values are coerced to their
        declared types in place (``"7"`` for an INT becomes 7), so the run sees what was checked."""
        problems = self.shape_problems(prompt)
        if problems:
            return problems
        unknown = {}
        for node in prompt.values():
            kind = node.get("class_type")
            if kind not in self.classes:
                unknown.setdefault(kind, self.packs.get(kind, "an unknown custom node pack"))
        if unknown:
            return [f"node type '{kind}' is not available here (it belongs to {pack})" for kind, pack in
                    sorted(unknown.items(), key=lambda item: str(item[0]))]
        needed = self.needed_nodes(prompt)
        if not needed:
            return ["the workflow has no output node (Save Image, Preview Image, …): nothing would run"]
        problems, specs = [], {}  # INPUT_TYPES may scan model folders: once per node type per check
        for nid in needed:
            problems.extend(self._check_node(prompt, nid, specs))
        if not problems:
            try:
                self._order(prompt, needed)
            except WorkflowError as error:
                problems.extend(error.problems)
        return problems

    @staticmethod
    def shape_problems(prompt: Any) -> list[str]:
        """An API prompt is an object of nodes, each an object with a class_type and an ``inputs`` object."""
        if not isinstance(prompt, dict) or not prompt:
            return ["the prompt is not an object of nodes (an API-format prompt maps node ids to nodes)"]
        problems = []
        for nid, node in prompt.items():
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                problems.append(f"node {nid}: not a node (an object with a 'class_type' string and 'inputs')")
            elif not isinstance(node.get("inputs", {}), dict):
                problems.append(f"node {nid} ({node['class_type']}): 'inputs' is "
                                f"{type(node['inputs']).__name__}, not an object of input names to values")
        return problems

    def _check_node(self, prompt, nid: str, specs: dict[str, dict]) -> list[str]:
        node = prompt[nid]
        cls = self.classes[node["class_type"]]
        if node["class_type"] not in specs:
            specs[node["class_type"]] = cls.INPUT_TYPES()
        spec = specs[node["class_type"]]
        inputs = node.setdefault("inputs", {})
        label = self._label(prompt, nid)
        problems = []
        validate = getattr(cls, "VALIDATE_INPUTS", None)

        validated_names = set(inspect.signature(validate).parameters) if validate else set()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for name, entry in declared.items():
            kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
            if name not in inputs:
                if name in spec.get("required", {}):
                    problems.append(f"{label}: required input '{name}' is missing")
                continue
            value = inputs[name]
            if _is_link(value):
                source = prompt.get(value[0])
                if source is None:
                    problems.append(f"{label}: input '{name}' is linked to node {value[0]}, which does not exist")
                    continue
                source_cls = self.classes.get(source.get("class_type"))
                produced = source_cls.RETURN_TYPES[value[1]] if source_cls and value[1] < len(
                    source_cls.RETURN_TYPES) else None
                if produced is None:
                    problems.append(f"{label}: input '{name}' is linked to output {value[1]} of node {value[0]}, "
                                    "which has no such output")
                elif not _types_compatible(produced, kind):
                    problems.append(f"{label}: input '{name}' wants {kind if isinstance(kind, str) else 'a choice'} "
                                    f"but is linked to a {produced} output of {self._label(prompt, value[0])}")
                continue
            try:
                value = inputs[name] = coerce(kind, value)
            except Refused as refused:
                problems.append(f"{label}: input '{name}' {refused}")
                continue
            if name in validated_names:
                continue
            if isinstance(kind, list) and kind and not any(value == choice for choice in kind):
                shown = ", ".join(map(str, kind[:8])) + (", …" if len(kind) > 8 else "")
                problems.append(f"{label}: '{value}' is not a choice of input '{name}' (choices: {shown})")
            if kind in ("INT", "FLOAT"):
                out_of_range = range_problem(value, options)
                if out_of_range:
                    problems.append(f"{label}: input '{name}' {out_of_range}")
        if validate and not problems:
            args = {k: (None if _is_link(inputs.get(k)) else inputs.get(k)) for k in validated_names if k in declared}
            try:
                verdict = validate(**args)
            except Exception as error:  # a node's own check must not crash the whole check
                verdict = failure(label, error).problems[0][len(label) + 2:]
            if verdict is not True:
                problems.append(f"{label}: {verdict if isinstance(verdict, str) else 'inputs were refused'}")
        check_links = getattr(cls, "CHECK_LINKED_INPUTS", None)
        if check_links and not problems:  # checks that need a value from the node an input is linked to
            verdict = check_links(inputs, lambda name: _linked_node(prompt, inputs.get(name)))
            if verdict is not True:
                problems.append(f"{label}: {verdict}")
        return problems

    def _order(self, prompt, needed: list[str]) -> list[str]:
        pending = {nid: {v[0] for v in prompt[nid].get("inputs", {}).values() if _is_link(v)} for nid in needed}
        order = []
        while pending:
            ready = [nid for nid, deps in pending.items() if not deps - set(order)]
            if not ready:
                raise WorkflowError([f"the links between nodes {', '.join(sorted(pending))} form a cycle"])
            order.append(ready[0])
            del pending[ready[0]]
        return order

    # ---- running -----------------------------------------------------------------------------------
    def run(self, prompt: dict[str, Any], extra_pnginfo: dict[str, Any] | None = None,
            checked: bool = False) -> RunResult:
        """Run ``prompt``; ``checked``: the caller has already run ``check`` on it."""
        problems = [] if checked else self.check(prompt)
        if problems:
            raise WorkflowError(problems)
        needed = self.needed_nodes(prompt)
        order = self._order(prompt, needed)
        signatures: dict[str, str] = {}
        results: dict[str, list[list[Any]]] = {}
        outcome = RunResult()
        for nid in order:
            node = prompt[nid]
            cls = self.classes[node["class_type"]]
            signatures[nid] = self._signature(node, signatures)
            output_node = getattr(cls, "OUTPUT_NODE", False)
            cached = None if output_node else self.cache.get(signatures[nid])
            if cached is not None:
                results[nid] = cached
                outcome.cached.append(nid)
            else:
                try:
                    results[nid], ui = self._call(prompt, nid, cls, results, extra_pnginfo)
                except KeyboardInterrupt:
                    raise
                except Exception as error:
                    raise failure(self._label(prompt, nid), error) from error
                outcome.executed.append(nid)
                if ui is not None:
                    outcome.ui[nid] = ui
                if not output_node:
                    self.cache.put(signatures[nid], results[nid])
        # outputs of earlier prompts stay while they fit the budget (least recently used go first), so two models
        # used in turn are not loaded again at every switch
        self.cache.trim(keep={signatures[nid] for nid in order})
        return outcome

    @staticmethod
    def _signature(node, signatures: dict[str, str]) -> str:
        parts = {}
        for name, value in sorted(node.get("inputs", {}).items()):
            parts[name] = ["link", signatures[value[0]], value[1]] if _is_link(value) else value
        return json.dumps([node["class_type"], parts], sort_keys=True, default=str)

    def _instance(self, nid: str, cls):
        key = (nid, cls.__name__)
        if key not in self._instances:
            self._instances[key] = cls()
        return self._instances[key]

    def _call(self, prompt, nid, cls, results, extra_pnginfo):
        node = prompt[nid]
        spec = cls.INPUT_TYPES()
        values: dict[str, list[Any]] = {}
        for name, value in node.get("inputs", {}).items():
            if name not in {**spec.get("required", {}), **spec.get("optional", {})}:
                continue
            values[name] = results[value[0]][value[1]] if _is_link(value) else [value]
        hidden = {"PROMPT": prompt, "EXTRA_PNGINFO": extra_pnginfo or {}, "UNIQUE_ID": nid}
        for name, kind in spec.get("hidden", {}).items():
            if kind in hidden:
                values[name] = [hidden[kind]]
        function = getattr(self._instance(nid, cls), cls.FUNCTION)
        if getattr(cls, "INPUT_IS_LIST", False):
            calls = [{k: v for k, v in values.items()}]
        else:
            count = max((len(v) for v in values.values()), default=1)
            calls = [{k: v[min(i, len(v) - 1)] for k, v in values.items() if v} for i in range(count)]
        output_is_list = getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES))
        outputs: list[list[Any]] = [[] for _ in cls.RETURN_TYPES]
        ui: dict[str, list[Any]] | None = None
        for kwargs in calls:
            returned = function(**kwargs)
            if isinstance(returned, dict):
                if returned.get("ui"):
                    ui = ui or {}
                    for key, items in returned["ui"].items():
                        ui.setdefault(key, []).extend(items)
                returned = returned.get("result", ())
            for slot, value in enumerate(returned or ()):
                if output_is_list[slot]:
                    outputs[slot].extend(value)
                else:
                    outputs[slot].append(value)
        return outputs, ui
