"""Models as separate files, as ComfyUI users keep them: a denoiser in ``models/diffusion_models``, text encoders
in ``models/text_encoders``, a VAE in ``models/vae``; and the same components bundled in one checkpoint.

Each component is built from the tensors' shapes (nothing is downloaded), on the meta device first so
a 12B transformer is not allocated twice, then filled with the file's tensors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .components import Denoiser, TextEncoder, TextPart, Vae
from .errors import InputError
from .loading import open_safetensors


@dataclass(frozen=True)
class TextSlot:
    """One text encoder a family takes: ``kind`` is the file it comes from (clip_l, clip_g, t5)."""

    kind: str
    projection: bool  # CLIPTextModelWithProjection (its projected pooled output is used)
    required: bool = True


TEXT_KINDS = {"clip_l": "CLIP-L (clip_l.safetensors)", "clip_g": "CLIP-G (clip_g.safetensors)",
              "t5": "T5-XXL (t5xxl_*.safetensors)"}
CLIP_PAD_TOKENS = {"clip_l": "<|endoftext|>", "clip_g": "!"}  # as the released tokenizers (OpenCLIP-G pads with "!")


def read_tensors(path: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (removed from their names), memory-mapped until used."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {key[len(prefix):]: f.get_tensor(key) for key in f.keys() if key.startswith(prefix)}


def empty(module_class, config):
    """The model's structure with its parameters on the meta device (nothing allocated yet)."""
    from accelerate import init_empty_weights

    with init_empty_weights():  # a diffusers config dict (unknown and "_" keys ignored) or a transformers config
        return module_class.from_config(config) if isinstance(config, dict) else module_class(config)


def fill(module, state: dict[str, torch.Tensor], dtype: torch.dtype, what: str, input_name: str):
    """``module`` (from ``empty``) filled with ``state``, cast to ``dtype`` except the modules its class keeps in
    fp32 for half precision (T5's ``wo``); names what is missing."""
    expected = module.state_dict()
    keep_fp32 = getattr(module, "_keep_in_fp32_modules", None) or ()
    missing = [k for k in expected if k not in state]
    if missing:
        raise InputError(input_name, f"the {what} lacks {len(missing)} of its {len(expected)} tensors "
                         f"(e.g. '{missing[0]}').", "the file is incomplete or of another model type.")
    unused = [k for k in state if k not in expected]
    if unused:  # weights the architecture read from the file has no place for: it was read wrongly
        raise InputError(input_name, f"the {what} has {len(unused)} tensors this architecture has no place for "
                         f"(e.g. '{unused[0]}').", "the file is of a variant this version cannot read; use the "
                         "model's diffusers folder.")
    cast = {}
    for key in expected:
        target = torch.float32 if dtype == torch.float16 and any(f".{m}." in f".{key}" for m in keep_fp32) else dtype
        cast[key] = state[key].to(target)
    wrong = [k for k in expected if tuple(cast[k].shape) != tuple(expected[k].shape)]
    if wrong:
        key = wrong[0]
        raise InputError(input_name, f"the {what} has {len(wrong)} tensors of the wrong shape (e.g. '{key}' is "
                         f"{tuple(cast[key].shape)}, the architecture read from the file wants "
                         f"{tuple(expected[key].shape)}).", "the file is damaged or mixes two model variants: "
                         "download it again.")
    module.load_state_dict(cast, strict=True, assign=True)
    return module.eval()


def load_dit(path: str, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, module_class, config_of, rules_of,
             what: str, input_name: str):
    """A transformer in its original release layout (``dit_keys``), with or without the checkpoint prefix."""
    from .families import dit_keys

    prefix = dit_keys.strip_prefix(shapes)
    body = {k[len(prefix):]: shape for k, shape in shapes.items() if k.startswith(prefix)}
    config = config_of(body)
    module = empty(module_class, config)
    target = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    state, unused, missing = dit_keys.to_diffusers(read_tensors(path, prefix), rules_of(config), target)
    if missing or unused:
        problem = (f"lacks {len(missing)} tensors (e.g. '{missing[0]}')" if missing else
                   f"has {len(unused)} tensors this loader does not understand (e.g. '{unused[0]}'; scaled-fp8 "
                   "and quantised files are not supported)")
        raise InputError(input_name, f"'{os.path.basename(path)}' is laid out as a {what} but {problem}.",
                         "use the original release file (bf16/fp16/plain fp8) of the model.")
    return fill(module, state, dtype, what, input_name)


