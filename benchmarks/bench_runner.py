"""N runs of a shipped workflow: one process (--repeat N) vs N fresh processes.

    python benchmarks/bench_runner.py [--runs 5] [--size 128] [--steps 10]

Uses the tiny offline models (built here). In one process the loader, text encoders and
guider are cached after the first run (models are not reloaded); N processes pay imports and
loading N times. Prints both wall times, the ratio, and how often the loader node ran.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "custom_nodes"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORKFLOW = os.path.join(REPO, "workflows", "sd15_txt2img.json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    from diffusers_stages.tiny.demo import prepare_demo

    folder = tempfile.mkdtemp(prefix="ds-bench-runner-")
    models, inputs, output = prepare_demo(folder)
    sets = ["Load Diffusers Model.model=checkpoints/tiny-sd15.safetensors",
            f"Empty Latent (Diffusers).width={args.size}", f"Empty Latent (Diffusers).height={args.size}",
            f"Denoise (Diffusers).steps={args.steps}"]
    base = [sys.executable, os.path.join(REPO, "stages.py"), "run", WORKFLOW, "--models", models]
    for item in sets:
        base += ["--set", item]

    start = time.perf_counter()
    subprocess.run(base + ["--repeat", str(args.runs), "--batch", "one", "--output", output], check=True,
                   capture_output=True)
    one_process = time.perf_counter() - start

    start = time.perf_counter()
    for i in range(args.runs):
        subprocess.run(base + ["--output", os.path.join(output, f"fresh_{i}")], check=True, capture_output=True)
    fresh = time.perf_counter() - start

    from diffusers_stages.runner.api import Runner

    runner = Runner(models, inputs, os.path.join(output, "in_process"))
    runner.run(WORKFLOW, sets=sets, repeat=args.runs, batch="count")
    loads = sum("1" in result.executed for result in runner.history)

    print(f"{args.runs} runs of sd15_txt2img ({args.size} px, {args.steps} steps, single-file tiny model)")
    print(f"  one process, --repeat {args.runs}: {one_process:7.2f} s")
    print(f"  {args.runs} fresh processes:        {fresh:7.2f} s")
    print(f"  ratio one/fresh: {one_process / fresh:.3f}; loader node ran {loads} time(s) in {args.runs} runs")


if __name__ == "__main__":
    main()
