"""Live-host tier: the real ComfyUI server with this pack. Skipped unless COMFYUI_PATH points at a checkout.

    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python python -m pytest tests/test_live_host.py

The server runs from a temporary --base-directory whose custom_nodes/ holds a link to this repo under an
odd folder name, and whose models/ holds the tiny test models.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
pytestmark = [pytest.mark.live, pytest.mark.skipif(not COMFYUI_PATH, reason="COMFYUI_PATH is not set")]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUR_NODES = {"DS_LoadModel", "DS_TextEncode", "DS_Scheduler", "DS_CFGGuider", "DS_EmptyLatent", "DS_Denoise",
             "DS_VAEDecode", "DS_VAEEncode"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: str, *extra_args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(base, "server.log")
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--base-directory", base,
               "--database-url", "sqlite:///:memory:", *extra_args]
        self.log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONPATH="", HF_HUB_OFFLINE="1")
        self.process = subprocess.Popen(cmd, cwd=COMFYUI_PATH, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early:\n{self.read_log()[-4000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not start:\n{self.read_log()[-4000:]}")

    def read_log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def run(self, prompt: dict, timeout: float = 180, **extra) -> dict:
        status, body = self.post("/prompt", {"prompt": prompt, **extra})
        assert status == 200, body
        prompt_id = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            time.sleep(0.2)
        raise TimeoutError(prompt_id)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from diffusers_stages.tiny.models import write_models

    base = str(tmp_path_factory.mktemp("comfy-base"))
    os.makedirs(os.path.join(base, "custom_nodes"))
    os.symlink(REPO, os.path.join(base, "custom_nodes", "Diffusers Stages (test clone)"))
    write_models(os.path.join(base, "models"))
    srv = Server(base)
    yield srv
    srv.stop()


def txt2img(width=64, steps=4, sampler="euler", schedule="normal", seed=7):
    return {
        "1": {"class_type": "DS_LoadModel", "inputs": {"model": "diffusers/tiny-sd15", "repo_id": "",
                                                         "dtype": "auto", "prediction": "auto",
                                                         "allow_download": False}},
        "2": {"class_type": "DS_TextEncode", "inputs": {"text_encoder": ["1", 1], "text": "a (cat:1.2)",
                                                          "clip_skip": 0}},
        "3": {"class_type": "DS_TextEncode", "inputs": {"text_encoder": ["1", 1], "text": "blurry", "clip_skip": 0}},
        "4": {"class_type": "DS_CFGGuider", "inputs": {"positive": ["2", 0], "negative": ["3", 0], "cfg": 7.0,
                                                         "guidance_rescale": 0.0, "start_percent": 0.0,
                                                         "end_percent": 1.0}},
        "5": {"class_type": "DS_Scheduler", "inputs": {"scheduler": ["1", 3], "sampler_name": sampler,
                                                         "schedule": schedule}},
        "6": {"class_type": "DS_EmptyLatent", "inputs": {"denoiser": ["1", 0], "width": width, "height": 64,
                                                           "batch_size": 1}},
        "7": {"class_type": "DS_Denoise", "inputs": {"denoiser": ["1", 0], "guider": ["4", 0], "scheduler": ["5", 0],
                                                       "latent": ["6", 0], "seed": seed, "steps": steps,
                                                       "denoise": 1.0}},
        "8": {"class_type": "DS_VAEDecode", "inputs": {"vae": ["1", 2], "samples": ["7", 0], "tiled": False}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ds_live"}},
    }


def test_nodes_registered_without_import_failure(server):
    info = server.get("/object_info")
    assert OUR_NODES <= set(info)
    assert info["DS_Denoise"]["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert "IMPORT FAILED" not in server.read_log().split("Import times for custom nodes:")[-1].split("\n\n")[0]


def test_txt2img_through_post_prompt(server):
    entry = server.run(txt2img(), extra_data={"preview_method": "latent2rgb"})
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = entry["outputs"]["9"]["images"]
    assert len(images) == 1
    path = os.path.join(server.url and os.path.dirname(server.log_path), "output", images[0]["subfolder"],
                        images[0]["filename"])
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (64, 64)
        assert "prompt" in image.info  # core SaveImage wrote the API prompt chunk
    assert "Requested to load UNet2DConditionModel" in server.read_log()  # our modules named by their class


def test_queue_time_validation_names_node_and_input(server):
    status, body = server.post("/prompt", {"prompt": txt2img(sampler="ddim", schedule="karras")})
    assert status == 400
    text = json.dumps(body)
    assert "Scheduler (Diffusers)" in text and "karras" in text
    # ComfyUI repeats a VALIDATE_INPUTS message once per input the method names: sampler_name and schedule
    assert text.count("the 'karras' schedule cannot be used with the DDIMScheduler") == 2


def test_run_time_error_is_clear_and_server_survives(server):
    entry = server.run(txt2img(width=68))
    assert entry["status"]["status_str"] == "error"
    error = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    assert error["node_type"] == "DS_EmptyLatent"
    assert "Empty Latent (Diffusers) › width" in error["exception_message"]
    assert server.run(txt2img(seed=8))["status"]["status_str"] == "success"


def test_interrupt_stops_the_denoise_loop(server):
    status, body = server.post("/prompt", {"prompt": txt2img(steps=5000, seed=9)})
    assert status == 200
    prompt_id = body["prompt_id"]
    deadline = time.time() + 120
    while time.time() < deadline and not server.get("/queue")["queue_running"]:
        time.sleep(0.1)
    time.sleep(2.0)  # well inside the loop
    server.post("/interrupt", {})
    while time.time() < deadline:
        history = server.get(f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"]["status_str"] in ("success", "error"):
            break
        time.sleep(0.2)
    events = [m[0] for m in history[prompt_id]["status"]["messages"]]
    assert "execution_interrupted" in events
    assert time.time() < deadline


def test_progress_and_previews_every_step(server):
    """With previews on (per prompt), every denoise step sends a progress event and a preview image frame."""
    outcome, previews, progress = _watch(server, txt2img(steps=6, seed=11), "ds-test")
    assert outcome == "execution_success"
    assert progress == [1, 2, 3, 4, 5, 6]
    assert previews == 6


def _watch(server, prompt, client_id):
    """Queue with previews on; collect progress values of node 7 (Denoise) and binary preview frames."""
    import asyncio

    aiohttp = pytest.importorskip("aiohttp")

    async def run():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(server.url.replace("http", "ws") + f"/ws?clientId={client_id}") as ws:
                response = await session.post(server.url + "/prompt", json={
                    "prompt": prompt, "client_id": client_id, "extra_data": {"preview_method": "latent2rgb"}})
                assert response.status == 200
                previews, progress = 0, []
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        previews += 1
                        continue
                    event = json.loads(message.data)
                    if event["type"] == "progress" and event["data"]["node"] == "7":
                        progress.append(event["data"]["value"])
                    if event["type"] in ("execution_success", "execution_error"):
                        return event["type"], previews, progress

    return asyncio.run(asyncio.wait_for(run(), 120))


WORKFLOW_NAMES = sorted(f for f in os.listdir(os.path.join(REPO, "workflows")) if f.endswith(".json"))


def converted(server, name):
    """(API prompt, UI workflow) of a shipped workflow, set to run on the tiny model of its family."""
    import numpy as np
    from PIL import Image
    from test_workflows import tiny_sets

    from diffusers_stages.runner.api import Runner
    from diffusers_stages.runner.batch import plan_runs, resolve_sets
    from diffusers_stages.runner.workflow import parse_set

    base = os.path.dirname(server.log_path)
    os.makedirs(os.path.join(base, "input"), exist_ok=True)
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(os.path.join(base, "input", "picture.png"))
    rgba = np.full((64, 64, 4), 200, np.uint8)
    rgba[16:48, 16:48, 3] = 0  # the inpainting workflows' picture: core Load Image's mask is 1 there
    Image.fromarray(rgba, "RGBA").save(os.path.join(base, "input", "masked.png"))
    runner = Runner(os.path.join(base, "models"), os.path.join(base, "input"), os.path.join(base, "headless"))
    workflow = runner.load(os.path.join(REPO, "workflows", name))
    sets = tiny_sets(os.path.join(REPO, "workflows", name))
    prompt = plan_runs(workflow, resolve_sets(workflow, [parse_set(s) for s in sets]), 1, runner.input_options)[0]
    return prompt, workflow.ui_for(prompt)


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_shipped_workflows_through_post_prompt(server, name):
    """Our converter's API prompt for each shipped workflow is accepted and run by the real server."""
    prompt, ui = converted(server, name)
    entry = server.run(prompt, extra_data={"extra_pnginfo": {"workflow": ui}})
    assert entry["status"]["status_str"] == "success", entry["status"]
    save = next(nid for nid, node in prompt.items() if node["class_type"] == "SaveImage")
    assert len(entry["outputs"][save]["images"]) == 1