# ---- denoisers ----------------------------------------------------------------------------------------
def load_denoiser_file(path: str, dtype, input_name: str = "model_name") -> tuple[Denoiser, dict]:
    """(Denoiser, scheduler config) from a diffusion model file of any supported family. ``dtype``: a dtype, or a
    function of the family (loading.DtypeChoice)."""
    from .families import all_families
    from .loading import resolve_dtype, supported_families

    shapes = open_safetensors(path, input_name)
    family = next((f for f in all_families() if f.claims_denoiser(shapes)), None)
    if family is None:
        raise InputError(input_name, f"'{os.path.basename(path)}' is not the diffusion model (U-Net/DiT) of a "
                         f"supported family (supported: {supported_families()}).",
                         "choose the denoiser file (e.g. flux1-dev.safetensors, sd3.5_medium.safetensors); "
                         "text encoders go in Load Text Encoders, VAEs in Load VAE, LoRAs and ControlNets have "
                         "loaders of their own.")
    module, scheduler = family.denoiser_from_file(path, shapes, resolve_dtype(dtype, family), input_name)
    scale, shift = family.latent_scaling
    return Denoiser(family, module, path, latent_scale=scale, latent_shift=shift), scheduler


# ---- text encoders --------------------------------------------------------------------------------------
def _clip_prefix(keys) -> str | None:
    for prefix in ("text_model.", ""):
        if f"{prefix}embeddings.token_embedding.weight" in keys:
            return prefix
    return None


def text_kind(keys) -> str | None:
    """'clip' or 't5' for the tensors of one text encoder (transformers layout), None for anything else."""
    if _clip_prefix(keys) is not None:
        return "clip"
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in keys:
        return "t5"
    return None


def clip_part(state: dict[str, torch.Tensor], kind: str, projection: bool, dtype: torch.dtype,
              vocab_dirs: tuple[str, ...], input_name: str) -> TextPart:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .clip_vocab import build_clip_tokenizer
    from .families.stable_diffusion import _bundled_config, infer_text_encoder_config

    prefix = _clip_prefix(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    base = _bundled_config("sdxl")["text_encoder" if kind == "clip_l" else "text_encoder_2"]
    config = infer_text_encoder_config(base, shapes, "clip", prefix)
    if projection:
        if "text_projection.weight" not in state:
            raise InputError(input_name, f"this {TEXT_KINDS[kind]} file has no text projection, which this model "
                             "uses for its pooled prompt.", "use the text encoder file released with the model.")
        config["projection_dim"] = state["text_projection.weight"].shape[0]
    body = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k != "text_projection.weight"}
    if projection:
        cls, renamed = CLIPTextModelWithProjection, {f"text_model.{k}": v for k, v in body.items()}
        renamed["text_projection.weight"] = state["text_projection.weight"]
    else:
        cls, renamed = CLIPTextModel, body
    renamed = {k: v for k, v in renamed.items() if not k.endswith("position_ids")}  # a buffer, not saved any more
    module = fill(empty(cls, CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"})),
                  renamed, dtype, f"{TEXT_KINDS[kind]} text encoder", input_name)
    tokenizer = build_clip_tokenizer(config["vocab_size"], CLIP_PAD_TOKENS[kind], vocab_dirs)
    return TextPart(tokenizer, module)


def t5_config(shapes: dict[str, tuple[int, ...]]) -> dict:
    """T5 encoder config from its tensors: T5 v1.1 (gated GELU, as SD3/Flux's T5-XXL) or the original (ReLU)."""
    import re

    vocab, width = shapes.get("shared.weight") or shapes["encoder.embed_tokens.weight"]
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.block\.(\d+)\.", k))}
    buckets, heads = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    ff = shapes["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"][0]
    return dict(vocab_size=vocab, d_model=width, d_kv=shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0]
                // heads, d_ff=ff, num_layers=len(layers), num_heads=heads, relative_attention_num_buckets=buckets,
                feed_forward_proj="gated-gelu" if gated else "relu", pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0, is_encoder_decoder=False, use_cache=False)


def t5_part(state: dict[str, torch.Tensor], dtype: torch.dtype, tokenizer_dirs: Iterable[str],
            input_name: str) -> TextPart:
    from transformers import T5Config, T5EncoderModel

    state = dict(state)
    embedding = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    state.setdefault("shared.weight", embedding)
    state.setdefault("encoder.embed_tokens.weight", embedding)
    config = t5_config({k: tuple(v.shape) for k, v in state.items()})
    module = fill(empty(T5EncoderModel, T5Config(**config)), state, dtype, "T5 text encoder", input_name)
    return TextPart(find_t5_tokenizer(tokenizer_dirs, config["vocab_size"], input_name), module)


