"""The guider nodes vs the code that runs them in diffusers (CFG-Zero*, APG: the SDXL modular pipeline with that
guider; PAG: StableDiffusionXLPAGPipeline), side by side in one process, and the guidance object's own cost.

    python benchmarks/bench_guiders.py [--runs 5] [--steps 20] [--size 128]

The model is the test suite's tiny SDXL (random weights, built here, no download). Wall time: both sides alternate
(same threads, warm caches); median of --runs after one warm-up each, ratio ours / diffusers (goal <= 1.03). The
guidance object's share: the time spent in Guidance.calls, call_inputs and combine over a whole plain-CFG run, against
the run's time (goal <= 1 %); a plain-CFG run is also timed against StableDiffusionXLPipeline.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(os.path.dirname(HERE), "custom_nodes")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

PROMPT, NEGATIVE, SEED = "a photo of a cat on a mat", "blurry", 3


def median_time(run, runs: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    import torch
    from diffusers import ModularPipeline, StableDiffusionXLPAGPipeline, StableDiffusionXLPipeline
    from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeZeroStarGuidance

    from diffusers_stages import host
    from diffusers_stages.engine import guidance as guidance_module
    from diffusers_stages.nodes import NODE_CLASS_MAPPINGS
    from diffusers_stages.tiny.models import build_sdxl_pipeline

    root = tempfile.mkdtemp(prefix="ds-bench-guiders-")
    folder = os.path.join(root, "diffusers", "tiny-sdxl")
    build_sdxl_pipeline(sample_size=args.size // 8).save_pretrained(folder, safe_serialization=True)
    host.set_models_dir(root)
    nodes = {k: c() for k, c in NODE_CLASS_MAPPINGS.items()}
    denoiser, text_encoder, vae, scheduler = nodes["DS_LoadModel"].execute(model="diffusers/tiny-sdxl", repo_id="",
                                                                          dtype="fp32")
    latent = nodes["DS_EmptyLatent"].execute(denoiser=denoiser, width=args.size, height=args.size, batch_size=1)[0]
    logging.disable(logging.ERROR)
    modular = ModularPipeline.from_pretrained(folder, local_files_only=True)
    modular.load_components(dtype=torch.float32)
    logging.disable(logging.NOTSET)
    modular.set_progress_bar_config(disable=True)
    pag = StableDiffusionXLPAGPipeline.from_pretrained(folder, local_files_only=True, pag_applied_layers=["mid"])
    classic = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    for pipe in (pag, classic):
        pipe.set_progress_bar_config(disable=True)

    def with_guider(make):
        def run():
            modular.update_components(guider=make())
            return modular(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps, width=args.size,
                           height=args.size, generator=torch.Generator("cpu").manual_seed(SEED), output="latents")
        return run

    def classic_pipeline(pipe, **settings):
        return lambda: pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps, width=args.size,
                            height=args.size, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(SEED),
                            output_type="latent", **settings)

    cases = {
        "cfg": ("DS_CFGGuider", {}, classic_pipeline(classic)),
        "cfg_zero_star": ("DS_CFGZeroStarGuider", {},
                          with_guider(lambda: ClassifierFreeZeroStarGuidance(guidance_scale=5.0))),
        "apg": ("DS_APGGuider", {"eta": 0.0}, with_guider(lambda: AdaptiveProjectedGuidance(guidance_scale=5.0,
                                                                                             eta=0.0))),
        "pag": ("DS_PAGGuider", {"pag_scale": 3.0}, classic_pipeline(pag, pag_scale=3.0)),
    }

    def ours(node_id, settings):  # prompts encoded each run, as the modular pipeline does
        positive = nodes["DS_TextEncode"].execute(text_encoder=text_encoder, text=PROMPT)[0]
        negative = nodes["DS_TextEncode"].execute(text_encoder=text_encoder, text=NEGATIVE)[0]
        guider = nodes[node_id].execute(positive=positive, negative=negative, cfg=5.0, **settings)[0]
        with torch.inference_mode():
            return nodes["DS_Denoise"].execute(denoiser=denoiser, guider=guider, scheduler=scheduler, latent=latent,
                                               seed=SEED, steps=args.steps)[0]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tiny SDXL {args.size} px, "
          f"{args.runs} runs x {args.steps} steps")
    print(f"{'guider':14s} {'ours s':>8s} {'diffusers s':>12s} {'ratio':>7s}")
    for name, (node_id, settings, reference) in cases.items():
        a = median_time(lambda n=node_id, s=settings: ours(n, s), args.runs)
        b = median_time(reference, args.runs)
        print(f"{name:14s} {a:8.3f} {b:12.3f} {a / b:7.3f}")

    spent = [0.0]
    for method in ("calls", "call_inputs", "combine"):  # time the guidance object's own work inside a plain-CFG run
        original = getattr(guidance_module.Guidance, method)

        def timed(self, *a, _original=original, **k):
            start = time.perf_counter()
            try:
                return _original(self, *a, **k)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(guidance_module.Guidance, method, timed)
    ours("DS_CFGGuider", {})
    spent[0] = 0.0
    start = time.perf_counter()
    ours("DS_CFGGuider", {})
    total = time.perf_counter() - start
    print(f"guidance object (plain CFG): {spent[0] * 1000:.2f} ms of {total * 1000:.0f} ms per run "
          f"({spent[0] / total:.2%})")


if __name__ == "__main__":
    main()