def one_per_family(names):
    """A shipped workflow per family (the first word of its name), text-to-image where there is one."""
    chosen = {}
    for name in sorted(names, key=lambda n: "txt2img" not in n):
        chosen.setdefault(name.split("_")[0], name)
    return sorted(chosen.values())


@pytest.mark.parametrize("name", one_per_family(WORKFLOW_NAMES))
def test_previews_for_every_family(server, name):
    """Each family's denoise loop sends one progress event and one preview frame per step (previews on)."""
    prompt, _ = converted(server, name)
    outcome, previews, progress = _watch(server, prompt, "ds-" + name)
    assert outcome == "execution_success"
    assert progress == [1, 2, 3] and previews == 3


def test_template_input_pictures_are_in_the_input_folder(server):
    """Every picture a shipped template's Load Image names is ComfyUI's own example.png or one the pack ships
    (workflows/input/), which the host then serves from its input folder (no missing image)."""
    shipped = set(os.listdir(os.path.join(REPO, "workflows", "input")))
    named = set()
    for name in WORKFLOW_NAMES:
        with open(os.path.join(REPO, "workflows", name)) as f:
            named |= {node["widgets_values"][0] for node in json.load(f)["nodes"] if node["type"] == "LoadImage"}
    assert named <= shipped | {"example.png"} and "canny_edges.png" in named
    for picture in sorted(shipped):
        with urllib.request.urlopen(f"{server.url}/view?filename={picture}&type=input", timeout=30) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "image/png", picture


