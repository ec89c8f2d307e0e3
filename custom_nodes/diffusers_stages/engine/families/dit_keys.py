"""The original key layouts of the SD3 (MMDiT, Stability AI), Flux.1 and Flux.2 (Black Forest Labs) and Z-Image
(Tongyi-MAI) transformers.

ComfyUI users have these models as the original releases: ``sd3.5_medium.safetensors``,
``flux1-dev.safetensors`` and so on, in ``models/checkpoints`` (with ``model.diffusion_model.``
before every key) or ``models/diffusion_models`` (no prefix). A conversion here is a list of
rules, one per original tensor: copied to one diffusers tensor, split along dim 0 into several
(fused q/k/v projections), or with its two halves swapped (the final adaptive norms, whose
shift/scale order differs). The same rules convert both ways; split sizes come from the diffusers
model's own shapes, so any width converts (diffusers' Flux converter assumes the 3072-wide release).

The architecture (layer counts, widths, heads) is read from the tensor shapes; what the tensors
cannot tell is taken from the released models.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from ..quantized import cat_rows, split_rows

ORIGINAL_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class Rule:
    original: str
    diffusers: tuple[str, ...]
    kind: str = "copy"  # "copy" | "split" (dim 0, in order) | "swap" (halves exchanged) | "drop" (not used)


def _linear(original: str, *diffusers: str, kind: str | None = None) -> list[Rule]:
    """Rules for a layer's weight and bias."""
    kind = kind or ("split" if len(diffusers) > 1 else "copy")
    return [Rule(f"{original}.{p}", tuple(f"{d}.{p}" for d in diffusers), kind) for p in ("weight", "bias")]


