"""The released SD1.x, SD2.x and SDXL configs this pack bundles, and reading a U-Net's, VAE's or CLIP text
encoder's real sizes from a file's tensor shapes on top of them (single files carry no config)."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ..vae_loading import norm_groups, vae_config

_CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
_UNET = "model.diffusion_model."  # the U-Net's prefix in a single-file checkpoint


def bundled_config(variant: str) -> dict[str, Any]:
    with open(os.path.join(_CONFIG_DIR, f"{variant}.json"), encoding="utf-8") as f:
        return json.load(f)


def clip_base_config(kind: str) -> dict[str, Any]:
    """The released config of a CLIP-L ("clip_l") or OpenCLIP-G ("clip_g") text encoder, as SDXL ships them (the
    same encoders SD3 and Flux use)."""
    return bundled_config("sdxl")["text_encoder" if kind == "clip_l" else "text_encoder_2"]


def _count(keys, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := regex.match(k))})


def infer_unet_config(base: dict[str, Any], shapes: dict[str, tuple[int, ...]], heads: str,
                      at: str = _UNET) -> dict[str, Any]:
    """The bundled UNet config with every size the checkpoint's tensors reveal taken from the tensors.

    ``heads``: "fixed" keeps the bundled head count (SD1: 8 heads); "per64" uses 64-wide heads, as SD2 and SDXL.
    ``at``: where the U-Net's keys start (a ControlNet's encoder half has the same layout).
    """
    levels, current, k = [], [], 1
    while True:
        prefix = f"{at}input_blocks.{k}.0."
        if prefix + "op.weight" in shapes:
            levels.append(current)
            current = []
        elif prefix + "in_layers.0.weight" in shapes:
            current.append(k)
        else:
            break
        k += 1
    levels.append(current)
    channels = [shapes[f"{at}input_blocks.{level[0]}.0.out_layers.3.weight"][0] for level in levels]
    attention = [f"{at}input_blocks.{level[0]}.1.proj_in.weight" in shapes for level in levels]
    first = next(level[0] for level, has in zip(levels, attention) if has)
    attn = f"{at}input_blocks.{first}.1."
    depths = [_count(shapes, re.escape(f"{at}input_blocks.{level[0]}.1.") + r"transformer_blocks\.(\d+)\.")
              if has else 1 for level, has in zip(levels, attention)]
    config = dict(base)
    config.update(
        in_channels=shapes[f"{at}input_blocks.0.0.weight"][1],
        out_channels=shapes.get(f"{at}out.2.weight", shapes[f"{at}input_blocks.0.0.weight"][1:])[0],
        block_out_channels=channels,
        layers_per_block=len(levels[0]),
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        cross_attention_dim=shapes[attn + "transformer_blocks.0.attn2.to_k.weight"][1],
        use_linear_projection=len(shapes[attn + "proj_in.weight"]) == 2,
        transformer_layers_per_block=depths,
        norm_num_groups=norm_groups(channels),
    )
    if heads == "per64":
        config["attention_head_dim"] = [max(1, c // 64) for c in channels]
    label = f"{at}label_emb.0.0.weight"
    if label in shapes:  # SDXL's text-time embedding: 6 time ids of addition_time_embed_dim + the pooled prompt
        config["projection_class_embeddings_input_dim"] = shapes[label][1]
    return config


def infer_vae_config(base: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    return vae_config(shapes, base)[0]


def infer_text_encoder_config(base: dict[str, Any], shapes: dict[str, tuple[int, ...]], layout: str, prefix: str,
                               drop_last: bool = False) -> dict[str, Any]:
    """A CLIP text encoder's config from its tensors. ``layout``: "clip" (OpenAI/transformers key names) or
    "open_clip" (OpenCLIP); ``drop_last``: SD2 uses the penultimate OpenCLIP layer, so diffusers keeps one fewer."""
    if layout == "clip":
        vocab, hidden = shapes[prefix + "embeddings.token_embedding.weight"]
        positions = shapes[prefix + "embeddings.position_embedding.weight"][0]
        layers = _count(shapes, re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
        intermediate = shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0]
        projection = base["projection_dim"]
    else:
        vocab, hidden = shapes[prefix + "token_embedding.weight"]
        positions = shapes[prefix + "positional_embedding"][0]
        layers = _count(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.") - int(drop_last)
        intermediate = shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
        projection = shapes.get(prefix + "text_projection", (hidden, base["projection_dim"]))[1]
    config = dict(base)
    config.update(vocab_size=vocab, hidden_size=hidden, max_position_embeddings=positions, num_hidden_layers=layers,
                  intermediate_size=intermediate, num_attention_heads=max(1, hidden // 64), projection_dim=projection,
                  bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    return config
