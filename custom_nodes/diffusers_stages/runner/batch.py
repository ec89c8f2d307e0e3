"""Batches: N runs of one workflow, seeds moved on as the ComfyUI frontend moves them, resumable.

The whole batch is planned before the first run (every run's prompt, seeds included) and the
plan is written next to the outputs, so a batch killed half-way and started again runs the
same prompts. Each run writes into its own folder ``run_NNNNN/``; when it has finished, a line
is appended to ``manifest.jsonl``. A restart skips the runs in the manifest and clears any
half-written folder before running it again: exactly one output set per run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from typing import Any

from .execute import WorkflowError
from .workflow import Workflow, find_node, parse_value

RANDOM_MAX = 2 ** 50  # the frontend's cap for randomized seeds


@dataclass
class Assignment:
    node: str
    input: str
    values: list[Any]  # one value, or one per run (from @file)


def next_value(value: int, mode: str, options: dict[str, Any], rng: random.Random) -> int:
    """The frontend's control_after_generate step for a number widget."""
    low, high = options.get("min", 0), min(options.get("max", RANDOM_MAX), RANDOM_MAX)
    step = options.get("step", 1) or 1
    if mode == "increment":
        value += step
    elif mode == "decrement":
        value -= step
    elif mode == "randomize":
        value = int(rng.random() * (high - low) / step) * step + low
    return max(low, min(high, value))


def resolve_sets(workflow: Workflow, sets: list[tuple[str, str, str]]) -> list[Assignment]:
    assignments = []
    for node_key, name, text in sets:
        node = find_node(workflow.prompt, node_key)
        if text.startswith("@"):
            path = text[1:]
            if not os.path.isfile(path):
                raise WorkflowError([f"--set {node_key}.{name}: file '{path}' does not exist"])
            with open(path, encoding="utf-8") as f:
                values = [line.rstrip("\n") for line in f if line.strip()]
            if not values:
                raise WorkflowError([f"--set {node_key}.{name}: '{path}' has no lines"])
        else:
            values = [parse_value(text)]
        assignments.append(Assignment(node, name, values))
    return assignments


def plan_runs(workflow: Workflow, assignments: list[Assignment], repeat: int, input_options, seed: int | None = None):
    """Every run's API prompt. ``input_options(class_type, input) -> options dict`` gives widget min/max/step."""
    per_list = {len(a.values) for a in assignments if len(a.values) > 1}
    if len(per_list) > 1:
        raise WorkflowError([f"--set lists from files have different lengths ({sorted(per_list)}); give them the "
                             "same number of lines"])
    lines = per_list.pop() if per_list else 1
    total = lines * max(repeat, 1)
    rng = random.Random(seed)
    prompt = copy.deepcopy(workflow.prompt)
    runs = []
    for index in range(total):
        for a in assignments:
            prompt[a.node]["inputs"][a.input] = a.values[index % len(a.values)]
        runs.append(copy.deepcopy(prompt))
        for (node, name), mode in workflow.controls.items():  # applied after queueing, as the frontend does
            value = prompt.get(node, {}).get("inputs", {}).get(name)
            if isinstance(value, int) and not isinstance(value, bool) and mode != "fixed":
                options = input_options(prompt[node]["class_type"], name)
                prompt[node]["inputs"][name] = next_value(value, mode, options, rng)
    return runs


class Batch:
    def __init__(self, folder: str, runs: list[dict[str, Any]], request: Any):
        """``request``: what the user asked for (workflow, settings); the same request resumes the batch."""
        self.folder = folder
        self.plan_path = os.path.join(folder, "batch.json")
        self.manifest_path = os.path.join(folder, "manifest.jsonl")
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()
        os.makedirs(folder, exist_ok=True)
        if os.path.isfile(self.plan_path):
            with open(self.plan_path, encoding="utf-8") as f:
                plan = json.load(f)
            if plan["fingerprint"] != fingerprint:
                raise WorkflowError([f"{folder} holds another batch (different workflow or settings); choose "
                                     "another --batch name or remove that folder"])
            self.runs = plan["runs"]  # resume the planned prompts (randomized seeds included)
        else:
            self.runs = runs
            with open(self.plan_path + ".tmp", "w", encoding="utf-8") as f:
                json.dump({"fingerprint": fingerprint, "runs": runs}, f)
            os.replace(self.plan_path + ".tmp", self.plan_path)

    def finished(self) -> dict[int, dict[str, Any]]:
        done = {}
        if os.path.isfile(self.manifest_path):
            with open(self.manifest_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by a kill: that run is not finished
                    done[entry["run"]] = entry
        return done

    def run_folder(self, index: int) -> str:
        return os.path.join(self.folder, f"run_{index + 1:05}")

    def prepare(self, index: int) -> str:
        folder = self.run_folder(index)
        if os.path.isdir(folder):
            shutil.rmtree(folder)  # left by a run that did not finish
        os.makedirs(folder)
        return folder

    def record(self, index: int, files: list[str]) -> None:
        line = json.dumps({"run": index, "folder": os.path.basename(self.run_folder(index)), "files": files})
        with open(self.manifest_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
