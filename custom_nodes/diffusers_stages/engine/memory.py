"""How a loaded denoiser holds its weights while it runs, chosen on the loader (``memory``):

- ``none``: all weights on the compute device (inside ComfyUI: the host loads the model, partially where its memory
  is short, see ``host.ensure_loaded``).
- ``fp8 storage``: diffusers' layerwise casting: weights stored in float8_e4m3fn and cast to the compute dtype layer
  by layer at each forward (its own skip list keeps norms and embeddings; layers a quantized file already keeps
  quantized are skipped). About half the weight memory of bf16; lossy, as the fp8 files are.
- ``group offload``: diffusers' group offloading by blocks: each transformer block moves to the compute device when
  it runs and back to the CPU after.
- ``sequential offload``: the same per leaf layer (diffusers' leaf-level offloading): the least device memory, the
  most transfers.

The offload options take the model out of the host's hands: diffusers' hooks move it, so the host neither loads
nor unloads it. On the CPU the offload options change nothing but the bookkeeping (compute and offload device are
the same); the images are the same as without them.
"""

from __future__ import annotations

import torch

from .errors import InputError

MEMORY_OPTIONS = ("none", "fp8 storage", "group offload", "sequential offload")
MEMORY_TOOLTIP = ("How the denoiser's weights are held while it runs. none: on the GPU (ComfyUI loads them partially "
                  "when memory is short). fp8 storage: stored in fp8, cast layer by layer (about half of bf16; "
                  "lossy). group offload: each block moves to the GPU when it runs. sequential offload: each layer "
                  "does (least GPU memory, slowest).")
OFFLOADS = {"group offload": "block_level", "sequential offload": "leaf_level"}


def apply_memory_option(module, option: str, compute_dtype: torch.dtype, compute_device: torch.device,
                        input_name: str = "memory") -> None:
    """Set ``module`` (a diffusers model, on the CPU) up for ``option`` (in place)."""
    from .quantized import QuantizedLinear

    if option == "none":
        return
    if option not in MEMORY_OPTIONS:
        raise InputError(input_name, f"'{option}' is not a memory option.",
                         f"choose one of {', '.join(MEMORY_OPTIONS)}.")
    if not hasattr(module, "enable_group_offload"):
        raise InputError(input_name, f"the {type(module).__name__} is not a diffusers model, so '{option}' does not "
                         "apply to it.", "choose memory: none.")
    if option == "fp8 storage":
        module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype,
                                        skip_modules_classes=(QuantizedLinear,))
        return
    level = OFFLOADS[option]
    module.enable_group_offload(onload_device=compute_device, offload_device=torch.device("cpu"), offload_type=level,
                                num_blocks_per_group=1 if level == "block_level" else None,
                                use_stream=compute_device.type == "cuda")


def offloaded(module) -> bool:
    """Whether diffusers' offload hooks move ``module`` (the host must not)."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return _is_group_offload_enabled(module)
