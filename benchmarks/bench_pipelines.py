"""Our node graphs vs the diffusers pipelines, same weights and settings, side by side, per family.

    python benchmarks/bench_pipelines.py [--runs 5] [--steps 20]
        [--cases sd15-tiny,sd15-small,sdxl,sd3,flux,zimage,qwenimage,flux2,flux2-dev]

Models are random-weight and built here (no download):
* sd15-tiny: the test suite's SD1.5 model at 64 px (fixed costs dominate);
* sd15-small: wider U-Net channels (64, 128, 256, 256) at 256 px, where the U-Net dominates;
* sdxl, sd3, flux, zimage, qwenimage, flux2 (klein), flux2-dev: the test suite's tiny models of those families
  at 128 px.

Wall time: both sides alternate in one process (same threads, warm caches); median of --runs after one
warm-up each ('time ratio'), and the ratio of the fastest runs ('min ratio', less sensitive to noise).
Peak RSS: each side in its own fresh process (load + runs), VmHWM compared. Ratios are ours / diffusers
(goals: time <= 1.03, RSS <= 1.10).
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
sys.path[:0] = [os.path.join(REPO, "custom_nodes")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

PROMPT, NEGATIVE, SEED = "a photo of a cat on a mat", "blurry", 3
# case -> (pipeline class, builder, builder kwargs, size, our cfg, the pipeline's guidance arguments for it)
CASES = {
    "sd15-tiny": ("StableDiffusionPipeline", "build_sd_pipeline", {}, 64, 7.5, {"guidance_scale": 7.5}),
    "sd15-small": ("StableDiffusionPipeline", "build_sd_pipeline", {"unet_channels": (64, 128, 256, 256)}, 256, 7.5,
                   {"guidance_scale": 7.5}),
    "sdxl": ("StableDiffusionXLPipeline", "build_sdxl_pipeline", {}, 128, 6.0, {"guidance_scale": 6.0}),
    "sd3": ("StableDiffusion3Pipeline", "build_sd3_pipeline", {}, 128, 5.0, {"guidance_scale": 5.0}),
    # unguided; 3.5 = its distilled guidance
    "flux": ("FluxPipeline", "build_flux_pipeline", {}, 128, 1.0, {"guidance_scale": 3.5}),
    # ZImagePipeline's guidance_scale is our cfg - 1
    "zimage": ("ZImagePipeline", "build_zimage_pipeline", {}, 128, 4.0, {"guidance_scale": 3.0}),
    "qwenimage": ("QwenImagePipeline", "build_qwen_image_pipeline", {}, 128, 4.0, {"true_cfg_scale": 4.0}),
    # klein base, CFG away from the empty prompt (Flux2KleinPipeline takes no negative prompt; ours then uses "")
    "flux2": ("Flux2KleinPipeline", "build_flux2_klein_pipeline", {}, 128, 4.0, {"guidance_scale": 4.0}),
    # guidance-distilled, unguided: 4 = its embedded guidance (our Flux Guidance default for Flux.2)
    "flux2-dev": ("Flux2Pipeline", "build_flux2_dev_pipeline", {}, 128, 1.0, {"guidance_scale": 4.0}),
}
NO_NEGATIVE_PROMPT = {"flux2"}  # pipelines that guide away from the empty prompt only


def build(root: str, case: str) -> str:
    from diffusers_stages.tiny import models

    _, builder, kwargs, _, _, _ = CASES[case]
    path = os.path.join(root, "diffusers", case)
    if not os.path.isdir(path):
        getattr(models, builder)(**kwargs).save_pretrained(path)
    return path


def make_ours(root: str, case: str):
    from diffusers_stages import host
    from diffusers_stages.nodes import NODE_CLASS_MAPPINGS as N

    host.set_models_dir(root)
    _, _, _, size, cfg, _ = CASES[case]
    den, te, vae, spec = N["DS_LoadModel"]().execute(model=f"diffusers/{case}", repo_id="", dtype="fp32")

    def run(steps: int):
        pos = N["DS_TextEncode"]().execute(text_encoder=te, text=PROMPT, clip_skip=0)[0]
        negative = {}
        if cfg > 1.0 and case not in NO_NEGATIVE_PROMPT:  # Flux runs unguided (cfg 1): no negative prompt
            negative["negative"] = N["DS_TextEncode"]().execute(text_encoder=te, text=NEGATIVE, clip_skip=0)[0]
        guider = N["DS_CFGGuider"]().execute(positive=pos, cfg=cfg, **negative)[0]
        latent = N["DS_EmptyLatent"]().execute(denoiser=den, width=size, height=size, batch_size=1)[0]
        out = N["DS_Denoise"]().execute(denoiser=den, guider=guider, scheduler=spec, latent=latent, seed=SEED,
                                        steps=steps, denoise=1.0)[0]
        return N["DS_VAEDecode"]().execute(vae=vae, samples=out)[0]

    return run


def make_diffusers(root: str, case: str):
    import diffusers
    import torch

    pipeline, _, _, size, cfg, guidance = CASES[case]
    pipe = getattr(diffusers, pipeline).from_pretrained(build(root, case), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    # the same negative prompt for every family; Flux only runs CFG with true_cfg_scale > 1, so it stays unguided
    extra = {"negative_prompt": NEGATIVE} if cfg > 1.0 and case not in NO_NEGATIVE_PROMPT else {}

    def run(steps: int):
        return pipe(prompt=PROMPT, num_inference_steps=steps, **guidance, width=size,
                    height=size, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt",
                    **extra).images

    return run


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the process's own memory map; ru_maxrss would not do here, as
    Linux carries it over from the parent through fork and exec, so a child would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(side: str, root: str, case: str, runs: int, steps: int) -> None:
    import torch

    run = (make_ours if side == "ours" else make_diffusers)(root, case)
    with torch.inference_mode():
        for _ in range(runs):
            run(steps)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "ROOT", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.runs, args.steps)
        return

    import torch

    root = tempfile.mkdtemp(prefix="ds-bench-")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.runs} runs x {args.steps} steps")
    print(f"{'case':<11} {'ours s':>8} {'diffusers s':>12} {'time ratio':>11} {'min ratio':>10} {'ours MB':>9} "
          f"{'diffusers MB':>13} {'RSS ratio':>10}")
    for case in args.cases.split(","):
        build(root, case)
        ours, theirs = make_ours(root, case), make_diffusers(root, case)
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
            out = subprocess.run([sys.executable, __file__, "--child", side, root, case, "--runs", str(args.runs),
                                  "--steps", str(args.steps)], capture_output=True, text=True, check=True)
            rss[side] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
        t_ours, t_theirs = statistics.median(times["ours"]), statistics.median(times["diffusers"])
        min_ratio = min(times["ours"]) / min(times["diffusers"])
        print(f"{case:<11} {t_ours:8.3f} {t_theirs:12.3f} {t_ours / t_theirs:11.3f} {min_ratio:10.3f} "
              f"{rss['ours']:9.0f} {rss['diffusers']:13.0f} {rss['ours'] / rss['diffusers']:10.3f}", flush=True)


if __name__ == "__main__":
    main()
