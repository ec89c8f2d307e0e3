"""Python API of the headless runner.

    from diffusers_stages.runner.api import Runner
    runner = Runner(models_dir="models", output_dir="output")
    files = runner.run("workflows/sd15_txt2img.json", sets=["Load Diffusers Model.model=diffusers/my-model"])

One Runner keeps its node cache between calls, so repeated runs do not reload models.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from .. import host
from ..nodes import NODE_CLASS_MAPPINGS
from . import run_manifest
from .batch import Batch, plan_runs, resolve_sets
from .core_nodes import CORE_NODE_CLASSES, Folders
from .execute import Executor, WorkflowError
from .node_defs import input_spec, load_definitions
from .servers import ComfyServer, ServerGone, missing_node_types, run_on_servers
from .workflow import Workflow, load, parse_set

log = logging.getLogger("diffusers_stages.runner")
_CORE_NAMES = os.path.join(os.path.dirname(__file__), "core_node_names.txt")


@functools.lru_cache(maxsize=1)
def _core_node_names() -> frozenset[str]:
    with open(_CORE_NAMES, encoding="utf-8") as f:
        return frozenset(line.strip() for line in f if line.strip() and not line.startswith("#"))


def _pack_of(kind: str, named_in_file: str | None) -> str:
    if kind in _core_node_names():
        return "ComfyUI core (no headless version in this pack)"
    return named_in_file or "an unknown custom node pack"


class Runner:
    def __init__(self, models_dir: str | None = None, input_dir: str | None = None, output_dir: str | None = None,
                 object_info: tuple[str, ...] = (), cache_budget: int | None = None):
        """``cache_budget``: bytes that loaded models and other node outputs may hold across runs (default: half
        the machine's memory, or ``DIFFUSERS_STAGES_CACHE_GB``); least recently used outputs go first."""
        if models_dir:
            host.set_models_dir(os.path.abspath(models_dir))
        Folders.input = os.path.abspath(input_dir or Folders.input)
        Folders.output = os.path.abspath(output_dir or Folders.output)
        self.classes = {**CORE_NODE_CLASSES, **NODE_CLASS_MAPPINGS}
        self.definitions = load_definitions(self.classes, object_info)
        self.executor = Executor(self.classes, cache_budget=cache_budget)
        self.history: list = []  # RunResult of every run, oldest first

    def load(self, path: str) -> Workflow:
        """Read and convert a workflow; refuse it (before anything runs) if it needs nodes we do not have."""
        workflow = load(path, self.definitions)
        problems = self.executor.shape_problems(workflow.prompt)
        if problems:
            raise WorkflowError(problems)
        for warning in workflow.warnings:
            log.warning("warning: %s", warning)
        unknown = {node["class_type"] for node in workflow.prompt.values()} - set(self.classes)
        self.executor.packs = {kind: _pack_of(kind, workflow.missing.get(kind)) for kind in unknown}
        return workflow

    def input_names(self, class_type: str) -> list[str] | None:
        definition = self.definitions.get(class_type)
        if definition is None:
            return None
        return [name for section in ("required", "optional") for name in definition.get("input", {}).get(section, {})]

    def model_files(self, prompts: list[dict[str, Any]]) -> list[str]:
        """The model files and folders the loader nodes of these prompts read."""
        paths = []
        for prompt in prompts:
            for nid in self.executor.needed_nodes(prompt):
                cls = self.classes.get(prompt[nid]["class_type"])
                if hasattr(cls, "model_files"):
                    paths.extend(cls.model_files(prompt[nid].get("inputs", {})))
        return paths

    def input_options(self, class_type: str, name: str) -> dict[str, Any]:
        spec = input_spec(self.definitions.get(class_type, {}), name)
        return spec[1] if spec else {}

    def run(self, path: str, sets: list[str] = (), repeat: int = 1, batch: str | None = None,
            seed: int | None = None, servers: list[str] = ()) -> list[str]:
        """Run a workflow file; returns the files written. Batches (repeat > 1 or @file lists) are resumable.
        ``servers``: ComfyUI server URLs to run the planned batch on instead of this process (``runner/servers``)."""
        if servers:
            return self._run_on_servers(path, sets, repeat, batch, seed, servers)
        workflow = self.load(path)
        assignments = resolve_sets(workflow, [parse_set(item) for item in sets], self.input_names)
        runs = plan_runs(workflow, assignments, repeat, self.input_options, seed)
        self._refuse_problems(runs)  # before anything runs or is written
        if len(runs) == 1 and batch is None:
            return self._run_once(runs[0], workflow, Folders.output)
        name = batch or os.path.splitext(os.path.basename(path))[0]
        request = {"workflow": workflow.prompt, "sets": list(sets), "repeat": repeat, "seed": seed}
        with Batch(os.path.join(Folders.output, name), runs, request, self.model_files) as plan:
            if plan.runs is not runs:  # a resumed batch runs the prompts it planned then
                self._refuse_problems(plan.runs)
            plan.describe(run_manifest.for_batch(plan.runs, self.classes, self.model_files))
            done = plan.finished()
            written = [os.path.join(plan.folder, entry["folder"], f) for entry in done.values()
                       for f in entry["files"]]
            if done:
                log.warning("batch %s: resuming, %d of %d runs already finished", name, len(done), len(plan.runs))
            for index, prompt in enumerate(plan.runs):
                if index in done:
                    continue
                folder = plan.prepare(index)
                files = self._run_once(prompt, workflow, folder, f"run {index + 1}/{len(plan.runs)}")
                plan.record(index, [os.path.relpath(f, folder) for f in files])
                written.extend(files)
        return written

    def _run_on_servers(self, path, sets, repeat, batch, seed, urls) -> list[str]:
        """The planned batch, each run queued on one of the ComfyUI servers that answer and have its node types
        (which any pack may provide: the servers' own definitions convert the workflow)."""
        clients, problems = [], []
        for url in urls:
            client = ComfyServer(url)
            try:
                clients.append((client, client.node_types()))
            except ServerGone as error:
                problems.append(str(error))
        if not clients:
            raise WorkflowError([*problems, "no server answers; nothing was run"])
        node_info = clients[0][1]
        self.definitions = {**node_info, **self.definitions}  # other packs' nodes, as the servers define them
        workflow = load(path, self.definitions)
        assignments = resolve_sets(workflow, [parse_set(item) for item in sets], self.input_names)
        runs = plan_runs(workflow, assignments, repeat, self.input_options, seed)
        usable = []
        for client, info in clients:
            missing = missing_node_types(runs[0], info)
            if missing:
                packs = sorted({"Diffusers Stages" if kind in NODE_CLASS_MAPPINGS else
                                _pack_of(kind, workflow.missing.get(kind)) for kind in missing})
                problems.append(f"{client} lacks the node types {', '.join(missing)} ({', '.join(packs)}): install "
                                "them there")
            else:
                usable.append(client)
        for problem in problems:
            log.warning("warning: %s", problem)
        if not usable:
            raise WorkflowError([*problems, "no server can run this workflow; nothing was run"])
        name = batch or os.path.splitext(os.path.basename(path))[0]
        request = {"workflow": workflow.prompt, "sets": list(sets), "repeat": repeat, "seed": seed}
        with Batch(os.path.join(Folders.output, name), runs, request) as plan:
            plan.describe({"servers": [client.url for client in usable],
                           "runs": [{"run": i + 1, "seeds": run_manifest.seeds(p)} for i, p in enumerate(plan.runs)]})

            def extra_for(prompt):
                ui = workflow.ui_for(prompt)
                return {"workflow": ui} if ui is not None else {}

            return run_on_servers(plan, plan.runs, usable, node_info, extra_for, Folders.input)

    def _refuse_problems(self, prompts: list[dict[str, Any]]) -> None:
        """Every problem of every prompt, before anything runs."""
        for prompt in prompts:
            problems = self.executor.check(prompt)
            if problems:
                raise WorkflowError(problems)

    def _run_once(self, prompt, workflow: Workflow, output_folder: str, label: str = "run") -> list[str]:
        ui = workflow.ui_for(prompt)
        extra = {"workflow": ui} if ui is not None else {}
        extra[run_manifest.PNG_KEY] = run_manifest.for_run(prompt, self.classes, self.model_files)
        previous, Folders.output = Folders.output, output_folder
        started = time.perf_counter()
        try:
            result = self.executor.run(prompt, extra, checked=True)  # run() checked every planned prompt
        finally:
            Folders.output = previous
        self.history.append(result)
        files = [os.path.join(output_folder, image.get("subfolder", ""), image["filename"])
                 for ui in result.ui.values() for image in ui.get("images", [])]
        log.info("%s: %d nodes run, %d cached, %.2f s, wrote %s", label, len(result.executed), len(result.cached),
                 time.perf_counter() - started, ", ".join(files) or "nothing")
        return files
