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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import fingerprints
from .execute import WorkflowError
from .files import write_json, write_text
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


def resolve_sets(workflow: Workflow, sets: list[tuple[str, str, str]],
                 input_names: Callable[[str], list[str] | None] = lambda class_type: None) -> list[Assignment]:
    """``input_names(class_type)``: the inputs a node type declares (None: unknown type, not checked)."""
    assignments = []
    for node_key, name, text in sets:
        node = find_node(workflow.prompt, node_key)
        names = input_names(workflow.prompt[node]["class_type"])
        if names is not None and name not in names:
            raise WorkflowError([f"--set {node_key}.{name}: node {node} ({workflow.prompt[node]['class_type']}) has "
                                 f"no input '{name}'; its inputs are: {', '.join(names)}"])
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
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise WorkflowError([f"--repeat {repeat}: the number of runs must be 1 or more"])
    lines = per_list.pop() if per_list else 1
    total = lines * repeat
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
    """A batch folder, locked by this process while it is open (``close`` releases it)."""

    def __init__(self, folder: str, runs: list[dict[str, Any]], request: Any,
                 model_files: Callable[[list[dict[str, Any]]], list[str]] = lambda runs: []):
        """``request``: what the user asked for (workflow, settings); the same request resumes the batch.
        ``model_files(runs)``: the model files and folders those prompts read, fingerprinted in the plan."""
        self.folder = folder
        self.plan_path = os.path.join(folder, "batch.json")
        self.manifest_path = os.path.join(folder, "manifest.jsonl")
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()
        os.makedirs(folder, exist_ok=True)
        self._lock = BatchLock(folder)
        try:
            self._open(runs, fingerprint, model_files)
        except BaseException:
            self.close()
            raise

    def _open(self, runs, fingerprint: str, model_files) -> None:
        if os.path.isfile(self.plan_path):
            try:
                with open(self.plan_path, encoding="utf-8") as f:
                    plan = json.load(f)
            except (OSError, ValueError) as error:
                raise WorkflowError([f"{self.plan_path} is damaged ({error}); remove the folder {self.folder} to "
                                     "start the batch again, or choose another --batch name"]) from error
            if plan.get("fingerprint") != fingerprint:
                raise WorkflowError([f"{self.folder} holds another batch (different workflow or settings); choose "
                                     "another --batch name or remove that folder"])
            changed = fingerprints.changed(plan.get("models", {}))
            if changed:
                raise WorkflowError([f"batch {self.folder}: a model file changed since the batch was planned, so a "
                                     f"resume would mix weights: {'; '.join(changed)}. Put the original file back, "
                                     "or start a new batch (another --batch name)"])
            self.runs = plan["runs"]  # resume the planned prompts (randomized seeds included)
            self._heal_manifest()
        else:
            self.runs = runs
            models = {path: fingerprints.fingerprint(path) for path in sorted(set(model_files(runs)))}
            write_json(self.plan_path, {"fingerprint": fingerprint, "runs": runs, "models": models})

    def describe(self, manifest: dict[str, Any]) -> None:
        """Write the batch's run manifest (``provenance.json``: versions, device, model files, every run's seeds)
        beside its plan; a resumed batch keeps the one written when it started unless it has none."""
        path = os.path.join(self.folder, "provenance.json")
        if not os.path.isfile(path):
            write_json(path, manifest)

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _entries(self) -> tuple[list[dict[str, Any]], bool]:
        """The manifest's entries, and whether it held lines that are not (a line cut short by a kill of an
        older version: that run is not finished)."""
        entries, damaged = [], False
        if os.path.isfile(self.manifest_path):
            with open(self.manifest_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        entries.append({"run": int(entry["run"]), **entry})
                    except (ValueError, KeyError, TypeError):
                        damaged = damaged or bool(line.strip())
        return entries, damaged

    def _heal_manifest(self) -> None:
        entries, damaged = self._entries()
        if damaged:
            self._write_manifest(entries)

    def _write_manifest(self, entries: list[dict[str, Any]]) -> None:
        write_text(self.manifest_path, "".join(json.dumps(entry) + "\n" for entry in entries))

    def finished(self) -> dict[int, dict[str, Any]]:
        return {entry["run"]: entry for entry in self._entries()[0]}

    def run_folder(self, index: int) -> str:
        return os.path.join(self.folder, f"run_{index + 1:05}")

    def prepare(self, index: int) -> str:
        folder = self.run_folder(index)
        if os.path.isdir(folder):
            shutil.rmtree(folder)  # left by a run that did not finish
        os.makedirs(folder)
        return folder

    def record(self, index: int, files: list[str]) -> None:
        """The run is finished: the manifest is rewritten whole with its line (temp file + rename), so a kill
        leaves the old manifest or the new one, never half a line."""
        entries = [entry for entry in self._entries()[0] if entry["run"] != index]
        self._write_manifest([*entries, {"run": index, "folder": os.path.basename(self.run_folder(index)),
                                         "files": files}])


class BatchLock:
    """An exclusive lock on a batch folder, so two processes never run the same batch. The operating system
    drops it when the process ends, however it ends."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, ".lock")
        self._file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open while the batch runs
        try:
            _lock_exclusive(self._file)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise WorkflowError([f"batch {folder} is being run by {holder}; wait for it to finish, or use another "
                                 "--batch name"]) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"process {os.getpid()}")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()


def _lock_exclusive(file) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
