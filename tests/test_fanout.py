"""A planned batch fanned out over ComfyUI servers (runner/servers.py), against stand-in servers that run prompts with
this pack's executor (tests/fake_comfy.py; the live tier repeats the pixel and fault tests on two real ComfyUI
servers): results equal a local run's pixel for pixel, a server killed mid-batch loses and duplicates no run, and
an unreachable server, one without the pack and one refusing the prompt each get a clear message, the batch left
resumable."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from diffusers_stages.runner.api import Runner
from diffusers_stages.runner.execute import WorkflowError

HERE = os.path.dirname(os.path.abspath(__file__))
WORKFLOW = os.path.join(os.path.dirname(HERE), "workflows", "sd15_txt2img.json")
SETS = ["Load Diffusers Model.model=checkpoints/tiny-sd15.safetensors", "Empty Latent (Diffusers).width=64",
        "Empty Latent (Diffusers).height=64", "Denoise (Diffusers).steps=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def fake_servers(models_root, tmp_path, *flag_sets):
    """Stand-in ComfyUI servers (one per flag list), each with its own input and output folder; yields their URLs."""
    processes, urls = [], []
    try:
        for index, flags in enumerate(flag_sets):
            port = free_port()
            base = tmp_path / f"server{index}"
            for sub in ("input", "output"):
                (base / sub).mkdir(parents=True)
            processes.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "fake_comfy.py"), str(port), models_root["root"],
                 str(base / "input"), str(base / "output"), *flags],
                env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.time() + 120
        for url in urls:
            while True:
                try:
                    urllib.request.urlopen(url + "/system_stats", timeout=2).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError(f"{url} did not start") from None
                    time.sleep(0.3)
        yield urls
    finally:
        for process in processes:
            process.kill()
            process.wait()


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def runs_of(folder) -> list[dict]:
    with open(folder / "manifest.jsonl") as f:
        return [json.loads(line) for line in f]


def test_fanned_out_batch_equals_a_local_run_pixel_for_pixel(models_root, tmp_path):
    local = Runner(models_root["root"], str(tmp_path / "input"), str(tmp_path / "local"))
    expected = sorted(local.run(WORKFLOW, sets=SETS, repeat=4, batch="b", seed=3))
    with fake_servers(models_root, tmp_path, [], []) as urls:
        runner = Runner(models_root["root"], str(tmp_path / "input"), str(tmp_path / "fanned"))
        files = sorted(runner.run(WORKFLOW, sets=SETS, repeat=4, batch="b", seed=3, servers=urls))
    assert [os.path.relpath(f, tmp_path / "fanned") for f in files] == [
        os.path.relpath(f, tmp_path / "local") for f in expected]  # the same folders and names
    for ours, theirs in zip(files, expected):
        assert np.array_equal(pixels(ours), pixels(theirs))
    with Image.open(files[0]) as image:
        manifest = json.loads(image.text["diffusers_stages"])
        assert {"prompt", "workflow"} <= set(image.text)
    assert manifest["server"] in urls and manifest["nodes"]["DS_Denoise"] and manifest["seeds"]
    assert sorted(entry["run"] for entry in runs_of(tmp_path / "fanned" / "b")) == [0, 1, 2, 3]


def test_a_server_killed_mid_batch_loses_and_repeats_no_run(models_root, tmp_path, caplog):
    """The first server dies when its second prompt arrives; that run goes to the other server: six runs, each
    done once."""
    with fake_servers(models_root, tmp_path, ["--die-after", "1"], ["--slow", "0.3"]) as urls:
        runner = Runner(models_root["root"], str(tmp_path / "input"), str(tmp_path / "out"))
        files = runner.run(WORKFLOW, sets=SETS, repeat=6, batch="b", seed=4, servers=urls)
    entries = runs_of(tmp_path / "out" / "b")
    assert sorted(entry["run"] for entry in entries) == list(range(6))  # each run once
    assert len(files) == 6 and len(set(files)) == 6
    assert sorted(os.listdir(tmp_path / "out" / "b")) == sorted(
        ["batch.json", "manifest.jsonl", "provenance.json", ".lock", *(f"run_{i:05}" for i in range(1, 7))])
    assert "goes to another server" in caplog.text


def test_bad_servers_get_clear_messages_and_the_batch_stays_resumable(models_root, tmp_path):
    runner = Runner(models_root["root"], str(tmp_path / "input"), str(tmp_path / "out"))
    unreachable = r"(?s)http://127.0.0.1:1 does not answer.*no server answers; nothing was run"
    with pytest.raises(WorkflowError, match=unreachable):
        runner.run(WORKFLOW, sets=SETS, repeat=2, batch="b", servers=["127.0.0.1:1"])
    without_pack = (r"(?s)lacks the node types DS_CFGGuider, .*\(Diffusers Stages\): install them there.*no server "
                    r"can run this workflow")
    refused = (r"(?s)refused the prompt: Prompt outputs failed validation; node 7 \(DS_Denoise\): Value not in list: "
               r"steps: 0.*2 of 2 runs left.*resume")
    with fake_servers(models_root, tmp_path, ["--without-pack"], ["--refuse"]) as (no_pack, refusing):
        with pytest.raises(WorkflowError, match=without_pack):
            runner.run(WORKFLOW, sets=SETS, repeat=2, batch="b", servers=[no_pack])
        with pytest.raises(WorkflowError, match=refused):
            runner.run(WORKFLOW, sets=SETS, repeat=2, batch="b", seed=5, servers=[refusing])
    folder = tmp_path / "out" / "b"
    assert (folder / "batch.json").exists() and not (folder / "manifest.jsonl").exists()  # planned, nothing done
    with fake_servers(models_root, tmp_path / "again", []) as urls:  # the same command, a working server: resumed
        files = runner.run(WORKFLOW, sets=SETS, repeat=2, batch="b", seed=5, servers=urls)
    assert len(files) == 2 and sorted(e["run"] for e in runs_of(tmp_path / "out" / "b")) == [0, 1]


def test_input_pictures_are_uploaded_to_the_servers(models_root, tmp_path):
    """sd15_img2img's Load Image picture exists only here: it is uploaded (/upload/image) to the server, whose run
    equals the local one."""
    (tmp_path / "input").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "input" / "mine.png")
    workflow = os.path.join(os.path.dirname(HERE), "workflows", "sd15_img2img.json")
    sets = ["Load Diffusers Model.model=checkpoints/tiny-sd15.safetensors", "Load Image.image=mine.png",
            "Denoise (Diffusers).steps=3"]
    local = Runner(models_root["root"], str(tmp_path / "input"), str(tmp_path / "local")).run(
        workflow, sets=sets, batch="b", seed=1)
    with fake_servers(models_root, tmp_path, []) as urls:
        fanned = Runner(models_root["root"], str(tmp_path / "input"), str(tmp_path / "fanned")).run(
            workflow, sets=sets, batch="b", seed=1, servers=urls)
    assert os.path.isfile(tmp_path / "server0" / "input" / "mine.png")
    assert np.array_equal(pixels(fanned[0]), pixels(local[0]))


def test_progress_socket_reads_comfyui_messages_frame_by_frame():
    """The websocket reader on a socket pair: text messages (short, 16-bit length, fragmented), a preview frame
    skipped, a ping answered with a masked pong, a frame cut by a timeout read whole on the next call."""
    import socket as sockets

    from diffusers_stages.runner.servers import ProgressSocket

    ours, theirs = sockets.socketpair()
    channel = ProgressSocket.__new__(ProgressSocket)
    channel.sock, channel.buffer, channel.kind, channel.partial = ours, b"", 1, b""

    def frame(opcode, payload, final=True):
        size = len(payload)
        head = bytes([(0x80 if final else 0) | opcode])
        head += bytes([size]) if size < 126 else bytes([126]) + size.to_bytes(2, "big")
        return head + payload

    progress = json.dumps({"type": "progress", "data": {"value": 3, "max": 20, "prompt_id": "p"}}).encode()
    long = json.dumps({"type": "status", "data": {"pad": "x" * 300}}).encode()
    theirs.sendall(frame(2, b"\x00preview") + frame(1, progress) + frame(9, b"hi") + frame(1, long[:100], False)
                   + frame(0, long[100:]))
    assert channel.message() is None  # the preview
    assert channel.message() == json.loads(progress)
    assert channel.message() == json.loads(long)  # after answering the ping
    pong = theirs.recv(64)
    assert pong[0] == 0x8A and pong[1] == 0x80 | 2 and bytes(b ^ pong[2:6][i] for i, b in enumerate(pong[6:])) == b"hi"
    whole = frame(1, b'{"type": "executing", "data": {"node": null, "prompt_id": "p"}}')
    theirs.sendall(whole[:5])
    ours.settimeout(0.2)
    with pytest.raises(TimeoutError):
        channel.message()
    theirs.sendall(whole[5:])
    assert channel.message() == {"type": "executing", "data": {"node": None, "prompt_id": "p"}}
    ours.close()
    theirs.close()
