"""Our SD1.5 node graph vs StableDiffusionPipeline, same weights and settings, side by side.

    python benchmarks/bench_sd15.py [--runs 5] [--steps 20]

Two models, both random-weight and built here (no download):
* tiny:  the test suite's model at 64 px (fixed costs dominate);
* small: wider U-Net channels (64, 128, 256, 256) at 256 px, where the U-Net dominates.

Wall time: the two sides alternate in one process (same threads, same warm caches); median of --runs,
after one warm-up each. Peak RSS: each side in its own fresh process (load + runs), ru_maxrss compared.
Prints ratios ours / diffusers (goal: time <= 1.03, RSS <= 1.10); 'time ratio' compares medians,
'min ratio' the fastest runs (less sensitive to noise from the rest of the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "custom_nodes"), os.path.join(REPO, "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

MODELS = {"tiny": {"unet_channels": (16, 16, 32, 32), "size": 64},
          "small": {"unet_channels": (64, 128, 256, 256), "size": 256}}
PROMPT, NEGATIVE, CFG, SEED = "a photo of a cat on a mat", "blurry", 7.5, 3


def build(root: str, name: str) -> str:
    from diffusers_stages.tiny.models import build_sd_pipeline

    path = os.path.join(root, "diffusers", name)
    if not os.path.isdir(path):
        build_sd_pipeline("sd1", unet_channels=MODELS[name]["unet_channels"]).save_pretrained(path)
    return path


def make_ours(root: str, name: str):
    from diffusers_stages import host
    from diffusers_stages.nodes import NODE_CLASS_MAPPINGS as N

    host.set_models_dir(root)
    den, te, vae, sched = N["DS_LoadModel"]().execute(model=f"diffusers/{name}", repo_id="", dtype="fp32")
    spec = N["DS_Scheduler"]().execute(scheduler=sched, sampler_name="euler", schedule="normal")[0]
    size = MODELS[name]["size"]

    def run(steps: int):
        pos = N["DS_TextEncode"]().execute(text_encoder=te, text=PROMPT, clip_skip=0)[0]
        neg = N["DS_TextEncode"]().execute(text_encoder=te, text=NEGATIVE, clip_skip=0)[0]
        guider = N["DS_CFGGuider"]().execute(positive=pos, negative=neg, cfg=CFG)[0]
        latent = N["DS_EmptyLatent"]().execute(denoiser=den, width=size, height=size, batch_size=1)[0]
        out = N["DS_Denoise"]().execute(denoiser=den, guider=guider, scheduler=spec, latent=latent, seed=SEED,
                                        steps=steps, denoise=1.0)[0]
        return N["DS_VAEDecode"]().execute(vae=vae, samples=out)[0]

    return run


def make_diffusers(root: str, name: str):
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(build(root, name), local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    size = MODELS[name]["size"]

    def run(steps: int):
        return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=CFG, width=size,
                    height=size, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images

    return run


def child(side: str, root: str, name: str, runs: int, steps: int) -> None:
    """Fresh process: load one side, run it, report peak RSS (MB)."""
    import torch

    run = (make_ours if side == "ours" else make_diffusers)(root, name)
    with torch.inference_mode():
        for _ in range(runs):
            run(steps)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", default="tiny,small")
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "ROOT", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.runs, args.steps)
        return

    import torch

    root = tempfile.mkdtemp(prefix="ds-bench-")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.runs} runs x {args.steps} steps, "
          f"euler/normal, CFG {CFG}")
    print(f"{'model':<6} {'ours s':>8} {'diffusers s':>12} {'time ratio':>11} {'min ratio':>10} {'ours MB':>9} "
          f"{'diffusers MB':>13} {'RSS ratio':>10}")
    for name in args.models.split(","):
        build(root, name)
        ours, theirs = make_ours(root, name), make_diffusers(root, name)
        times = {"ours": [], "diffusers": []}
        with torch.inference_mode():
            ours(args.steps), theirs(args.steps)  # warm-up
            for _ in range(args.runs):
                for side, run in (("ours", ours), ("diffusers", theirs)):
                    start = time.perf_counter()
                    run(args.steps)
                    times[side].append(time.perf_counter() - start)
        rss = {}
        for side in ("ours", "diffusers"):
            out = subprocess.run([sys.executable, __file__, "--child", side, root, name, "--runs", str(args.runs),
                                  "--steps", str(args.steps)], capture_output=True, text=True, check=True)
            rss[side] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
        t_ours, t_theirs = statistics.median(times["ours"]), statistics.median(times["diffusers"])
        min_ratio = min(times["ours"]) / min(times["diffusers"])
        print(f"{name:<6} {t_ours:8.3f} {t_theirs:12.3f} {t_ours / t_theirs:11.3f} {min_ratio:10.3f} "
              f"{rss['ours']:9.0f} {rss['diffusers']:13.0f} {rss['ours'] / rss['diffusers']:10.3f}")


if __name__ == "__main__":
    main()