def test_templates_are_listed_with_readable_titles(server):
    """The host lists our templates under this clone's folder name, and its translations (which the frontend's
    template browser reads) give each a title and a description instead of the file name."""
    from diffusers_stages.templates import TEMPLATES

    folder = "Diffusers Stages (test clone)"
    assert set(server.get("/workflow_templates")[folder]) == {name[:-5] for name in WORKFLOW_NAMES}
    locale = server.get("/i18n")["en"]["templateWorkflows"]
    assert locale["template"][folder] == {name: title for name, (title, _) in TEMPLATES.items()}
    assert locale["templateDescription"][folder]["qwenimage_edit_2511"] == TEMPLATES["qwenimage_edit_2511"][1]


def test_real_frontend_loads_workflows_and_agrees_with_our_converter(server):
    """The ComfyUI frontend (headless Chromium) loads every shipped workflow with no missing node, and its own
    UI->API conversion (app.graphToPrompt) equals ours. Needs PLAYWRIGHT_DIR (a folder whose node_modules has
    playwright-core) and Chromium (CHROMIUM, default /usr/bin/chromium)."""
    import shutil

    from diffusers_stages.runner.api import Runner

    playwright_dir = os.environ.get("PLAYWRIGHT_DIR")
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not playwright_dir or not os.path.isfile(chromium) or not shutil.which("node"):
        pytest.skip("set PLAYWRIGHT_DIR (node_modules with playwright-core) and have Chromium and node")
    files = [os.path.join(REPO, "workflows", name) for name in WORKFLOW_NAMES]
    result = subprocess.run(["node", os.path.join(REPO, "tests", "frontend_check.js"), server.url, chromium, *files],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, NODE_PATH=os.path.join(playwright_dir, "node_modules")))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["errors"] == []
    runner = Runner()
    for path in files:
        frontend = report["results"][path]
        assert frontend["missing"] == [], (path, frontend["missing"])
        assert frontend["output"] == runner.load(path).prompt, path