def find_t5_tokenizer(dirs: Iterable[str], vocab_rows: int, input_name: str):
    """The first T5 tokenizer in ``dirs`` whose vocabulary fits the encoder's embedding table."""
    from transformers import AutoTokenizer

    for directory in dirs:
        if not os.path.isdir(directory) or not any(
                os.path.isfile(os.path.join(directory, f)) for f in ("tokenizer.json", "spiece.model")):
            continue
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except Exception:  # not a tokenizer transformers can read: try the next place
            continue
        if "T5" in type(tokenizer).__name__ and len(tokenizer) <= vocab_rows:
            return tokenizer
    raise InputError(input_name, "no T5 tokenizer was found for this T5 text encoder (a .safetensors file holds "
                     "only the weights).", "inside ComfyUI the one ComfyUI ships is used; elsewhere put the "
                     "tokenizer files (tokenizer.json or spiece.model, e.g. of google/t5-v1_1-xxl) in "
                     "models/text_encoders/t5_tokenizer, or keep a diffusers SD3/Flux folder in models/diffusers.")


def text_encoder_from_parts(family, parts: dict[str, TextPart], source: str) -> TextEncoder:
    """The family's TextEncoder from parts by kind; a missing required part is named with its file type."""
    ordered = []
    for slot in family.text_slots:
        part = parts.get(slot.kind)
        if part is None:
            if slot.required:
                raise InputError(slot.kind, f"{family.display_name} needs a {TEXT_KINDS[slot.kind]} text encoder.",
                                 f"choose the {TEXT_KINDS[slot.kind]} file from models/text_encoders.")
            continue
        ordered.append(part)
    return TextEncoder(family, tuple(ordered), source)


# ---- VAE ----------------------------------------------------------------------------------------------
def vae_from_tensors(tensors: dict[str, torch.Tensor], family, dtype: torch.dtype, source: str,
                     input_name: str) -> Vae:
    """A VAE from tensors in the original (LDM) or diffusers layout, prefix already removed."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from .vae_loading import vae_config

    config, layout, _ = vae_config({k: tuple(v.shape) for k, v in tensors.items()}, input_name=input_name)
    if family is not None:
        config["scaling_factor"], config["shift_factor"] = family.latent_scaling
    state = convert_ldm_vae_checkpoint(tensors, config) if layout == "ldm" else tensors
    vae = fill(empty(AutoencoderKL, config), state, dtype, "VAE", input_name)
    return Vae(family, vae, source)


# ---- whole checkpoints of DiT families (SD3, Flux) -------------------------------------------------------
CHECKPOINT_TEXT_PREFIXES = {"clip_l": "text_encoders.clip_l.transformer.",
                            "clip_g": "text_encoders.clip_g.transformer.", "t5": "text_encoders.t5xxl.transformer."}


def text_part_from_tensors(state: dict[str, torch.Tensor], slot: TextSlot, dtype: torch.dtype,
                           vocab_dirs: tuple[str, ...], t5_dirs: Iterable[str], input_name: str,
                           name: str = "the file") -> TextPart:
    found = text_kind(state)
    if found != ("t5" if slot.kind == "t5" else "clip"):
        what = f"a {found.upper()} text encoder" if found else "no text encoder (no CLIP or T5 tensors)"
        raise InputError(input_name, f"{name} is {what}, not the {TEXT_KINDS[slot.kind]} text encoder.",
                         f"choose the {TEXT_KINDS[slot.kind]} file from models/text_encoders.")
    if slot.kind == "t5":
        return t5_part(state, dtype, t5_dirs, input_name)
    return clip_part(state, slot.kind, slot.projection, dtype, vocab_dirs, input_name)


def load_dit_checkpoint(family, path: str, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                        vocab_dirs: tuple[str, ...], t5_dirs: Iterable[str]):
    """A single-file SD3/Flux checkpoint: the transformer under ``model.diffusion_model.``, the VAE
    (``first_stage_model.`` or ``vae.``), and whichever text encoders it bundles (``text_encoders.<kind>.``).
    Without its required text encoders the model still loads; Text Encode then says where to get them."""
    from .families.folders import assemble
    from .vae_loading import vae_config

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


def missing_text_encoders(text_encoder: TextEncoder) -> InputError | None:
    """Why ``text_encoder`` cannot encode (a checkpoint that came without its text encoders), or None."""
    if text_encoder.parts:
        return None
    needed = " + ".join(TEXT_KINDS[s.kind] for s in text_encoder.family.text_slots if s.required)
    return InputError("text_encoder", f"'{os.path.basename(text_encoder.source)}' came without its text encoders "
                      f"({text_encoder.family.display_name} needs {needed}).",
                      "load them with 'Load Text Encoders (Diffusers)' from models/text_encoders and connect its "
                      "text_encoder output here.")
