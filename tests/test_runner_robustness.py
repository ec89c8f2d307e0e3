"""The headless runner never crashes: every bad input of the independent bad-input run ends in one short
message naming node, input and fix, exit code 2 and no traceback; nothing is silently wrong; batches are locked,
written atomically and refuse a resume over changed model files; models stay cached across prompts."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from diffusers_stages.runner import cli
from diffusers_stages.runner.api import Runner
from diffusers_stages.runner.batch import BatchLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "expected_api", "sd15_txt2img.json")
IMG2IMG = os.path.join(REPO, "workflows", "sd15_img2img.json")
SD15 = "diffusers/tiny-sd15"


def tiny_prompt(model: str = SD15, steps: int = 2) -> dict:
    """The shipped SD1.5 text-to-image prompt, on a tiny model, 64 px."""
    with open(FIXTURE, encoding="utf-8") as f:
        prompt = json.load(f)
    prompt["1"]["inputs"]["model"] = model
    prompt["6"]["inputs"].update(width=64, height=64)
    prompt["7"]["inputs"]["steps"] = steps
    return prompt


@pytest.fixture()
def folders(models_root, tmp_path):
    inputs, output = tmp_path / "input", tmp_path / "output"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(inputs / "picture.png")
    return {"models": models_root["root"], "input": str(inputs), "output": str(output), "tmp": tmp_path}


def write_prompt(folders, prompt, name="prompt.json") -> str:
    path = folders["tmp"] / name
    path.write_text(json.dumps(prompt))
    return str(path)


def run_cli(folders, workflow: str, *extra: str, capsys) -> tuple[int, str]:
    code = cli.main(["run", workflow, "--models", folders["models"], "--input", folders["input"], "--output",
                     folders["output"], *extra])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def refused(folders, capsys, workflow: str, *extra: str) -> str:
    code, text = run_cli(folders, workflow, *extra, capsys=capsys)
    assert code == 2, text
    assert "Traceback" not in text
    return text


def with_changes(prompt: dict, **changes) -> dict:
    """``node__input=value`` changes on a copy of ``prompt``."""
    prompt = copy.deepcopy(prompt)
    for key, value in changes.items():
        node, name = key.split("__")
        prompt[node]["inputs"][name] = value
    return prompt


# ---- widget values: coerced or refused, never a crash, never silently wrong ------------------------------------
@pytest.mark.parametrize("node_input, value, message", [
    ("7__steps", "abc", "node 7 (Denoise (Diffusers)): input 'steps' is 'abc', not a number"),
    ("7__steps", 2.5, "input 'steps' is 2.5, not a whole number"),
    ("7__steps", True, "input 'steps' is the boolean true, not a number"),  # ran as 1 step before
    ("7__seed", None, "input 'seed' is null (no value), not a number"),
    ("4__cfg", float("nan"), "input 'cfg' is nan, not a finite number"),  # slipped through min/max before
    ("4__guidance_rescale", float("nan"), "input 'guidance_rescale' is nan, not a finite number"),
    ("4__cfg", "inf", "input 'cfg' is inf, not a finite number"),
    ("2__text", None, "node 2 (Positive prompt): input 'text' is null (no value), not text"),
    ("8__tiled", "maybe", "input 'tiled' is 'maybe', not true or false"),
    ("5__sampler_name", "euler_x", "Scheduler (Diffusers) › sampler_name: unknown sampler 'euler_x'"),
    ("5__sampler_name", "ddim", None),  # with steps 1001, below
])
def test_bad_widget_values_are_refused_before_anything_runs(folders, capsys, node_input, value, message):
    prompt = with_changes(tiny_prompt(), **{node_input: value})
    if message is None:  # DDIM takes at most its 1000 training steps: known before anything loads
        prompt["7"]["inputs"]["steps"] = 1001
        message = "Denoise (Diffusers) › steps: 1001 steps is more than the DDIMScheduler sampler takes (at most 1000)"
    text = refused(folders, capsys, write_prompt(folders, prompt))
    assert message in text
    assert not os.path.exists(folders["output"]) or not os.listdir(folders["output"])  # nothing ran, nothing written


def test_values_that_convert_without_loss_run(folders, capsys):
    prompt = with_changes(tiny_prompt(), **{"7__steps": "2", "7__seed": 3.0, "2__text": 12345, "8__tiled": "false"})
    code, text = run_cli(folders, write_prompt(folders, prompt), capsys=capsys)
    assert code == 0, text


def test_lcm_step_limit_and_scheduler_of_another_family(folders, capsys):
    prompt = with_changes(tiny_prompt(), **{"5__sampler_name": "lcm", "5__schedule": "normal", "7__steps": 51})
    assert "at most 50" in refused(folders, capsys, write_prompt(folders, prompt))
    prompt = tiny_prompt()
    prompt["10"] = {"class_type": "DS_LoadModel", "inputs": {"model": "diffusers/tiny-flux", "repo_id": "",
                    "dtype": "fp32", "prediction": "auto", "allow_download": False}, "_meta": {"title": "Flux"}}
    prompt["7"]["inputs"]["scheduler"] = ["10", 3]  # Flux's flow-matching scheduler into an SD1.5 denoiser
    text = refused(folders, capsys, write_prompt(folders, prompt))
    assert "node 7 (Denoise (Diffusers)): [Diffusers Stages] Denoise (Diffusers) › scheduler: the scheduler " \
           "(FlowMatchEulerDiscreteScheduler) is a flow-matching sampler made for another model family" in text


def test_readme_example_and_run_time_refusals_name_the_node(folders, capsys):
    prompt = with_changes(tiny_prompt(), **{"6__width": 65})
    text = refused(folders, capsys, write_prompt(folders, prompt))
    assert "node 6 (Empty Latent (Diffusers)): [Diffusers Stages] Empty Latent (Diffusers) › width: 65 is not a " \
           "multiple of 8" in text
    for weight in ("nan", "1e309", "inf"):
        prompt = with_changes(tiny_prompt(), **{"2__text": f"a (cat:{weight}) on a mat"})
        text = refused(folders, capsys, write_prompt(folders, prompt))
        assert "Text Encode (Diffusers) › text: the prompt weight '(cat:" in text and "not a finite number" in text
    prompt = with_changes(tiny_prompt(), **{"2__text": "(" * 1500 + "cat" + ")" * 1500})
    assert "text: the prompt nests parentheses more than 64 levels deep" in refused(
        folders, capsys, write_prompt(folders, prompt))


def test_unknown_set_input_and_repeat_below_one_are_refused(folders, capsys):
    path = write_prompt(folders, tiny_prompt())
    text = refused(folders, capsys, path, "--set", "7.stepz=1")
    assert "--set 7.stepz: node 7 (DS_Denoise) has no input 'stepz'; its inputs are: denoiser, guider" in text
    for repeat in ("0", "-3"):
        assert f"--repeat {repeat}: the number of runs must be 1 or more" in refused(folders, capsys, path,
                                                                                    "--repeat", repeat)


def test_api_nodes_whose_inputs_are_not_an_object(folders, capsys):
    prompt = tiny_prompt()
    prompt["7"]["inputs"] = ["seed", 1]
    text = refused(folders, capsys, write_prompt(folders, prompt))
    assert "node 7 (DS_Denoise): 'inputs' is list, not an object of input names to values" in text


# ---- files that are not what they claim -----------------------------------------------------------------------
def test_broken_workflow_files(folders, capsys):
    tmp = folders["tmp"]
    (tmp / "binary.json").write_bytes(bytes(range(256)) * 4)
    assert "is not valid JSON text" in refused(folders, capsys, str(tmp / "binary.json"))
    (tmp / "not-a.png").write_text("hello")
    assert "cannot be read as a PNG image" in refused(folders, capsys, str(tmp / "not-a.png"))
    info = PngInfo()
    info.add_text("workflow", '{"nodes": [ broken')
    Image.new("RGB", (8, 8)).save(tmp / "broken-chunk.png", pnginfo=info)
    assert "its embedded 'workflow' is not valid JSON" in refused(folders, capsys, str(tmp / "broken-chunk.png"))


@pytest.mark.parametrize("content, name", [(b"not an image at all", "text.png"), (b"", "empty.png"),
                                           (None, "truncated.png")])
def test_load_image_on_a_file_that_is_not_an_image(folders, capsys, content, name):
    path = os.path.join(folders["input"], name)
    if content is None:  # the first half of a real PNG
        with open(os.path.join(folders["input"], "picture.png"), "rb") as f:
            content = f.read()[:600]
    with open(path, "wb") as f:
        f.write(content)
    sets = ["Load Diffusers Model.model=diffusers/tiny-sd15", f"Load Image.image={name}",
            "Denoise (Diffusers).steps=2"]
    text = refused(folders, capsys, IMG2IMG, *[arg for s in sets for arg in ("--set", s)])
    assert f"(Load Image): image: '{name}' cannot be read as an image" in text and "Fix: use a PNG" in text


def test_load_image_outside_the_input_folder_says_input_folder(folders, capsys):
    text = refused(folders, capsys, IMG2IMG, "--set", "Load Diffusers Model.model=diffusers/tiny-sd15", "--set",
                   "Load Image.image=../escape.png")
    assert "points outside the input folder" in text
    prompt = with_changes(tiny_prompt(), **{"9__filename_prefix": "../../escape"})
    assert "(Save Image): filename_prefix: '../..' points outside the output folder" in refused(
        folders, capsys, write_prompt(folders, prompt))


def damaged_copy(models_root, name: str, change) -> str:
    from safetensors.torch import load_file, save_file

    tensors = load_file(os.path.join(models_root["root"], "checkpoints", "tiny-sd15.safetensors"))
    change(tensors)
    save_file(tensors, os.path.join(models_root["root"], "checkpoints", name))
    return f"checkpoints/{name}"


def test_damaged_checkpoints(folders, capsys, models_root):
    key = "model.diffusion_model.out.2.weight"

    def wrong_shape(tensors):
        tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])

    def nan_weights(tensors):
        tensors[key] = torch.full_like(tensors[key], float("nan"))

    prompt = with_changes(tiny_prompt(), **{"1__model": damaged_copy(models_root, "wrong-shape.safetensors",
                                                                    wrong_shape)})
    text = refused(folders, capsys, write_prompt(folders, prompt))
    assert "Load Diffusers Model › model: the weights in 'wrong-shape.safetensors' do not fit" in text
    prompt = with_changes(tiny_prompt(), **{"1__model": damaged_copy(models_root, "nan.safetensors", nan_weights)})
    text = refused(folders, capsys, write_prompt(folders, prompt))  # a black image with exit 0 before
    assert "Denoise (Diffusers) › denoiser: the latent after step 1 of 2 holds NaN or infinite values" in text
    assert "NaN/inf (a damaged file)" in text
    pickle = os.path.join(models_root["root"], "checkpoints", "renamed-pickle.safetensors")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, pickle)
    prompt = with_changes(tiny_prompt(), **{"1__model": "checkpoints/renamed-pickle.safetensors"})
    assert "is a pickle (PyTorch .ckpt/.pt) file with a .safetensors name" in refused(
        folders, capsys, write_prompt(folders, prompt))


def test_short_widget_lists_are_reported_naming_the_node(folders, capsys, caplog):
    with open(os.path.join(REPO, "workflows", "sd15_txt2img.json"), encoding="utf-8") as f:
        ui = json.load(f)
    denoise = next(node for node in ui["nodes"] if node["type"] == "DS_Denoise")
    denoise["widgets_values"] = denoise["widgets_values"][:2]  # seed + its control; steps and denoise lost
    path = folders["tmp"] / "short.json"
    path.write_text(json.dumps(ui))
    runner = Runner(folders["models"], folders["input"], folders["output"])
    with caplog.at_level("WARNING", logger="diffusers_stages.runner"):
        runner.load(str(path))
    assert f"node {denoise['id']} (Denoise (Diffusers)): the workflow holds 2 widget values, the node has 6; " \
           "steps, denoise, denoising_start, denoising_end take the default" in caplog.text


def test_unexpected_errors_are_wrapped_with_the_node_and_debug_shows_the_traceback(folders, capsys, monkeypatch):
    from diffusers_stages.nodes.vae_decode import VAEDecode

    def broken(self, **inputs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(VAEDecode, "run", broken)
    path = write_prompt(folders, tiny_prompt())
    text = refused(folders, capsys, path)
    assert "node 8 (VAE Decode (Diffusers)): unexpected ZeroDivisionError: boom. Run with --debug" in text
    code, text = run_cli(folders, path, "--debug", capsys=capsys)
    assert code == 2 and "Traceback" in text and "ZeroDivisionError: boom" in text


def test_the_cli_as_a_process_prints_one_line_and_exits_2(folders):
    """The README's own example through `stages.py run`: no traceback (it escaped before)."""
    prompt = with_changes(tiny_prompt(), **{"6__width": 65})
    done = subprocess.run([sys.executable, os.path.join(REPO, "stages.py"), "run", write_prompt(folders, prompt),
                           "--models", folders["models"], "--output", folders["output"]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("error: node 6 (Empty Latent (Diffusers)): "
                                                           "[Diffusers Stages] Empty Latent (Diffusers) › width: 65")


# ---- batches ----------------------------------------------------------------------------------------------------
def stages(folders, *args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(REPO, "stages.py"), "run", *args, "--models",
                             folders["models"], "--output", folders["output"]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def outputs_of(batch_folder) -> tuple[list[str], list[list[str]]]:
    with open(os.path.join(batch_folder, "manifest.jsonl"), encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    runs = sorted(d for d in os.listdir(batch_folder) if d.startswith("run_"))
    return lines, [sorted(f for f in os.listdir(os.path.join(batch_folder, d)) if f.endswith(".png")) for d in runs]


def test_a_second_process_on_the_same_batch_is_refused(folders):
    path = write_prompt(folders, tiny_prompt())
    batch = os.path.join(folders["output"], "locked")
    os.makedirs(batch)
    lock = BatchLock(batch)  # this process holds the batch, as a running runner would
    try:
        second = stages(folders, path, "--repeat", "2", "--batch", "locked")
        out, err = second.communicate(timeout=300)
    finally:
        lock.release()
    assert second.returncode == 2 and "Traceback" not in err
    assert f"batch {batch} is being run by process {os.getpid()}; wait for it to finish" in err
    assert not os.path.exists(os.path.join(batch, "batch.json"))  # it planned nothing, wrote nothing
    # two processes started together: exactly one output set per run, whoever ran them
    both = [stages(folders, path, "--repeat", "3", "--batch", "together") for _ in range(2)]
    results = [process.communicate(timeout=300) for process in both]
    assert sorted(process.returncode for process in both) in ([0, 0], [0, 2]), results
    lines, pngs = outputs_of(os.path.join(folders["output"], "together"))
    assert len(lines) == 3 and [len(files) for files in pngs] == [1, 1, 1]


def test_a_manifest_line_cut_mid_write_heals_in_one_resume(folders):
    runner = Runner(folders["models"], folders["input"], folders["output"])
    path = write_prompt(folders, tiny_prompt())
    runner.run(path, repeat=3, batch="cut")
    manifest = os.path.join(folders["output"], "cut", "manifest.jsonl")
    with open(manifest, encoding="utf-8") as f:
        text = f.read()
    with open(manifest, "w", encoding="utf-8") as f:
        f.write(text[: len(text) - 20])  # the last line cut short by a kill: run 3 is not finished
    written = runner.run(path, repeat=3, batch="cut")  # one resume
    assert len(written) == 3
    lines, pngs = outputs_of(os.path.join(folders["output"], "cut"))
    assert len(lines) == 3 and all(json.loads(line) for line in lines) and [len(f) for f in pngs] == [1, 1, 1]
    assert runner.history[-1].executed  # run 3 ran again
    assert Runner(folders["models"], folders["input"], folders["output"]).run(path, repeat=3, batch="cut") == written


def test_a_model_file_replaced_under_the_same_name_refuses_the_resume(folders, models_root):
    import shutil

    source = os.path.join(models_root["root"], "checkpoints", "tiny-sd15.safetensors")
    copy_path = os.path.join(models_root["root"], "checkpoints", "replaced.safetensors")
    shutil.copy(source, copy_path)
    path = write_prompt(folders, with_changes(tiny_prompt(), **{"1__model": "checkpoints/replaced.safetensors"}))
    runner = Runner(folders["models"], folders["input"], folders["output"])
    runner.run(path, repeat=2, batch="models")
    with open(os.path.join(folders["output"], "models", "batch.json"), encoding="utf-8") as f:
        recorded = json.load(f)["models"]
    assert list(recorded) == [copy_path] and recorded[copy_path]["size"] == os.path.getsize(copy_path)
    os.utime(copy_path)  # touched, same content: the resume goes on
    assert len(Runner(folders["models"], folders["input"], folders["output"]).run(path, repeat=2, batch="models")) == 2
    damaged_copy(models_root, "replaced.safetensors", lambda tensors: tensors.popitem())  # another file, same name
    with pytest.raises(Exception, match="a model file changed since the batch was planned.*"
                                        "replaced.safetensors' was replaced"):
        Runner(folders["models"], folders["input"], folders["output"]).run(path, repeat=2, batch="models")


def test_each_model_file_is_hashed_once_per_process(folders, models_root, monkeypatch, tmp_path):
    from diffusers_stages.runner import fingerprints

    monkeypatch.setenv("DIFFUSERS_STAGES_CACHE_DIR", str(tmp_path / "hashes"))
    monkeypatch.setattr(fingerprints, "_digests", {})
    monkeypatch.setattr(fingerprints, "hashed_files", [])
    path = write_prompt(folders, tiny_prompt(model="checkpoints/tiny-sd15.safetensors"))
    runner = Runner(folders["models"], folders["input"], folders["output"])
    for name in ("a", "b", "c"):
        runner.run(path, repeat=2, batch=name)
    assert fingerprints.hashed_files == [os.path.join(models_root["root"], "checkpoints", "tiny-sd15.safetensors")]
    monkeypatch.setattr(fingerprints, "_digests", {})  # another process: the digest comes from the disk cache
    runner.run(path, repeat=2, batch="d")
    assert len(fingerprints.hashed_files) == 1


def test_a_kill_during_a_png_write_leaves_no_truncated_file(folders, tmp_path):
    script = f"""
import os, signal, sys
sys.path.insert(0, {os.path.join(REPO, "custom_nodes")!r})
import torch
from PIL import Image
from diffusers_stages.runner import core_nodes

real_save = Image.Image.save
def save_half_then_die(self, fp, *args, **kwargs):
    real_save(self, fp, *args, **kwargs)
    with open(fp, "r+b") as f:
        f.truncate(os.path.getsize(fp) // 2)  # half the file is on disk ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... when the process is killed
Image.Image.save = save_half_then_die
core_nodes.save_images(torch.rand(1, 32, 32, 3), {str(tmp_path)!r}, "killed")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert not os.path.exists(tmp_path / "killed_00001_.png")  # never a truncated file under the final name
    assert any(name.endswith(".partial") for name in os.listdir(tmp_path))


# ---- memory --------------------------------------------------------------------------------------------------
def rss() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc")
def test_alternating_two_models_loads_each_once_and_the_budget_bounds_what_stays(folders):
    first = write_prompt(folders, tiny_prompt(), "first.json")
    second = write_prompt(folders, tiny_prompt(model="checkpoints/tiny-sd15.safetensors"), "second.json")
    runner = Runner(folders["models"], folders["input"], folders["output"])
    for _ in range(20):
        runner.run(first)
        runner.run(second)
    loads = sum("1" in result.executed for result in runner.history)
    assert loads == 2  # each model loaded once in 40 runs
    one_model = runner.executor.cache.held_bytes() // 2
    small = Runner(folders["models"], folders["input"], folders["output"], cache_budget=one_model)
    for _ in range(3):
        small.run(first)
        small.run(second)
        assert small.executor.cache.held_bytes() <= one_model * 1.05  # only the latest prompt's model stays
    assert sum("1" in result.executed for result in small.history) == 6  # the budget holds one model: reloads


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc")
def test_a_hundred_runs_keep_memory_flat(folders):
    runner = Runner(folders["models"], folders["input"], folders["output"])
    path = write_prompt(folders, tiny_prompt(steps=1))
    seeds = iter(range(1000))
    for _ in range(10):  # warm-up: model loaded, allocator pools filled
        runner.run(path, sets=[f"7.seed={next(seeds)}"])
    before = rss()
    for _ in range(100):
        runner.run(path, sets=[f"7.seed={next(seeds)}"])
    growth = rss() / before - 1
    assert len(runner.executor.cache) <= 2 * len(json.load(open(path, encoding="utf-8")))  # no pile of old images
    print(f"[memory] RSS after 10 runs {before / 2 ** 20:.1f} MiB, after 110 runs {rss() / 2 ** 20:.1f} MiB "
          f"({growth:+.2%})")
    assert growth <= 0.02