def _indices(keys, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def strip_prefix(keys) -> str:
    """The prefix the transformer's keys carry in this file ('' or 'model.diffusion_model.')."""
    return ORIGINAL_PREFIX if any(k.startswith(ORIGINAL_PREFIX) for k in keys) else ""


# ---- SD3 / SD3.5 ----------------------------------------------------------------------------------
def is_sd3(keys) -> bool:
    return any(k.startswith(("joint_blocks.", ORIGINAL_PREFIX + "joint_blocks.")) for k in keys)


def sd3_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """SD3Transformer2DModel config from the original tensors (prefix already removed)."""
    layers = _indices(shapes, r"joint_blocks\.(\d+)\.")
    hidden, in_channels, patch, _ = shapes["x_embedder.proj.weight"]
    qk_norm = "joint_blocks.0.x_block.attn.ln_q.weight" in shapes
    head_dim = shapes["joint_blocks.0.x_block.attn.ln_q.weight"][0] if qk_norm else 64  # SD3 medium: 64-wide heads
    return {
        "sample_size": 128, "patch_size": patch, "in_channels": in_channels,
        "out_channels": shapes["final_layer.linear.weight"][0] // (patch * patch),
        "num_layers": len(layers), "attention_head_dim": head_dim, "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shapes["context_embedder.weight"][1],
        "caption_projection_dim": shapes["context_embedder.weight"][0],
        "pooled_projection_dim": shapes["y_embedder.mlp.0.weight"][1],
        "pos_embed_max_size": math.isqrt(shapes["pos_embed"][1]),
        "dual_attention_layers": tuple(_indices(shapes, r"joint_blocks\.(\d+)\.x_block\.attn2\.")),
        "qk_norm": "rms_norm" if qk_norm else None,
    }


def sd3_rules(config: dict[str, Any]) -> list[Rule]:
    rules = [Rule("pos_embed", ("pos_embed.pos_embed",))]
    rules += _linear("x_embedder.proj", "pos_embed.proj")
    rules += _linear("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    rules += _linear("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    rules += _linear("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    rules += _linear("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    rules += _linear("context_embedder", "context_embedder")
    last = config["num_layers"] - 1
    for i in range(config["num_layers"]):
        x, c, d = f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block", f"transformer_blocks.{i}"
        rules += _linear(f"{x}.attn.qkv", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v")
        rules += _linear(f"{c}.attn.qkv", f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj")
        rules += _linear(f"{x}.attn.proj", f"{d}.attn.to_out.0")
        rules += _linear(f"{x}.adaLN_modulation.1", f"{d}.norm1.linear")
        # the last block's context stream only modulates (no attention output, no MLP), with shift/scale swapped
        rules += _linear(f"{c}.adaLN_modulation.1", f"{d}.norm1_context.linear", kind="swap" if i == last else None)
        rules += _linear(f"{x}.mlp.fc1", f"{d}.ff.net.0.proj") + _linear(f"{x}.mlp.fc2", f"{d}.ff.net.2")
        if i != last:
            rules += _linear(f"{c}.attn.proj", f"{d}.attn.to_add_out")
            rules += _linear(f"{c}.mlp.fc1", f"{d}.ff_context.net.0.proj")
            rules += _linear(f"{c}.mlp.fc2", f"{d}.ff_context.net.2")
        if config["qk_norm"]:
            rules += [Rule(f"{x}.attn.ln_q.weight", (f"{d}.attn.norm_q.weight",)),
                      Rule(f"{x}.attn.ln_k.weight", (f"{d}.attn.norm_k.weight",)),
                      Rule(f"{c}.attn.ln_q.weight", (f"{d}.attn.norm_added_q.weight",)),
                      Rule(f"{c}.attn.ln_k.weight", (f"{d}.attn.norm_added_k.weight",))]
        if i in config["dual_attention_layers"]:  # SD3.5 medium (MMDiT-X): a second self-attention
            rules += _linear(f"{x}.attn2.qkv", f"{d}.attn2.to_q", f"{d}.attn2.to_k", f"{d}.attn2.to_v")
            rules += _linear(f"{x}.attn2.proj", f"{d}.attn2.to_out.0")
            if config["qk_norm"]:
                rules += [Rule(f"{x}.attn2.ln_q.weight", (f"{d}.attn2.norm_q.weight",)),
                          Rule(f"{x}.attn2.ln_k.weight", (f"{d}.attn2.norm_k.weight",))]
    rules += _linear("final_layer.linear", "proj_out")
    rules += _linear("final_layer.adaLN_modulation.1", "norm_out.linear", kind="swap")
    return rules


# ---- Flux.1 ---------------------------------------------------------------------------------------
def is_flux(keys) -> bool:
    return (any(k.startswith(("double_blocks.", ORIGINAL_PREFIX + "double_blocks.")) for k in keys)
            and not is_flux2(keys))


def flux_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Rotary dims per position axis (index, row, column): (16, 56, 56) for the released 128-wide heads. The
    tensors do not record them; narrower heads keep the same proportions in even numbers."""
    side = (7 * head_dim // 16) // 2 * 2
    return head_dim - 2 * side, side, side


def bfl_blocks(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """What Black Forest Labs' layout tells alike for Flux.1 and Flux.2: widths, heads, block counts, text width,
    whether a guidance embedding is there."""
    hidden, in_channels = shapes["img_in.weight"]
    head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    return {
        "patch_size": 1, "in_channels": in_channels, "out_channels": shapes["final_layer.linear.weight"][0],
        "num_layers": len(_indices(shapes, r"double_blocks\.(\d+)\.")),
        "num_single_layers": len(_indices(shapes, r"single_blocks\.(\d+)\.")),
        "attention_head_dim": head_dim, "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shapes["txt_in.weight"][1],
        "guidance_embeds": "guidance_in.in_layer.weight" in shapes,
    }


def flux_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    config = bfl_blocks(shapes)
    return dict(config, pooled_projection_dim=shapes["vector_in.in_layer.weight"][1],
                axes_dims_rope=flux_rope_axes(config["attention_head_dim"]))


def flux_rules(config: dict[str, Any]) -> list[Rule]:
    rules = []
    for original, embedder in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                               ("guidance_in", "guidance_embedder")):
        if original == "guidance_in" and not config["guidance_embeds"]:
            continue
        rules += _linear(f"{original}.in_layer", f"time_text_embed.{embedder}.linear_1")
        rules += _linear(f"{original}.out_layer", f"time_text_embed.{embedder}.linear_2")
    rules += _linear("txt_in", "context_embedder") + _linear("img_in", "x_embedder")
    for i in range(config["num_layers"]):
        o, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        rules += _linear(f"{o}.img_mod.lin", f"{d}.norm1.linear")
        rules += _linear(f"{o}.txt_mod.lin", f"{d}.norm1_context.linear")
        rules += _linear(f"{o}.img_attn.qkv", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v")
        rules += _linear(f"{o}.txt_attn.qkv", f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj")
        rules += [Rule(f"{o}.img_attn.norm.query_norm.scale", (f"{d}.attn.norm_q.weight",)),
                  Rule(f"{o}.img_attn.norm.key_norm.scale", (f"{d}.attn.norm_k.weight",)),
                  Rule(f"{o}.txt_attn.norm.query_norm.scale", (f"{d}.attn.norm_added_q.weight",)),
                  Rule(f"{o}.txt_attn.norm.key_norm.scale", (f"{d}.attn.norm_added_k.weight",))]
        rules += _linear(f"{o}.img_mlp.0", f"{d}.ff.net.0.proj") + _linear(f"{o}.img_mlp.2", f"{d}.ff.net.2")
        rules += _linear(f"{o}.txt_mlp.0", f"{d}.ff_context.net.0.proj")
        rules += _linear(f"{o}.txt_mlp.2", f"{d}.ff_context.net.2")
        rules += _linear(f"{o}.img_attn.proj", f"{d}.attn.to_out.0")
        rules += _linear(f"{o}.txt_attn.proj", f"{d}.attn.to_add_out")
    for i in range(config["num_single_layers"]):
        o, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        rules += _linear(f"{o}.modulation.lin", f"{d}.norm.linear")
        rules += _linear(f"{o}.linear1", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp")
        rules += [Rule(f"{o}.norm.query_norm.scale", (f"{d}.attn.norm_q.weight",)),
                  Rule(f"{o}.norm.key_norm.scale", (f"{d}.attn.norm_k.weight",))]
        rules += _linear(f"{o}.linear2", f"{d}.proj_out")
    rules += _linear("final_layer.linear", "proj_out")
    rules += _linear("final_layer.adaLN_modulation.1", "norm_out.linear", kind="swap")
    return rules


# ---- Flux.2 (dev, klein) ---------------------------------------------------------------------------
# Black Forest Labs' layout (flux2-dev.safetensors, flux-2-klein-4b.safetensors): Flux.1's block names, modulation
# shared by all blocks of a kind, no biases, SwiGLU MLPs; single blocks keep their fused projections in diffusers too.
def is_flux2(keys) -> bool:
    return any(k.startswith(("single_stream_modulation.", ORIGINAL_PREFIX + "single_stream_modulation."))
               for k in keys)


def flux2_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """What the tensors tell; rope_theta (2000), eps (1e-6) and the rotary axes (four equal ones: 32 each for the
    released 128-wide heads) leave no tensor and take the released models' values."""
    config = bfl_blocks(shapes)
    hidden = config["attention_head_dim"] * config["num_attention_heads"]
    return dict(config, timestep_guidance_channels=shapes["time_in.in_layer.weight"][1],
                mlp_ratio=shapes["double_blocks.0.img_mlp.0.weight"][0] / 2 / hidden,  # SwiGLU: gate, value in one
                axes_dims_rope=(config["attention_head_dim"] // 4,) * 4, rope_theta=2000, eps=1e-6)


def flux2_rules(config: dict[str, Any]) -> list[Rule]:
    def weight(original, *diffusers, kind=None):
        return [Rule(f"{original}.weight", tuple(f"{d}.weight" for d in diffusers),
                     kind or ("split" if len(diffusers) > 1 else "copy"))]

    def norm(original, diffusers):
        return [Rule(f"{original}.scale", (f"{diffusers}.weight",))]

    embedders = [("time_in", "timestep_embedder")] + [("guidance_in", "guidance_embedder")] * config["guidance_embeds"]
    rules = []
    for original, embedder in embedders:
        rules += weight(f"{original}.in_layer", f"time_guidance_embed.{embedder}.linear_1")
        rules += weight(f"{original}.out_layer", f"time_guidance_embed.{embedder}.linear_2")
    for name in ("double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation"):
        rules += weight(f"{name}.lin", f"{name}.linear")
    rules += weight("img_in", "x_embedder") + weight("txt_in", "context_embedder")
    for i in range(config["num_layers"]):
        o, d = f"double_blocks.{i}", f"transformer_blocks.{i}.attn"
        rules += weight(f"{o}.img_attn.qkv", f"{d}.to_q", f"{d}.to_k", f"{d}.to_v")
        rules += weight(f"{o}.txt_attn.qkv", f"{d}.add_q_proj", f"{d}.add_k_proj", f"{d}.add_v_proj")
        rules += norm(f"{o}.img_attn.norm.query_norm", f"{d}.norm_q")
        rules += norm(f"{o}.img_attn.norm.key_norm", f"{d}.norm_k")
        rules += norm(f"{o}.txt_attn.norm.query_norm", f"{d}.norm_added_q")
        rules += norm(f"{o}.txt_attn.norm.key_norm", f"{d}.norm_added_k")
        rules += weight(f"{o}.img_attn.proj", f"{d}.to_out.0") + weight(f"{o}.txt_attn.proj", f"{d}.to_add_out")
        for stream, ff in (("img", "ff"), ("txt", "ff_context")):
            rules += weight(f"{o}.{stream}_mlp.0", f"transformer_blocks.{i}.{ff}.linear_in")
            rules += weight(f"{o}.{stream}_mlp.2", f"transformer_blocks.{i}.{ff}.linear_out")
    for i in range(config["num_single_layers"]):
        o, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}.attn"
        rules += weight(f"{o}.linear1", f"{d}.to_qkv_mlp_proj") + weight(f"{o}.linear2", f"{d}.to_out")
        rules += norm(f"{o}.norm.query_norm", f"{d}.norm_q") + norm(f"{o}.norm.key_norm", f"{d}.norm_k")
    rules += weight("final_layer.linear", "proj_out")
    rules += weight("final_layer.adaLN_modulation.1", "norm_out.linear", kind="swap")
    return rules


# ---- Z-Image ----------------------------------------------------------------------------------------
Z_IMAGE_PATCH = "2-1"  # the released models' only patch sizes (2x2 spatial, 1 frame): diffusers' embedder key


def is_z_image(keys) -> bool:
    return any(k.startswith(("context_refiner.", ORIGINAL_PREFIX + "context_refiner.")) for k in keys)


def z_image_rope_axes(head_dim: int) -> list[int]:
    """Rotary dims per axis (caption/frame, row, column): [32, 48, 48] for the released 128-wide heads; the tensors
    do not record them, narrower heads keep the proportions."""
    return [head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8]


def z_image_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    dim, patch_values = shapes["x_embedder.weight"]
    head_dim = shapes["layers.0.attention.q_norm.weight"][0]
    heads = dim // head_dim
    return {
        "all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": patch_values // 4, "dim": dim,
        "n_layers": len(_indices(shapes, r"layers\.(\d+)\.")),
        "n_refiner_layers": len(_indices(shapes, r"noise_refiner\.(\d+)\.")), "n_heads": heads,
        "n_kv_heads": (shapes["layers.0.attention.qkv.weight"][0] // head_dim - heads) // 2, "qk_norm": True,
        "cap_feat_dim": shapes["cap_embedder.1.weight"][1], "axes_dims": z_image_rope_axes(head_dim),
    }


def z_image_rules(config: dict[str, Any]) -> list[Rule]:
    def weight(original, diffusers):
        return [Rule(f"{original}.weight", (f"{diffusers}.weight",))]

    patch = f"all_x_embedder.{Z_IMAGE_PATCH}"
    rules = [Rule("x_pad_token", ("x_pad_token",)), Rule("cap_pad_token", ("cap_pad_token",)),
             Rule("norm_final.weight", (), "drop")]  # the original's final norm, which diffusers does not use
    rules += _linear("x_embedder", patch) + _linear("t_embedder.mlp.0", "t_embedder.mlp.0")
    rules += _linear("t_embedder.mlp.2", "t_embedder.mlp.2") + weight("cap_embedder.0", "cap_embedder.0")
    rules += _linear("cap_embedder.1", "cap_embedder.1")
    final = f"all_final_layer.{Z_IMAGE_PATCH}"
    rules += _linear("final_layer.linear", f"{final}.linear")
    rules += _linear("final_layer.adaLN_modulation.1", f"{final}.adaLN_modulation.1")
    blocks = [(f"noise_refiner.{i}", True) for i in range(config["n_refiner_layers"])]
    blocks += [(f"context_refiner.{i}", False) for i in range(config["n_refiner_layers"])]
    blocks += [(f"layers.{i}", True) for i in range(config["n_layers"])]
    for block, modulated in blocks:  # the same names both ways, except the fused q/k/v and the attention output
        rules.append(Rule(f"{block}.attention.qkv.weight", tuple(f"{block}.attention.to_{x}.weight" for x in "qkv"),
                          "split"))
        rules += weight(f"{block}.attention.out", f"{block}.attention.to_out.0")
        rules += weight(f"{block}.attention.q_norm", f"{block}.attention.norm_q")
        rules += weight(f"{block}.attention.k_norm", f"{block}.attention.norm_k")
        for name in ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "attention_norm1", "ffn_norm1",
                     "attention_norm2", "ffn_norm2"):
            rules += weight(f"{block}.{name}", f"{block}.{name}")
        if modulated:
            rules += _linear(f"{block}.adaLN_modulation.0", f"{block}.adaLN_modulation.0")
    return rules


# ---- Qwen-Image -------------------------------------------------------------------------------------
# ComfyUI's Qwen-Image model uses diffusers' own module names, so its files (qwen_image_bf16.safetensors) hold
# diffusers' keys (diffusers' single-file loader maps them as they are), with or without the checkpoint prefix.
def is_qwen_image(keys) -> bool:
    return any(k.startswith(("transformer_blocks.0.img_mod.", ORIGINAL_PREFIX + "transformer_blocks.0.img_mod."))
               for k in keys)


def qwen_image_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """What the tensors tell; guidance_embeds and use_layer3d_rope leave no tensor and take the released
    Qwen-Image's values (False). Qwen-Image-Edit-2511 (zero_cond_t: the reference pictures' tokens modulated at
    timestep 0) leaves none either; Comfy-Org's files mark it with an empty ``__index_timestep_zero__`` tensor."""
    hidden, in_channels = shapes["img_in.weight"]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    return {
        "patch_size": 2, "in_channels": in_channels, "out_channels": shapes["proj_out.weight"][0] // 4,
        "num_layers": len(_indices(shapes, r"transformer_blocks\.(\d+)\.")), "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim, "joint_attention_dim": shapes["txt_in.weight"][1],
        "axes_dims_rope": flux_rope_axes(head_dim),
        "use_additional_t_cond": "time_text_embed.addition_t_embedding.weight" in shapes,
        "zero_cond_t": any(key.endswith("__index_timestep_zero__") for key in shapes),
    }


def qwen_image_rules(config: dict[str, Any]) -> list[Rule]:
    """Every tensor under its own name (2511's marker read for the config only)."""
    from diffusers import QwenImageTransformer2DModel

    from ..weights import empty

    marker = [Rule("__index_timestep_zero__", (), "drop")] if config.get("zero_cond_t") else []
    return [Rule(key, (key,)) for key in empty(QwenImageTransformer2DModel, config).state_dict()] + marker


# ---- conversion, both ways --------------------------------------------------------------------------
def _swap(tensor):
    """The two halves of the rows swapped (shift/scale vs scale/shift), for plain and quantized weights alike."""
    half = tensor.shape[0] // 2
    first, second = split_rows(tensor, [half, half])
    return cat_rows([second, first])


def to_diffusers(original: dict[str, torch.Tensor], rules: list[Rule],
                 target_shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(diffusers state dict, original keys no rule used, rule keys the file lacks)."""
    converted, missing = {}, []
    for rule in rules:
        tensor = original.get(rule.original)
        if rule.kind == "drop":
            continue
        if tensor is None:
            missing.append(rule.original)
            continue
        if rule.kind == "split":
            sizes = [target_shapes[name][0] for name in rule.diffusers]
            converted.update(zip(rule.diffusers, split_rows(tensor, sizes), strict=True))
        else:
            converted[rule.diffusers[0]] = _swap(tensor) if rule.kind == "swap" else tensor
    used = {rule.original for rule in rules}
    return converted, sorted(set(original) - used), missing


def to_original(state: dict[str, torch.Tensor], rules: list[Rule]) -> dict[str, torch.Tensor]:
    """The inverse of ``to_diffusers`` (used to write the original layout, e.g. for tests)."""
    out = {}
    for rule in rules:
        if rule.kind == "drop":
            continue
        if rule.kind == "split":
            out[rule.original] = torch.cat([state[name] for name in rule.diffusers], dim=0)
        else:
            tensor = state[rule.diffusers[0]]
            out[rule.original] = _swap(tensor) if rule.kind == "swap" else tensor
    return out
