"""The run manifest: beside every batch (provenance.json) and in every PNG (a diffusers_stages text chunk):
pack and node versions, torch / diffusers / transformers versions, the device, every model file's name, size and
SHA-256 (hashed once per process), and the seeds."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image

from diffusers_stages.nodes import NODE_CLASS_MAPPINGS
from diffusers_stages.runner import fingerprints
from diffusers_stages.runner.api import Runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(REPO, "workflows", "sd15_txt2img.json")


def tiny_copy(models_root, name: str) -> str:
    """A copy of the tiny SD1.5 checkpoint under a new name (no digest of it is cached anywhere yet)."""
    path = os.path.join(models_root["root"], "checkpoints", name)
    shutil.copyfile(models_root["sd1_single"], path)
    return path


def batch_of_three(models_root, tmp_path, checkpoint: str):
    runner = Runner(models_root["root"], str(tmp_path / "input"), str(tmp_path / "output"))
    sets = [f"Load Diffusers Model.model=checkpoints/{checkpoint}", "Empty Latent (Diffusers).width=64",
            "Empty Latent (Diffusers).height=64", "Denoise (Diffusers).steps=2"]
    files = runner.run(WORKFLOW, sets=sets, repeat=3, batch="audited")
    return files, tmp_path / "output" / "audited"


def test_batch_and_every_png_carry_the_run_manifest(models_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSERS_STAGES_CACHE_DIR", str(tmp_path / "cache"))
    path = tiny_copy(models_root, "tiny-sd15-audited.safetensors")
    files, folder = batch_of_three(models_root, tmp_path, "tiny-sd15-audited.safetensors")
    with open(folder / "provenance.json") as f:
        manifest = json.load(f)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert manifest["pack"] == {"name": "diffusers-stages", "version": "0.1.0"}
    assert manifest["torch"] == torch.__version__ and manifest["device"]["type"] == "cpu"
    for name in ("diffusers", "transformers"):
        assert manifest[name] == importlib.metadata.version(name)
    used = {"DS_LoadModel", "DS_TextEncode", "DS_CFGGuider", "DS_Scheduler", "DS_EmptyLatent", "DS_Denoise",
            "DS_VAEDecode"}
    assert manifest["nodes"] == {kind: NODE_CLASS_MAPPINGS[kind].VERSION for kind in sorted(used)}
    assert manifest["models"] == [{"name": "tiny-sd15-audited.safetensors", "path": path,
                                   "size": os.path.getsize(path), "sha256": digest}]
    seeds = [run["seeds"] for run in manifest["runs"]]
    assert len(seeds) == 3 and all(list(s.values())[0]["class_type"] == "DS_Denoise" for s in seeds)
    assert len({list(s.values())[0]["seed"] for s in seeds}) == 3  # the workflow's seed control moved it

    assert len(files) == 3
    for index, file in enumerate(sorted(files)):
        with Image.open(file) as image:
            own = json.loads(image.text["diffusers_stages"])
            assert {"prompt", "workflow"} <= set(image.text)  # still a ComfyUI picture
        assert {key: own[key] for key in ("pack", "torch", "diffusers", "transformers", "device", "models")} == {
            key: manifest[key] for key in ("pack", "torch", "diffusers", "transformers", "device", "models")}
        assert own["seeds"] == manifest["runs"][index]["seeds"]


def test_each_model_file_is_hashed_once_per_process(models_root, tmp_path, monkeypatch):
    """Three runs, each writing a manifest with the checkpoint's digest, and the batch plan: one read of the file.
    A second batch in the same process reads it no more."""
    monkeypatch.setenv("DIFFUSERS_STAGES_CACHE_DIR", str(tmp_path / "cache"))
    path = tiny_copy(models_root, "tiny-sd15-hashed-once.safetensors")
    batch_of_three(models_root, tmp_path, "tiny-sd15-hashed-once.safetensors")
    assert fingerprints.hashed_files.count(os.path.abspath(path)) == 1
    batch_of_three(models_root, tmp_path / "again", "tiny-sd15-hashed-once.safetensors")
    assert fingerprints.hashed_files.count(os.path.abspath(path)) == 1


def test_manifest_of_a_single_run_is_in_its_png(models_root, tmp_path):
    runner = Runner(models_root["root"], str(tmp_path / "input"), str(tmp_path / "output"))
    (tmp_path / "input").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "input" / "x.png")
    files = runner.run(WORKFLOW, sets=["Load Diffusers Model.model=checkpoints/tiny-sd15.safetensors",
                                       "Empty Latent (Diffusers).width=64", "Empty Latent (Diffusers).height=64",
                                       "Denoise (Diffusers).steps=2", "Denoise (Diffusers).seed=77"])
    with Image.open(files[0]) as image:
        manifest = json.loads(image.text["diffusers_stages"])
    assert [entry["seed"] for entry in manifest["seeds"].values()] == [77]
    assert manifest["models"][0]["name"] == "tiny-sd15.safetensors"
