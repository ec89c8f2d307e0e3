"""Throughput of a batch fanned out over 1 and 2 real ComfyUI servers (`run --server …`), beside the same batch run
in this process (the headless runner). Needs a ComfyUI checkout and its Python, as the live test tier:

    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/python python benchmarks/bench_fanout.py [--runs 8]
        [--size 256] [--steps 8]

The tiny random SD1.5 checkpoint (models built here, nothing downloaded), --runs runs of the shipped
sd15_txt2img workflow at --size px, --steps steps. Each server is a separate ComfyUI process with this pack, started
before the clock starts and warmed up by one run (models loaded), as servers are in use. Reported: wall time and
runs per second; ratio = 2 servers' throughput / 1 server's. On one machine the servers share its cores (and the
runner process its own): on a 2-core CPU a second server adds little, as it would on two GPUs of one machine whose
CPU is the bottleneck; the ratio says what the fan-out costs and gains here, not what separate GPUs would give.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "custom_nodes"), os.path.join(REPO, "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--server-threads", type=int, default=0,
                        help="CPU threads of each server's torch (0: its default, all cores); 1 gives each server a "
                             "core of its own on a 2-core machine, as separate devices would be")
    args = parser.parse_args()
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH (and COMFYUI_PYTHON) to a ComfyUI checkout, as for the live tests")

    from test_live_host import Server

    from diffusers_stages.runner.api import Runner
    from diffusers_stages.tiny.models import write_models

    root = tempfile.mkdtemp(prefix="bench-fanout-")
    models = os.path.join(root, "models")
    write_models(models)
    workflow = os.path.join(REPO, "workflows", "sd15_txt2img.json")
    sets = ["Load Diffusers Model.model=checkpoints/tiny-sd15.safetensors",
            f"Empty Latent (Diffusers).width={args.size}", f"Empty Latent (Diffusers).height={args.size}",
            f"Denoise (Diffusers).steps={args.steps}"]
    servers = []
    saved = dict(os.environ)
    if args.server_threads:
        os.environ.update(OMP_NUM_THREADS=str(args.server_threads), MKL_NUM_THREADS=str(args.server_threads))
    for index in range(2):
        base = os.path.join(root, f"server{index}")
        os.makedirs(os.path.join(base, "custom_nodes"))
        os.symlink(REPO, os.path.join(base, "custom_nodes", "diffusers-stages"))
        os.symlink(models, os.path.join(base, "models"))
        servers.append(Server(base))
    os.environ.clear()
    os.environ.update(saved)
    try:
        def timed(label: str, urls: list[str]) -> float:
            runner = Runner(models, root, os.path.join(root, "out", label))
            runner.run(workflow, sets=sets, repeat=len(urls) or 1, batch="warm-up", seed=1, servers=urls)
            started = time.perf_counter()
            runner.run(workflow, sets=sets, repeat=args.runs, batch="timed", seed=2, servers=urls)
            seconds = time.perf_counter() - started
            print(f"{label:<20} {seconds:8.2f} s  {args.runs / seconds:6.3f} runs/s", flush=True)
            return args.runs / seconds

        threads = args.server_threads or "all"
        print(f"{args.runs} runs of sd15_txt2img (tiny random SD1.5), {args.size} px, {args.steps} steps; "
              f"{os.cpu_count()} CPU cores shared by everything below; server torch threads: {threads}")
        local = timed("this process", [])
        one = timed("1 ComfyUI server", [servers[0].url])
        two = timed("2 ComfyUI servers", [server.url for server in servers])
        print(f"ratio 2 servers / 1 server: {two / one:.2f}   1 server / this process: {one / local:.2f}")
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