@pytest.mark.parametrize("layout", ["Q8_0.gguf", "int8-convrot.safetensors"])
def test_quantized_files_listed_and_run_through_the_real_server(server, layout):
    """A GGUF (a suffix the host does not register for diffusion_models) and a ComfyUI int8 convrot file are offered
    by Load Diffusion Model and run by the server, their weights kept quantized."""
    from safetensors.torch import load_file

    from diffusers_stages.tiny.quantized_files import gguf_file, int8_file

    base = os.path.join(os.path.dirname(server.log_path), "models", "diffusion_models")
    name = f"tiny-flux-2-klein-{layout}"
    original = load_file(os.path.join(base, "tiny-flux-2-klein.safetensors"))
    if layout.endswith(".gguf"):
        gguf_file(os.path.join(base, name), original, "flux")
    else:
        int8_file(os.path.join(base, name), original, convrot_groupsize=16)
    assert name in server.get("/object_info/DS_LoadDiffusionModel")["DS_LoadDiffusionModel"]["input"]["required"][
        "model_name"][0]
    prompt, _ = converted(server, "flux2_klein_split_files.json")
    loader = next(node for node in prompt.values() if node["class_type"] == "DS_LoadDiffusionModel")
    loader["inputs"]["model_name"] = name
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert "Requested to load Flux2Transformer2DModel" in server.read_log()


BUDGET_PACK = '''"""Test helper: the host's partial loading on a CPU (where ComfyUI always loads models whole),
by giving the Diffusers Stages models a budget smaller than they are, as a GPU short of memory would."""
import comfy.model_patcher as model_patcher

NODE_CLASS_MAPPINGS = {}
_load = model_patcher.ModelPatcher.load


def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False, **kwargs):
    if type(self.model).__module__.endswith(".host") and hasattr(self.model, "wrapped_0"):
        lowvram_model_memory, full_load = 64 * 1024, False
    return _load(self, device_to, lowvram_model_memory, force_patch_weights, full_load, **kwargs)


model_patcher.ModelPatcher.load = load
'''


@pytest.fixture(scope="module")
def lowvram_server(server, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("comfy-lowvram"))
    os.makedirs(os.path.join(base, "custom_nodes", "stages_test_budget"))
    with open(os.path.join(base, "custom_nodes", "stages_test_budget", "__init__.py"), "w") as f:
        f.write(BUDGET_PACK)
    os.symlink(REPO, os.path.join(base, "custom_nodes", "Diffusers Stages (test clone)"))
    os.symlink(os.path.join(os.path.dirname(server.log_path), "models"), os.path.join(base, "models"))
    srv = Server(base)  # --lowvram cannot go with --cpu: the budget pack stands for it
    yield srv
    srv.stop()


def _image(server, entry, node_id):
    import numpy as np
    from PIL import Image

    picture = entry["outputs"][node_id]["images"][0]
    path = os.path.join(os.path.dirname(server.log_path), "output", picture["subfolder"], picture["filename"])
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_quantized_file_loaded_partially_gives_the_same_image(server, lowvram_server):
    """A GGUF Q8_0 transformer under a memory budget smaller than the model: the host loads our modules partially
    (its low-VRAM path, not a forced full load) and the image equals the one of a full load."""
    from safetensors.torch import load_file

    from diffusers_stages.tiny.quantized_files import gguf_file

    base = os.path.join(os.path.dirname(server.log_path), "models", "diffusion_models")
    name = "tiny-flux-2-klein-lowvram-Q8_0.gguf"
    gguf_file(os.path.join(base, name), load_file(os.path.join(base, "tiny-flux-2-klein.safetensors")), "flux")
    prompt, _ = converted(server, "flux2_klein_split_files.json")
    next(n for n in prompt.values() if n["class_type"] == "DS_LoadDiffusionModel")["inputs"]["model_name"] = name
    save = next(nid for nid, node in prompt.items() if node["class_type"] == "SaveImage")
    images = []
    for srv in (server, lowvram_server):
        entry = srv.run(prompt)
        assert entry["status"]["status_str"] == "success", entry["status"]
        images.append(_image(srv, entry, save))
    assert "loaded partially" in lowvram_server.read_log()
    assert "loaded partially" not in server.read_log().split("Requested to load Flux2Transformer2DModel")[-1]
    assert (images[0] == images[1]).all()


