"""Shipped workflows, the UI->API converter, the headless runner and resumable batches."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from diffusers_stages.nodes import NODE_CLASS_MAPPINGS
from diffusers_stages.runner.api import Runner
from diffusers_stages.runner.convert import Converter
from diffusers_stages.runner.execute import WorkflowError
from diffusers_stages.tiny.demo import tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
EXPECTED = os.path.join(REPO, "tests", "fixtures", "expected_api")
OBJECT_INFO = os.path.join(REPO, "..", "shared", "data", "comfyui-0.8.0-object_info.json")
def tiny_sets(workflow_path: str) -> list[str]:
    """Overrides that run a shipped workflow on the tiny model of its family, small and fast."""
    return [s.replace("demo_input.png", "picture.png").replace("demo_inpaint.png", "masked.png")
            for s in tiny_overrides(workflow_path, 64, steps=3)]


@pytest.fixture()
def runner(models_root, tmp_path):
    inputs = tmp_path / "input"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)).save(inputs / "picture.png")
    alpha = np.full((80, 96), 255, dtype=np.uint8)  # a multiple of 16: Flux Fill's VAE loaded alone does not crop
    alpha[20:50, 16:48] = 0  # Load Image's mask: repaint there
    Image.fromarray(np.dstack([rng.integers(0, 255, (80, 96, 3), dtype=np.uint8), alpha]), "RGBA").save(
        inputs / "masked.png")
    return Runner(models_root["root"], str(inputs), str(tmp_path / "output"))


def test_workflows_folder_is_ui_format_with_thumbnails_and_metadata():
    assert len(WORKFLOWS) >= 5
    for path in WORKFLOWS:
        assert os.path.isfile(path[:-5] + ".jpg"), f"missing thumbnail for {path}"
        with open(path) as f:
            workflow = json.load(f)
        assert workflow["version"] == 0.4 and isinstance(workflow["links"], list)
        for node in workflow["nodes"]:
            properties = node["properties"]
            if node["type"].startswith("DS_"):
                assert properties["cnr_id"] == "diffusers-stages" and properties["ver"]
            if node["type"] == "DS_LoadModel" and node["widgets_values"][0].startswith("checkpoints/"):
                # single files can be fetched by the frontend's missing-model dialog
                assert {"name", "url", "directory"} <= set(properties["models"][0])


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_shipped_workflow_converts_to_the_verified_prompt(runner, path):
    with open(os.path.join(EXPECTED, os.path.basename(path))) as f:
        expected = json.load(f)
    assert runner.load(path).prompt == expected


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_shipped_workflow_runs_headless(runner, path):
    files = runner.run(path, sets=tiny_sets(path))
    assert len(files) == 1
    with Image.open(files[0]) as image:
        assert image.size == (64, 64) or any(kind in path for kind in ("img2img", "inpaint", "outpaint"))
        assert {"prompt", "workflow"} <= set(image.text)
        assert np.asarray(image).std() > 1  # not a blank picture


def test_png_round_trip(runner, tmp_path):
    path = os.path.join(REPO, "workflows", "sd15_txt2img.json")
    first = runner.run(path, sets=tiny_sets(path) + ["Denoise (Diffusers).seed=4242"])[0]
    with Image.open(first) as image:
        executed = json.loads(image.text["prompt"])
        ui = json.loads(image.text["workflow"])
        pixels = np.asarray(image).copy()
    assert ui["nodes"] and executed["7"]["inputs"]["seed"] == 4242
    versions = ui["extra"]["diffusers_stages"]["node_versions"]  # for later migrations
    assert versions["DS_Denoise"] == NODE_CLASS_MAPPINGS["DS_Denoise"].VERSION
    reloaded = runner.load(first)
    assert reloaded.prompt == executed  # the embedded UI workflow holds the values that ran
    again = runner.run(first)[0]  # run the PNG itself: the same picture
    with Image.open(again) as image:
        assert np.array_equal(np.asarray(image), pixels)


def test_repeat_moves_seeds_and_keeps_models_loaded(runner):
    path = os.path.join(REPO, "workflows", "sd15_img2img.json")  # its seed is set to "increment"
    files = runner.run(path, sets=tiny_sets(path), repeat=3, batch="inc")
    assert len(files) == 3
    seeds = [json.loads(Image.open(f).text["prompt"])["7"]["inputs"]["seed"] for f in files]
    assert seeds == [987654321, 987654322, 987654323]
    first, *rest = runner.history[-3:]
    assert "1" in first.executed and all("1" in r.cached and "1" not in r.executed for r in rest)  # no reload


def test_randomize_and_decrement_controls(runner, tmp_path):
    path = os.path.join(REPO, "workflows", "sd15_txt2img.json")  # seed control "randomize"
    files = runner.run(path, sets=tiny_sets(path), repeat=3, batch="rand", seed=1)
    seeds = [json.loads(Image.open(f).text["prompt"])["7"]["inputs"]["seed"] for f in files]
    assert seeds[0] == 123456789 and len(set(seeds)) == 3 and all(0 <= s < 2 ** 50 for s in seeds)
    with open(path) as f:
        workflow = json.load(f)
    denoise = next(n for n in workflow["nodes"] if n["type"] == "DS_Denoise")
    denoise["widgets_values"][1] = "decrement"
    decrementing = tmp_path / "decrement.json"
    decrementing.write_text(json.dumps(workflow))
    files = runner.run(str(decrementing), sets=tiny_sets(path), repeat=2, batch="dec")
    seeds = [json.loads(Image.open(f).text["prompt"])["7"]["inputs"]["seed"] for f in files]
    assert seeds == [123456789, 123456788]


def test_prompt_list_from_file(runner, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n\na blue bird\na green frog\n")
    path = os.path.join(REPO, "workflows", "sd15_txt2img.json")
    files = runner.run(path, sets=tiny_sets(path) + [f"Positive prompt.text=@{prompts}"], batch="list")
    texts = [json.loads(Image.open(f).text["prompt"])["2"]["inputs"]["text"] for f in files]
    assert texts == ["a red fox", "a blue bird", "a green frog"]


def test_set_by_node_id_and_errors(runner):
    path = os.path.join(REPO, "workflows", "sd15_txt2img.json")
    files = runner.run(path, sets=tiny_sets(path) + ["9.filename_prefix=by_id"])
    assert os.path.basename(files[0]).startswith("by_id_")
    with pytest.raises(WorkflowError, match="no node with id or title 'Nope'"):
        runner.run(path, sets=["Nope.seed=1"])
    with pytest.raises(WorkflowError, match="NODE.INPUT=VALUE"):
        runner.run(path, sets=["seed"])


def test_bad_values_refused_before_anything_runs(runner, tmp_path):
    path = os.path.join(REPO, "workflows", "sd15_txt2img.json")
    with pytest.raises(WorkflowError) as info:
        runner.run(path, sets=tiny_sets(path) + ["Scheduler (Diffusers).schedule=karras",
                                                 "Scheduler (Diffusers).sampler_name=ddim",
                                                 "Denoise (Diffusers).steps=0"])
    text = str(info.value)
    assert "node 5 (Scheduler (Diffusers))" in text and "karras" in text
    assert "'steps' = 0 is below its minimum 1" in text
    assert not os.path.exists(tmp_path / "output")  # nothing ran, nothing written


def test_missing_node_types_are_listed_with_their_pack(runner, tmp_path):
    with open(os.path.join(REPO, "workflows", "sd15_txt2img.json")) as f:
        workflow = json.load(f)
    workflow["nodes"].append({"id": 50, "type": "UltraUpscaler", "mode": 0, "inputs": [], "outputs": [],
                              "properties": {"cnr_id": "comfyui-ultra-pack", "ver": "1.2.0"}, "widgets_values": []})
    workflow["nodes"].append({"id": 51, "type": "KSampler", "mode": 0, "inputs": [], "outputs": [],
                              "properties": {"cnr_id": "comfy-core"}, "widgets_values": []})
    path = tmp_path / "needs_more.json"
    path.write_text(json.dumps(workflow))
    with pytest.raises(WorkflowError) as info:
        runner.run(str(path))
    text = str(info.value)
    assert "'UltraUpscaler' is not available here (it belongs to comfyui-ultra-pack)" in text
    assert "'KSampler' is not available here (it belongs to ComfyUI core" in text
    assert not os.path.exists(tmp_path / "output")


def _batch_command(models_root, out, runs):
    path = os.path.join(REPO, "workflows", "sd15_txt2img.json")
    cmd = [sys.executable, os.path.join(REPO, "stages.py"), "run", path, "--repeat", str(runs), "--batch", "resume",
           "--models", models_root["root"], "--output", str(out), "--random-seed", "3"]
    for item in tiny_sets(path):
        cmd += ["--set", item]
    return cmd


def test_killed_batch_resumes_with_exactly_one_output_set_per_run(models_root, tmp_path):
    out, runs = tmp_path / "out", 8
    cmd = _batch_command(models_root, out, runs)
    manifest = out / "resume" / "manifest.jsonl"
    victim = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the batch finished before it could be killed; make runs slower"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finished_before = len(manifest.read_text().splitlines())
    assert 2 <= finished_before < runs
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stderr + result.stdout
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(e["run"] for e in entries) == list(range(runs))
    folders = sorted(p for p in (out / "resume").iterdir() if p.is_dir())
    assert [p.name for p in folders] == [f"run_{i:05}" for i in range(1, runs + 1)]
    assert all(len(list(p.glob("*.png"))) == 1 for p in folders)
    seeds = [json.loads(Image.open(next(p.glob("*.png"))).text["prompt"])["7"]["inputs"]["seed"] for p in folders]
    assert len(set(seeds)) == runs  # the planned seeds, none repeated by the restart


# ---- the converter on features our own workflows do not use ---------------------------------------------

@pytest.fixture(scope="module")
def core_definitions():
    if not os.path.isfile(OBJECT_INFO):
        pytest.skip("shared/data object_info dump not beside the repo")
    with open(OBJECT_INFO) as f:
        return json.load(f)


def _node(nid, kind, widgets=None, inputs=(), outputs=(), mode=0, **extra):
    return {"id": nid, "type": kind, "mode": mode, "widgets_values": widgets or [],
            "inputs": [{"name": n, "type": t, "link": link, **({"widget": {"name": n}} if w else {})}
                       for n, t, link, w in inputs],
            "outputs": [{"name": n, "type": t, "links": links} for n, t, links in outputs], "properties": {}, **extra}


def test_converter_primitive_reroute_bypass_mute_and_widget_sockets(core_definitions):
    workflow = {"version": 0.4, "nodes": [
        _node(1, "CheckpointLoaderSimple", ["model.safetensors"], outputs=[("MODEL", "MODEL", [1]),
                                                                           ("CLIP", "CLIP", [2]), ("VAE", "VAE", [3])]),
        _node(2, "PrimitiveNode", [77, "increment"], outputs=[("INT", "INT", [4])]),
        _node(3, "Reroute", inputs=[("", "*", 1, False)], outputs=[("", "MODEL", [5])]),
        _node(4, "LoraLoaderModelOnly", ["style.safetensors", 0.8], inputs=[("model", "MODEL", 5, False)],
              outputs=[("MODEL", "MODEL", [6])], mode=4),  # bypassed: KSampler gets the Reroute's model
        _node(5, "KSampler", [1, "randomize", 20, 7.0, "euler", "normal", 1.0],
              inputs=[("model", "MODEL", 6, False), ("seed", "INT", 4, True)], outputs=[("LATENT", "LATENT", [])]),
        _node(6, "Note", ["just a note"]),
        _node(7, "CLIPSetLastLayer", [-2], inputs=[("clip", "CLIP", 2, False)], mode=2),  # muted: dropped
    ], "links": [[1, 1, 0, 3, 0, "MODEL"], [2, 1, 1, 7, 0, "CLIP"], [4, 2, 0, 5, 1, "INT"], [5, 3, 0, 4, 0, "MODEL"],
                 [6, 4, 0, 5, 0, "MODEL"]]}
    result = Converter(core_definitions).convert(workflow)
    assert set(result.prompt) == {"1", "5"}
    assert result.prompt["5"]["inputs"] == {"seed": 77, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                                            "scheduler": "normal", "denoise": 1.0, "model": ["1", 0]}
    assert result.controls[("5", "seed")] == "increment"  # the primitive's control drives batches


def test_converter_flattens_subgraphs_with_promoted_widgets(core_definitions):
    inner = [
        _node(10, "EmptyLatentImage", [512, 512, 1], inputs=[("width", "INT", 20, True)],
              outputs=[("LATENT", "LATENT", [21])]),
        _node(11, "VAEDecode", inputs=[("samples", "LATENT", 21, False), ("vae", "VAE", 22, False)],
              outputs=[("IMAGE", "IMAGE", [23])]),
    ]
    definition = {"id": "sg-1", "name": "decode empty", "nodes": inner,
                  "inputs": [{"name": "width", "type": "INT", "linkIds": [20]},
                             {"name": "vae", "type": "VAE", "linkIds": [22]}],
                  "outputs": [{"name": "IMAGE", "type": "IMAGE", "linkIds": [23]}],
                  "links": [{"id": 20, "origin_id": -10, "origin_slot": 0, "target_id": 10, "target_slot": 0,
                             "type": "INT"},
                            {"id": 21, "origin_id": 10, "origin_slot": 0, "target_id": 11, "target_slot": 0,
                             "type": "LATENT"},
                            {"id": 22, "origin_id": -10, "origin_slot": 1, "target_id": 11, "target_slot": 1,
                             "type": "VAE"},
                            {"id": 23, "origin_id": 11, "origin_slot": 0, "target_id": -20, "target_slot": 0,
                             "type": "IMAGE"}]}
    workflow = {"version": 0.4, "definitions": {"subgraphs": [definition]}, "nodes": [
        _node(1, "VAELoader", ["ae.safetensors"], outputs=[("VAE", "VAE", [1])]),
        _node(2, "sg-1", [768], inputs=[("width", "INT", None, True), ("vae", "VAE", 1, False)],
              outputs=[("IMAGE", "IMAGE", [2])], properties={"proxyWidgets": [["10", "height"]]}),
        _node(3, "SaveImage", ["out"], inputs=[("images", "IMAGE", 2, False)]),
    ], "links": [[1, 1, 0, 2, 1, "VAE"], [2, 2, 0, 3, 0, "IMAGE"]]}
    prompt = Converter(core_definitions).convert(workflow).prompt
    assert set(prompt) == {"1", "2:10", "2:11", "3"}
    assert prompt["2:10"]["inputs"] == {"width": 512, "height": 768, "batch_size": 1}  # promoted height
    assert prompt["2:11"]["inputs"] == {"samples": ["2:10", 0], "vae": ["1", 0]}
    assert prompt["3"]["inputs"]["images"] == ["2:11", 0]


def _corpus_files():
    found = {}
    for package, folder in (("comfyui_workflow_templates_json", "templates"),
                            ("comfyui_subgraph_blueprints", "blueprints")):
        try:
            module = __import__(package)
        except ImportError:
            continue
        root = os.path.join(os.path.dirname(module.__file__), folder)
        found[package] = sorted(glob.glob(os.path.join(root, "*.json")))
    return found


def test_real_corpus_converts_without_a_crash(core_definitions, capsys):
    corpus = _corpus_files()
    if not corpus:
        pytest.skip("install comfyui-workflow-templates-json and comfyui-subgraph-blueprints (python install.py --dev)")
    converter = Converter(core_definitions)
    lines = []
    for package, files in corpus.items():
        counts = {"converted": 0, "needs other nodes": 0, "not a workflow": 0}
        missing: dict[str, int] = {}
        for path in files:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
                counts["not a workflow"] += 1  # catalogue/index files shipped beside the templates
                continue
            result = converter.convert(data)  # must not raise
            for node in result.prompt.values():
                assert isinstance(node["inputs"], dict)
                for value in node["inputs"].values():
                    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                        assert value[0] in result.prompt, (path, value)  # no dangling links
            if result.missing:
                counts["needs other nodes"] += 1
                for kind in result.missing:
                    missing[kind] = missing.get(kind, 0) + 1
            else:
                counts["converted"] += 1
        top = ", ".join(f"{k} ({v})" for k, v in sorted(missing.items(), key=lambda kv: -kv[1])[:6])
        lines.append(f"{package}: {len(files)} files -> {counts}; node types not in the v0.8.0 definitions, most "
                     f"frequent: {top}")
    with capsys.disabled():
        print("\n[corpus] " + "\n[corpus] ".join(lines))
    if "comfyui_workflow_templates_json" in corpus:
        assert len(corpus["comfyui_workflow_templates_json"]) >= 644


def test_executor_semantics_lists_ancestors_and_order():
    """Only outputs and their ancestors run; a list output fans out over a node without INPUT_IS_LIST."""
    from diffusers_stages.runner.execute import Executor

    calls = []

    class Numbers:
        RETURN_TYPES, OUTPUT_IS_LIST, FUNCTION = ("INT",), (True,), "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"count": ("INT", {"default": 3, "min": 1, "max": 10})}}

        def go(self, count):
            calls.append("Numbers")
            return (list(range(count)),)

    class Double:
        RETURN_TYPES, FUNCTION = ("INT",), "go"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"x": ("INT", {"forceInput": True})}}

        def go(self, x):
            calls.append(f"Double({x})")
            return (2 * x,)

    class Collect:
        RETURN_TYPES, FUNCTION, OUTPUT_NODE, INPUT_IS_LIST = (), "go", True, True

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"values": ("INT", {"forceInput": True})}}

        def go(self, values):
            calls.append("Collect")
            return {"ui": {"values": values}}

    executor = Executor({"Numbers": Numbers, "Double": Double, "Collect": Collect})
    prompt = {"9": {"class_type": "Collect", "inputs": {"values": ["2", 0]}},
              "2": {"class_type": "Double", "inputs": {"x": ["1", 0]}},
              "1": {"class_type": "Numbers", "inputs": {"count": 3}},
              "5": {"class_type": "Double", "inputs": {"x": ["1", 0]}}}  # not an ancestor of an output: never runs
    result = executor.run(prompt)
    assert result.ui["9"]["values"] == [0, 2, 4]
    assert calls == ["Numbers", "Double(0)", "Double(1)", "Double(2)", "Collect"]
    calls.clear()
    assert executor.run(prompt).cached == ["1", "2"] and calls == ["Collect"]  # unchanged nodes are not re-run
    prompt["1"]["inputs"]["count"] = 11
    with pytest.raises(WorkflowError, match="above its maximum 10"):
        executor.run(prompt)
    prompt["1"]["inputs"]["count"] = 2
    prompt["1"]["inputs"]["extra"] = ["2", 0]  # a cycle
    prompt["1"]["class_type"] = "Numbers"
    Numbers.INPUT_TYPES = classmethod(lambda cls: {"required": {"count": ("INT", {"min": 1, "max": 10})},
                                                   "optional": {"extra": ("INT", {"forceInput": True})}})
    with pytest.raises(WorkflowError, match="cycle"):
        executor.run(prompt)


def test_every_template_has_a_readable_title_and_description(tmp_path):
    """The frontend looks a pack template's title up as templateWorkflows.template.<pack folder>.<name> in the host's
    translations; the pack writes them into locales/en/main.json under the folder name it was cloned as."""
    from diffusers_stages.templates import TEMPLATES, write_template_locale

    names = {os.path.splitext(os.path.basename(path))[0] for path in WORKFLOWS}
    assert set(TEMPLATES) == names
    assert all(title and description and title != name for name, (title, description) in TEMPLATES.items())
    clone = tmp_path / "my.pack"  # any folder name; the frontend's key has its dots as underscores
    with open(write_template_locale(str(clone))) as f:
        locale = json.load(f)["templateWorkflows"]
    assert locale["template"]["my_pack"]["sd15_inpaint"] == "SD1.5 inpainting"
    assert set(locale["templateDescription"]["my_pack"]) == names
