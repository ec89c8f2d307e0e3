"""Memory and time of quantized files kept quantized (dequantized per layer at each forward) against the same model
in bf16 (and fp32): ComfyUI's scaled fp8 and int8 convrot, city96's GGUF Q8_0 and Q4_K.

    python benchmarks/bench_quantized.py [--width 1024] [--layers 4] [--runs 5]

A Flux.2-shaped transformer with random weights (width --width, --layers double and 2x single blocks) is written
as the files ComfyUI users have: bf16, scaled fp8 and int8 convrot (ComfyUI's layouts: block weights quantized,
weight_scale, comfy_quant), GGUF Q8_0 and Q4_K (city96's). Each is loaded by Load Diffusion Model in a fresh process
(compute dtype bf16; the fp32 row loads the bf16 file in fp32), and the bf16 file with each memory option of the
loader (fp8 storage, group offload, sequential offload: on the CPU the offloads move nothing, so their rows give
their time overhead, not a memory saving); reported: the model's
weight bytes, the process's peak RSS above its baseline after imports once loaded and after the calls, and the time
of one transformer call on 1024 image tokens + 512 text tokens (median of --runs). A bf16 file's weights stay
memory-mapped until a forward touches them, so the peak after the calls is the one to compare. Ratios are against
bf16 (goal for fp8 and Q8_0: <= 0.55 x bf16 weight memory).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(os.path.dirname(HERE), "custom_nodes"), os.path.join(os.path.dirname(HERE), "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def write_files(root: str, width: int, layers: int) -> None:
    import torch
    from diffusers import Flux2Transformer2DModel
    from safetensors.torch import save_file

    from diffusers_stages.tiny.ldm_export import dit_to_original
    from diffusers_stages.tiny.quantized_files import fp8_file, gguf_file, int8_file

    torch.manual_seed(0)
    model = Flux2Transformer2DModel(in_channels=128, num_layers=layers, num_single_layers=2 * layers,
                                    attention_head_dim=128, num_attention_heads=width // 128, joint_attention_dim=768,
                                    timestep_guidance_channels=256, axes_dims_rope=(32, 32, 32, 32),
                                    guidance_embeds=False)
    original = dit_to_original(model)
    folder = os.path.join(root, "diffusion_models")
    os.makedirs(folder, exist_ok=True)
    bf16 = {k: v.to(torch.bfloat16).contiguous() for k, v in original.items()}
    save_file(bf16, os.path.join(folder, "bf16.safetensors"))
    fp8_file(os.path.join(folder, "fp8.safetensors"), bf16, scaled=True)  # other tensors stay bf16
    int8_file(os.path.join(folder, "int8-convrot.safetensors"), bf16, convrot_groupsize=256)
    gguf_file(os.path.join(folder, "Q8_0.gguf"), bf16, "flux", ("Q8_0",))
    gguf_file(os.path.join(folder, "Q4_K.gguf"), bf16, "flux", ("Q4_K",))


def child(root: str, name: str, runs: int, dtype: str, memory: str) -> None:
    import torch

    from diffusers_stages import host
    from diffusers_stages.nodes import NODE_CLASS_MAPPINGS as N

    host.set_models_dir(root)
    base = rss_mb()
    denoiser, _ = N["DS_LoadDiffusionModel"]().execute(model_name=name, dtype=dtype, memory=memory)
    module = denoiser.module
    weight_bytes = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    loaded = rss_mb("VmHWM") - base
    hidden = torch.randn(1, 1024, 128, dtype=module.dtype)
    text = torch.randn(1, 512, module.config.joint_attention_dim, dtype=module.dtype)
    img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(32), torch.arange(32), torch.arange(1))[None]
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(512))[None]
    times = []
    with torch.inference_mode():
        for _ in range(runs + 1):
            start = time.perf_counter()
            module(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([0.5]), img_ids=img_ids,
                   txt_ids=txt_ids, guidance=None, return_dict=False)
            times.append(time.perf_counter() - start)
    print(json.dumps({"peak_mb": rss_mb("VmHWM") - base, "load_peak_mb": loaded, "weights_mb": weight_bytes / 2**20,
                      "seconds": statistics.median(times[1:])}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", nargs=4, metavar=("ROOT", "NAME", "DTYPE", "MEMORY"))
    args = parser.parse_args()
    if args.child:
        root, name, dtype, memory = args.child
        child(root, name, args.runs, dtype, memory)
        return
    import torch

    root = tempfile.mkdtemp(prefix="bench-quantized-")
    write_files(root, args.width, args.layers)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Flux.2-shaped transformer, width "
          f"{args.width}, {args.layers} double + {2 * args.layers} single blocks, compute dtype bf16")
    results = {}
    runs = [("bf16", "bf16.safetensors", "bf16", "none"), ("fp32", "bf16.safetensors", "fp32", "none"),
            ("fp8 scaled", "fp8.safetensors", "bf16", "none"),
            ("int8 convrot", "int8-convrot.safetensors", "bf16", "none"),
            ("GGUF Q8_0", "Q8_0.gguf", "bf16", "none"), ("GGUF Q4_K", "Q4_K.gguf", "bf16", "none"),
            ("fp8 storage", "bf16.safetensors", "bf16", "fp8 storage"),
            ("group offl.", "bf16.safetensors", "bf16", "group offload"),
            ("sequential", "bf16.safetensors", "bf16", "sequential offload")]
    for label, name, dtype, memory in runs:
        out = subprocess.run([sys.executable, __file__, "--runs", str(args.runs), "--child", root, name, dtype,
                              memory], capture_output=True, text=True, check=True).stdout
        results[label] = r = json.loads(out.strip().splitlines()[-1])
        print(f"{label:13s} weights {r['weights_mb']:7.1f} MB   peak RSS of the load +{r['load_peak_mb']:7.1f} MB, "
              f"with a forward +{r['peak_mb']:7.1f} MB   forward {r['seconds'] * 1000:7.1f} ms")
    bf16 = results["bf16"]
    for label, r in results.items():
        if label != "bf16":
            print(f"{label:13s} / bf16: weights {r['weights_mb'] / bf16['weights_mb']:.3f}, peak RSS of the load "
                  f"{r['load_peak_mb'] / bf16['load_peak_mb']:.3f}, with a forward {r['peak_mb'] / bf16['peak_mb']:.3f}"
                  f", forward time {r['seconds'] / bf16['seconds']:.3f}")


if __name__ == "__main__":
    main()