def test_core_alpha_mask_and_set_latent_noise_mask_drive_our_denoise(server):
    """Core Load Image with an alpha mask -> our VAE Encode -> core Set Latent Noise Mask -> our Denoise -> our VAE
    Decode -> core Save Image. The latent (saved by core Save Latent) keeps the encoded image outside the mask
    (latent cells away from the transparent square) and is repainted inside."""
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    base = os.path.dirname(server.log_path)
    os.makedirs(os.path.join(base, "input"), exist_ok=True)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = np.random.default_rng(0).integers(0, 255, (64, 64, 3))
    rgba[..., 3] = 255
    rgba[16:48, 16:48, 3] = 0  # transparent square: core's MASK is 1 there (repaint)
    Image.fromarray(rgba, "RGBA").save(os.path.join(base, "input", "masked.png"))
    prompt = txt2img(steps=4)
    prompt["20"] = {"class_type": "LoadImage", "inputs": {"image": "masked.png"}}
    prompt["21"] = {"class_type": "DS_VAEEncode", "inputs": {"vae": ["1", 2], "pixels": ["20", 0]}}
    prompt["22"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["21", 0], "mask": ["20", 1]}}
    prompt["7"]["inputs"].update(latent=["22", 0], denoise=1.0)
    for node_id, source in (("23", "7"), ("24", "21")):
        prompt[node_id] = {"class_type": "SaveLatent", "inputs": {"samples": [source, 0],
                                                                  "filename_prefix": f"latents/ds_mask_{node_id}"}}
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(entry["outputs"]["9"]["images"]) == 1

    def latent(node_id):
        saved = entry["outputs"][node_id]["latents"][0]
        return load_file(os.path.join(base, "output", saved["subfolder"], saved["filename"]))["latent_tensor"]

    difference = latent("23") - latent("24")
    outside = np.ones((8, 8), bool)
    outside[2:6, 2:6] = False  # the square's latent cells
    assert difference[:, :, outside].abs().max() < 1e-5  # raw -> model space -> raw rounding only
    assert difference[:, :, 3:5, 3:5].abs().mean() > 0.05  # inside: repainted


def second_server(server, tmp_path_factory, name: str) -> Server:
    """Another real ComfyUI server with this pack and the first server's tiny models."""
    base = str(tmp_path_factory.mktemp(name))
    os.makedirs(os.path.join(base, "custom_nodes"))
    os.symlink(REPO, os.path.join(base, "custom_nodes", "Diffusers Stages (test clone)"))
    os.symlink(os.path.join(os.path.dirname(server.log_path), "models"), os.path.join(base, "models"))
    return Server(base)


FANOUT_WORKFLOW = os.path.join(REPO, "workflows", "sd15_txt2img.json")
FANOUT_SETS = ["Load Diffusers Model.model=checkpoints/tiny-sd15.safetensors", "Empty Latent (Diffusers).width=64",
               "Empty Latent (Diffusers).height=64", "Denoise (Diffusers).steps=3"]


def test_batch_fanned_out_over_two_real_servers_equals_a_local_run(server, tmp_path_factory, tmp_path, caplog):
    """`run --server A --server B`: each run queued on a real ComfyUI server, its pictures written locally where a
    local run writes them; pixel for pixel the local run's. The servers' websockets report the steps."""
    import logging

    caplog.set_level(logging.INFO, logger="diffusers_stages.runner")
    import numpy as np
    from PIL import Image

    from diffusers_stages.runner.api import Runner

    other = second_server(server, tmp_path_factory, "comfy-second")
    try:
        models = os.path.join(os.path.dirname(server.log_path), "models")
        local = sorted(Runner(models, str(tmp_path), str(tmp_path / "local")).run(
            FANOUT_WORKFLOW, sets=FANOUT_SETS, repeat=4, batch="b", seed=9))
        fanned = sorted(Runner(models, str(tmp_path), str(tmp_path / "fanned")).run(
            FANOUT_WORKFLOW, sets=FANOUT_SETS, repeat=4, batch="b", seed=9, servers=[server.url, other.url]))
    finally:
        other.stop()
    assert [os.path.relpath(f, tmp_path / "fanned") for f in fanned] == [
        os.path.relpath(f, tmp_path / "local") for f in local]
    used = set()
    for ours, theirs in zip(fanned, local):
        with Image.open(ours) as a, Image.open(theirs) as b:
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
            used.add(json.loads(a.text["diffusers_stages"])["server"])
    assert used == {server.url, other.url}  # both servers took runs
    assert all(f"run {index}/4 on " in caplog.text for index in range(1, 5)) and ": step 3/3" in caplog.text


