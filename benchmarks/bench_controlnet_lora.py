"""Overhead of one ControlNet and of one LoRA: our graph vs the plain graph, and vs the diffusers pipeline doing the
same, side by side in one process.

    python benchmarks/bench_controlnet_lora.py [--runs 5] [--steps 10] [--size 256]

SD1.5-layout random-weight U-Net with wider channels (64, 128, 256, 256) so the networks dominate, a ControlNet
made from it, and a rank-2 LoRA on every attention projection of the U-Net and the text encoder. Each
configuration runs once to warm up, then --runs times, alternating; medians are compared. Printed ratios:
overhead = configuration / plain (ours and diffusers'), and ours / diffusers for the same configuration.
"""

from __future__ import annotations

import argparse
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

PROMPT, NEGATIVE, SEED, CFG = "a photo of a cat on a mat", "blurry", 3, 7.5


def build(root: str) -> None:
    from diffusers_stages.tiny.lora_export import save_diffusers_lora
    from diffusers_stages.tiny.models import build_controlnet, build_sd_pipeline

    pipe = build_sd_pipeline("sd1", unet_channels=(64, 128, 256, 256))
    pipe.save_pretrained(os.path.join(root, "diffusers", "bench-sd15"))
    build_controlnet(pipe.unet, 5).save_pretrained(os.path.join(root, "controlnet", "bench-controlnet"))
    os.makedirs(os.path.join(root, "loras"), exist_ok=True)
    save_diffusers_lora(pipe, os.path.join(root, "loras", "bench-lora.safetensors"), seed=6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    import diffusers
    import torch

    from diffusers_stages import host
    from diffusers_stages.nodes import NODE_CLASS_MAPPINGS as N

    root = tempfile.mkdtemp(prefix="ds-bench-")
    build(root)
    host.set_models_dir(root)
    size, steps = args.size, args.steps
    den, te, vae, spec = N["DS_LoadModel"]().execute(model="diffusers/bench-sd15", repo_id="", dtype="fp32")
    # a second copy no LoRA is ever loaded into: the plain graph on the LoRA's model runs with adapters off
    fresh_den, fresh_te, _, _ = N["DS_LoadModel"]().execute(model="diffusers/bench-sd15", repo_id="", dtype="fp32")
    net = N["DS_LoadControlNet"]().execute(controlnet_name="bench-controlnet", dtype="fp32")[0]
    lora_den, lora_te = N["DS_LoadLoRA"]().execute(denoiser=den, text_encoder=te, lora_name="bench-lora.safetensors",
                                                   strength_model=0.8, strength_text_encoder=0.8)
    control = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(1))

    def ours(denoiser, text_encoder, controlnet=None):
        def run():
            pos = N["DS_TextEncode"]().execute(text_encoder=text_encoder, text=PROMPT, clip_skip=0)[0]
            neg = N["DS_TextEncode"]().execute(text_encoder=text_encoder, text=NEGATIVE, clip_skip=0)[0]
            if controlnet is not None:
                pos, neg = N["DS_ApplyControlNet"]().execute(positive=pos, negative=neg, controlnet=controlnet,
                                                             image=control, strength=1.0)
            guider = N["DS_CFGGuider"]().execute(positive=pos, negative=neg, cfg=CFG)[0]
            latent = N["DS_EmptyLatent"]().execute(denoiser=denoiser, width=size, height=size, batch_size=1)[0]
            out = N["DS_Denoise"]().execute(denoiser=denoiser, guider=guider, scheduler=spec, latent=latent,
                                            seed=SEED, steps=steps)[0]
            return N["DS_VAEDecode"]().execute(vae=vae, samples=out)[0]
        return run

    folder = os.path.join(root, "diffusers", "bench-sd15")
    plain_pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    cn_pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(folder, controlnet=net.module,
                                                                          local_files_only=True)
    lora_pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    lora_pipe.load_lora_weights(os.path.join(root, "loras", "bench-lora.safetensors"), adapter_name="bench")
    lora_pipe.set_adapters(["bench"], adapter_weights=[0.8])
    for pipe in (plain_pipe, cn_pipe, lora_pipe):
        pipe.set_progress_bar_config(disable=True)
    image = control.movedim(-1, 1).contiguous()

    def theirs(pipe, **extra):
        def run():
            return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, width=size, height=size,
                        guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt",
                        **extra).images
        return run

    configs = {
        "ours plain": ours(fresh_den, fresh_te), "ours plain, lora off": ours(den, te),
        "ours controlnet": ours(fresh_den, fresh_te, net), "ours lora": ours(lora_den, lora_te),
        "diffusers plain": theirs(plain_pipe), "diffusers controlnet": theirs(cn_pipe, image=image),
        "diffusers lora": theirs(lora_pipe),
    }
    times = {name: [] for name in configs}
    with torch.inference_mode():
        for run in configs.values():
            run()  # warm-up
        for _ in range(args.runs):
            for name, run in configs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"SD1.5-layout U-Net (64,128,256,256), {size} px, {steps} steps, cfg {CFG}, {args.runs} runs, "
          f"torch threads {torch.get_num_threads()}")
    for name, value in median.items():
        print(f"  {name:22s} median {value:6.2f} s   min {min(times[name]):6.2f} s")
    for extra in ("controlnet", "lora"):
        print(f"{extra}: overhead ours {median['ours ' + extra] / median['ours plain']:.3f}, "
              f"diffusers {median['diffusers ' + extra] / median['diffusers plain']:.3f}; "
              f"ours/diffusers {median['ours ' + extra] / median['diffusers ' + extra]:.3f}")
    print(f"plain: ours/diffusers {median['ours plain'] / median['diffusers plain']:.3f}; the plain graph on a model "
          f"holding a LoRA (adapters off) / never loaded: {median['ours plain, lora off'] / median['ours plain']:.3f}")


if __name__ == "__main__":
    main()
