"""SD3 and Flux transformers from files in their original release layouts (``dit_keys``), and single-file SD3/Flux
checkpoints (transformer, VAE and whichever text encoders they bundle)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..text_files import CHECKPOINT_TEXT_PREFIXES, text_encoder_from_parts, text_part_from_tensors
from ..vae_loading import vae_config, vae_from_tensors
from ..weights import empty, fill, read_tensors
from . import dit_keys
from .folders import assemble


@dataclass(frozen=True)
class DitLayout:
    """A family's transformer files: the diffusers class they become, what the layout is called in messages, and the
    ``dit_keys`` functions that recognise the file, read its config and map its names."""

    class_name: str
    label: str
    claims: Callable[..., bool]
    config: Callable[..., dict]
    rules: Callable[..., list]

    def load(self, path: str, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, input_name: str):
        import diffusers

        return load_dit(path, shapes, dtype, getattr(diffusers, self.class_name), self.config, self.rules, self.label,
                        input_name)


def load_dit(path: str, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, module_class, config_of, rules_of,
             what: str, input_name: str):
    """A transformer in its original release layout (``dit_keys``), with or without the checkpoint prefix."""
    from ..quantized import gather

    prefix = dit_keys.strip_prefix(shapes)
    body = {k[len(prefix):]: shape for k, shape in shapes.items() if k.startswith(prefix)}
    config = config_of(body)
    module = empty(module_class, config)
    target = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    tensors = gather(read_tensors(path, prefix), input_name, os.path.basename(path))
    state, unused, missing = dit_keys.to_diffusers(tensors, rules_of(config), target)
    if missing or unused:
        problem = (f"lacks {len(missing)} tensors (e.g. '{missing[0]}')" if missing else
                   f"has {len(unused)} tensors this loader does not understand (e.g. '{unused[0]}')")
        raise InputError(input_name, f"'{os.path.basename(path)}' is laid out as a {what} but {problem}.",
                         "use the original release file (bf16/fp16/fp8/GGUF) of the model.")
    return fill(module, state, dtype, what, input_name)


def load_dit_checkpoint(family, path: str, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                        vocab_dirs: tuple[str, ...], t5_dirs: Iterable[str]):
    """A single-file SD3/Flux checkpoint: the transformer under ``model.diffusion_model.``, the VAE
    (``first_stage_model.`` or ``vae.``), and whichever text encoders it bundles (``text_encoders.<kind>.``).
    Without its required text encoders the model still loads; Text Encode then says where to get them."""
    module, scheduler = family.denoiser_from_file(path, shapes, dtype, "model")
    _, _, vae_prefix = vae_config(shapes, input_name="model")
    vae = vae_from_tensors(read_tensors(path, vae_prefix), family, dtype, path, "model")
    parts = {}
    for slot in family.text_slots:
        prefix = CHECKPOINT_TEXT_PREFIXES[slot.kind]
        if any(k.startswith(prefix) for k in shapes):
            parts[slot.kind] = text_part_from_tensors(read_tensors(path, prefix), slot, dtype, vocab_dirs, t5_dirs,
                                                      "model")
    try:
        text_parts = text_encoder_from_parts(family, parts, path).parts
    except InputError:
        text_parts = ()
    return assemble(family, module, text_parts, vae.module, scheduler, path)