def test_real_server_killed_mid_batch_loses_and_repeats_no_run(server, tmp_path_factory, tmp_path):
    """One of two real servers is killed once it has finished a run: the batch still ends with every run done
    exactly once."""
    import threading

    from diffusers_stages.runner.api import Runner

    doomed = second_server(server, tmp_path_factory, "comfy-doomed")
    folder = tmp_path / "out" / "b"
    models = os.path.join(os.path.dirname(server.log_path), "models")
    runner = Runner(models, str(tmp_path), str(tmp_path / "out"))
    result = {}
    thread = threading.Thread(target=lambda: result.update(files=runner.run(
        FANOUT_WORKFLOW, sets=FANOUT_SETS, repeat=8, batch="b", seed=11, servers=[doomed.url, server.url])))
    thread.start()
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if (folder / "manifest.jsonl").exists() and any(
                    '"run_' in line for line in (folder / "manifest.jsonl").read_text().splitlines()):
                break
            time.sleep(0.2)
        doomed.process.kill()
    finally:
        thread.join(timeout=600)
        doomed.stop()
    entries = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert sorted(entry["run"] for entry in entries) == list(range(8))
    assert len(result["files"]) == 8 and len(set(result["files"])) == 8


def test_servers_run_nodes_this_process_cannot_and_name_their_refusals(server, tmp_path):
    """A node the headless runner does not have (core Invert Image stands for any other pack's) runs on the server:
    the picture is the local run's inverted. A prompt the server refuses (steps 0 is below Denoise's minimum) stops
    the batch with the server's message naming node and input; nothing is recorded, the batch resumes later."""
    import numpy as np
    from PIL import Image

    from diffusers_stages.runner.api import Runner
    from diffusers_stages.runner.execute import WorkflowError

    models = os.path.join(os.path.dirname(server.log_path), "models")
    prompt = txt2img(steps=2)
    prompt["1"]["inputs"]["model"] = "checkpoints/tiny-sd15.safetensors"
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(prompt))
    prompt["10"] = {"class_type": "ImageInvert", "inputs": {"image": ["8", 0]}}
    prompt["9"]["inputs"]["images"] = ["10", 0]
    inverted = tmp_path / "inverted.json"
    inverted.write_text(json.dumps(prompt))
    local = Runner(models, str(tmp_path), str(tmp_path / "local")).run(str(plain), batch="b")
    runner = Runner(models, str(tmp_path), str(tmp_path / "served"))
    with pytest.raises(WorkflowError, match="ImageInvert"):
        runner.run(str(inverted), batch="b")  # not here …
    served = runner.run(str(inverted), batch="b", servers=[server.url])  # … but on the server
    with Image.open(local[0]) as a, Image.open(served[0]) as b:  # Save Image truncates 255 x value: 1 - x lands
        gap = 255 - np.asarray(a.convert("RGB")).astype(int) - np.asarray(b.convert("RGB")).astype(int)
        assert gap.min() >= 0 and gap.max() <= 1  # on 254 - the local value, or 255 - it where 255 x is whole
    with pytest.raises(WorkflowError, match=r"(?s)refused the prompt: .*node 7 \(DS_Denoise\).*steps.*resume"):
        runner.run(str(plain), sets=["7.steps=0"], batch="refused", servers=[server.url])
    assert not (tmp_path / "served" / "refused" / "manifest.jsonl").exists()
