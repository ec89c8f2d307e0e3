"""Text encoders read from tensors, as ComfyUI users keep them (``models/text_encoders``, or bundled in a
checkpoint): CLIP-L, CLIP-G, T5, Qwen3 and Qwen2.5-VL in the transformers layout, their configs read from the shapes,
their tokenizers found offline."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

import torch

from .components import TextEncoder, TextPart
from .errors import InputError
from .family import TextSlot
from .weights import empty, fill

TEXT_KINDS = {"clip_l": "CLIP-L (clip_l.safetensors)", "clip_g": "CLIP-G (clip_g.safetensors)",
              "t5": "T5-XXL (t5xxl_*.safetensors)", "qwen3": "Qwen3 4B (qwen_3_4b*.safetensors)",
              "qwen25vl": "Qwen2.5-VL 7B (qwen_2.5_vl_7b*.safetensors)",
              "mistral3": "Mistral 3 Small (mistral_3_small_flux2*.safetensors)",
              "flux2_llm": "Qwen3 (klein: qwen_3_4b / 8b) or Mistral 3 Small (dev: mistral_3_small_flux2)",
              "llm": "LLM"}
LLM_KINDS = ("qwen3", "qwen25vl", "flux2_llm")  # the kinds Load Text Encoders' llm input takes (one per family)
# slot kinds that take one of several text encoders, by what the file holds (Flux.2: klein's Qwen3 or dev's Mistral)
KIND_CHOICES = {"flux2_llm": ("qwen3", "mistral3")}


CLIP_PAD_TOKENS = {"clip_l": "<|endoftext|>", "clip_g": "!"}  # as the released tokenizers (OpenCLIP-G pads with "!")


# ---- text encoders --------------------------------------------------------------------------------------
def _clip_prefix(keys) -> str | None:
    for prefix in ("text_model.", ""):
        if f"{prefix}embeddings.token_embedding.weight" in keys:
            return prefix
    return None


def text_kind(keys) -> str | None:
    """'clip', 't5', 'qwen3' or 'qwen25vl' for the tensors of one text encoder (transformers layout), None for
    anything else."""
    if _clip_prefix(keys) is not None:
        return "clip"
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in keys:
        return "t5"
    if qwen3_prefix(keys) is not None:
        return "qwen3"
    if any(k.endswith("layers.0.self_attn.k_proj.bias") for k in keys) and any("visual." in k for k in keys):
        return "qwen25vl"
    llama_style = ("model.layers.0.self_attn.q_proj.weight" in keys
                   and "model.layers.0.self_attn.k_proj.bias" not in keys)
    if llama_style or "tekken_model" in keys:  # Mistral's (Flux.2 dev's) naming; Qwen2.5's has q/k/v biases
        return "mistral3"
    return None


def clip_part(state: dict[str, torch.Tensor], kind: str, projection: bool, dtype: torch.dtype,
              vocab_dirs: tuple[str, ...], input_name: str) -> TextPart:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .clip_vocab import build_clip_tokenizer
    from .families.bundled_configs import clip_base_config, infer_text_encoder_config

    prefix = _clip_prefix(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    base = clip_base_config(kind)
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


def with_chat_template(tokenizer, folder: str):
    """The tokenizer with its folder's chat template: a processor folder (Flux.2 dev's PixtralProcessor, loaded as
    its tokenizer: the prompts are text only) keeps it beside the tokenizer files."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer
    for name in ("chat_template.jinja", "chat_template.json"):
        file = os.path.join(folder, name)
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                tokenizer.chat_template = json.load(f)["chat_template"] if name.endswith(".json") else f.read()
            break
    return tokenizer


def find_tokenizer(dirs: Iterable[str], files: tuple[str, ...], fits):
    """The first tokenizer in ``dirs`` (folders holding one of ``files``) that transformers reads and ``fits``
    accepts, or None."""
    from transformers import AutoTokenizer

    for directory in dirs:
        if not os.path.isdir(directory) or not any(os.path.isfile(os.path.join(directory, f)) for f in files):
            continue
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except Exception:  # not a tokenizer transformers can read: try the next place
            continue
        if fits(tokenizer):
            return with_chat_template(tokenizer, directory)
    return None


def find_t5_tokenizer(dirs: Iterable[str], vocab_rows: int, input_name: str):
    """The first T5 tokenizer in ``dirs`` whose vocabulary fits the encoder's embedding table."""
    tokenizer = find_tokenizer(dirs, ("tokenizer.json", "spiece.model"),
                               lambda found: "T5" in type(found).__name__ and len(found) <= vocab_rows)
    if tokenizer is not None:
        return tokenizer
    raise InputError(input_name, "no T5 tokenizer was found for this T5 text encoder (a .safetensors file holds "
                     "only the weights).", "inside ComfyUI the one ComfyUI ships is used; elsewhere put the "
                     "tokenizer files (tokenizer.json or spiece.model, e.g. of google/t5-v1_1-xxl) in "
                     "models/text_encoders/t5_tokenizer, or keep a diffusers SD3/Flux folder in models/diffusers.")


# ---- Qwen3 (Z-Image, Flux.2 klein): qwen_3_4b.safetensors as ComfyUI keeps it (Qwen3ForCausalLM's names) ----
# Qwen3's chat template, reduced to what a prompt needs: one user turn, then the assistant's turn opened (with
# thinking on, Qwen3's default, the template adds nothing more). Used for tokenizers that carry another model's
# template (ComfyUI ships Qwen2.5's tokenizer, whose template adds a system prompt) or none.
QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}")
# the released Qwen3 configs' values the tensors do not record
QWEN3_DEFAULTS = {"rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 40960,
                  "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": True}


def qwen3_prefix(keys) -> str | None:
    """The prefix of a Qwen3 text model's keys in this file ('model.' as Qwen3ForCausalLM, or ''), or None."""
    for prefix in ("model.", ""):
        if f"{prefix}layers.0.self_attn.q_norm.weight" in keys and f"{prefix}embed_tokens.weight" in keys:
            return prefix
    return None


def decoder_config(shapes: dict[str, tuple[int, ...]], head_dim: int, defaults: dict) -> dict:
    """A decoder-only LLM's config (Qwen3, Mistral) from its shapes (names without the model. prefix): widths, layer
    and head counts; ``head_dim`` and ``defaults`` give what the tensors do not record."""
    vocab, hidden = shapes["embed_tokens.weight"]
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"layers\.(\d+)\.", k))}
    return dict(defaults, vocab_size=vocab, hidden_size=hidden, head_dim=head_dim,
                intermediate_size=shapes["layers.0.mlp.gate_proj.weight"][0], num_hidden_layers=len(layers),
                num_attention_heads=shapes["layers.0.self_attn.q_proj.weight"][0] // head_dim,
                num_key_value_heads=shapes["layers.0.self_attn.k_proj.weight"][0] // head_dim)


def qwen3_config(shapes: dict[str, tuple[int, ...]]) -> dict:
    return decoder_config(shapes, shapes["layers.0.self_attn.q_norm.weight"][0], QWEN3_DEFAULTS)


def qwen3_part(state: dict[str, torch.Tensor], dtype: torch.dtype, tokenizer_dirs: Iterable[str],
               input_name: str) -> TextPart:
    from transformers import Qwen3Config, Qwen3Model

    prefix = qwen3_prefix(state)
    body = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k != "lm_head.weight"}
    config = qwen3_config({k: tuple(v.shape) for k, v in body.items()})
    module = fill(empty(Qwen3Model, Qwen3Config(**config)), body, dtype, "Qwen3 text encoder", input_name)
    return TextPart(find_qwen_tokenizer(tokenizer_dirs, config["vocab_size"], input_name), module)


def find_qwen_tokenizer(dirs: Iterable[str], vocab_rows: int, input_name: str, qwen3: bool = True):
    """The first Qwen tokenizer in ``dirs`` whose vocabulary fits the embedding table; for a Qwen3 (whose prompts
    are chat turns) with Qwen3's chat template unless it brings a Qwen3 one."""
    tokenizer = find_tokenizer(dirs, ("tokenizer.json", "vocab.json"), lambda found: "Qwen2Tokenizer" in type(
        found).__name__ and len(found) <= vocab_rows and "<|im_start|>" in found.get_vocab())
    if tokenizer is None:
        raise InputError(input_name, "no Qwen tokenizer was found for this Qwen text encoder (a .safetensors file "
                         "holds only the weights).", "inside ComfyUI the one ComfyUI ships is used; elsewhere put "
                         "the tokenizer files (tokenizer.json + tokenizer_config.json, e.g. the tokenizer folder of "
                         "Tongyi-MAI/Z-Image-Turbo or Qwen/Qwen-Image) in models/text_encoders/qwen_tokenizer, or keep "
                         "a diffusers Z-Image, Flux.2 klein or Qwen-Image folder in models/diffusers.")
    if qwen3 and "enable_thinking" not in (getattr(tokenizer, "chat_template", None) or ""):  # not Qwen3's template
        tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


# ---- Qwen2.5-VL (Qwen-Image): qwen_2.5_vl_7b.safetensors as ComfyUI keeps it -----------------------------------
# Qwen2.5-VL's original checkpoint names (model.* = the language model, visual.* = the vision tower), also accepted in
# transformers' newer names (model.language_model.*, model.visual.*); lm_head is not needed for hidden states.
_QWEN25VL_NAMES = (("model.language_model.", "language_model."), ("model.visual.", "visual."),
                   ("model.", "language_model."), ("visual.", "visual."), ("language_model.", "language_model."))
QWEN25_HEAD_DIM = 128  # every released Qwen2.5 model's attention head width (the tensors record heads x width)
QWEN25_VISION_HEAD_DIM = 80  # the vision tower's (1280 wide, 16 heads)


def qwen25vl_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen2_5_VLModel's names for a Qwen2.5-VL file's tensors."""
    out = {}
    for key, value in state.items():
        for old, new in _QWEN25VL_NAMES:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
    return out


def qwen25vl_config(shapes: dict[str, tuple[int, ...]]) -> dict:
    """Qwen2_5_VLConfig keywords from Qwen2_5_VLModel shapes; what they do not record takes Qwen2.5-VL-7B's values
    (rotary sections in its proportions, a full-attention vision block every 8, as its 7, 15, 23, 31)."""
    def layers(prefix):
        return len({int(m.group(1)) for k in shapes if (m := re.match(rf"{prefix}(\d+)\.", k))})

    vocab, hidden = shapes["language_model.embed_tokens.weight"]
    heads = shapes["language_model.layers.0.self_attn.q_proj.weight"][0] // QWEN25_HEAD_DIM
    half = QWEN25_HEAD_DIM // 2
    vision_width, channels, temporal, patch, _ = shapes["visual.patch_embed.proj.weight"]
    depth = layers(r"visual\.blocks\.")
    text = {"vocab_size": vocab, "hidden_size": hidden, "num_attention_heads": heads, "head_dim": QWEN25_HEAD_DIM,
            "num_key_value_heads": shapes["language_model.layers.0.self_attn.k_proj.weight"][0] // QWEN25_HEAD_DIM,
            "intermediate_size": shapes["language_model.layers.0.mlp.gate_proj.weight"][0],
            "num_hidden_layers": layers(r"language_model\.layers\."), "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                "mrope_section": [half // 4, 3 * half // 8, 3 * half // 8]}}
    vision = {"depth": depth, "hidden_size": vision_width, "num_heads": vision_width // QWEN25_VISION_HEAD_DIM,
              "intermediate_size": shapes["visual.blocks.0.mlp.gate_proj.weight"][0],
              "out_hidden_size": shapes["visual.merger.mlp.2.weight"][0], "in_channels": channels,
              "patch_size": patch, "temporal_patch_size": temporal, "tokens_per_second": 2, "window_size": 112,
              "spatial_merge_size": int((shapes["visual.merger.mlp.0.weight"][1] // vision_width) ** 0.5),
              "fullatt_block_indexes": [i for i in range(depth) if i % 8 == 7]}
    return {"text_config": text, "vision_config": vision, "tie_word_embeddings": False}


def qwen25vl_part(state: dict[str, torch.Tensor], dtype: torch.dtype, tokenizer_dirs: Iterable[str],
                  input_name: str) -> TextPart:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    body = qwen25vl_state(state)
    config = qwen25vl_config({k: tuple(v.shape) for k, v in body.items()})
    module = fill(empty(Qwen2_5_VLModel, Qwen2_5_VLConfig(**config)), body, dtype, "Qwen2.5-VL text encoder",
                  input_name)
    tokenizer = find_qwen_tokenizer(tokenizer_dirs, config["text_config"]["vocab_size"], input_name, qwen3=False)
    for name, token in (("image", "image_pad"), ("video", "video_pad"), ("vision_start", "vision_start"),
                        ("vision_end", "vision_end")):  # where the vision tower's tokens go (Qwen-Image-Edit)
        token_id = tokenizer.convert_tokens_to_ids(f"<|{token}|>")
        if token_id is not None and token_id != tokenizer.unk_token_id:
            setattr(module.config, f"{name}_token_id", token_id)
    return TextPart(tokenizer, module)


# ---- Mistral 3 Small (Flux.2 dev): mistral_3_small_flux2_bf16.safetensors as ComfyUI keeps it -----------------------
# The language model under Llama-style names (model.layers.*), possibly pruned to the layers Flux.2 reads; ComfyUI's
# copy also carries its tekken tokenizer as a tensor, which is not used: the tokenizer (and its chat template) come
# from Flux.2 dev's diffusers folder or a mistral_tokenizer folder, as for T5 and Qwen.
MISTRAL3_DEFAULTS = {"rope_theta": 1000000000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
                     "hidden_act": "silu", "tie_word_embeddings": False, "sliding_window": None}  # Mistral Small 3.x


def mistral3_config(shapes: dict[str, tuple[int, ...]]) -> dict:
    return decoder_config(shapes, 128, MISTRAL3_DEFAULTS)  # Mistral Small 3.x's heads are 128 wide


def mistral3_part(state: dict[str, torch.Tensor], dtype: torch.dtype, tokenizer_dirs: Iterable[str],
                  input_name: str) -> TextPart:
    from transformers import MistralConfig, MistralModel

    body = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    config = mistral3_config({k: tuple(v.shape) for k, v in body.items()})
    module = fill(empty(MistralModel, MistralConfig(**config)), body, dtype, "Mistral 3 text encoder", input_name)
    tokenizer = find_tokenizer(tokenizer_dirs, ("tokenizer.json",), lambda found: len(found) <= config["vocab_size"]
                               and "[SYSTEM_PROMPT]" in found.get_vocab())
    if tokenizer is None:
        raise InputError(input_name, "no Mistral tokenizer was found for this Mistral 3 text encoder.",
                         "put the tokenizer folder of black-forest-labs/FLUX.2-dev (tokenizer.json, "
                         "tokenizer_config.json, chat_template) in models/text_encoders/mistral_tokenizer, or keep "
                         "a diffusers Flux.2 dev folder in models/diffusers.")
    return TextPart(tokenizer, module)


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


# ---- whole checkpoints of DiT families (SD3, Flux) -------------------------------------------------------
CHECKPOINT_TEXT_PREFIXES = {"clip_l": "text_encoders.clip_l.transformer.",
                            "clip_g": "text_encoders.clip_g.transformer.", "t5": "text_encoders.t5xxl.transformer."}


def text_part_from_tensors(state: dict[str, torch.Tensor], slot: TextSlot, dtype: torch.dtype,
                           vocab_dirs: tuple[str, ...], tokenizer_dirs: Iterable[str], input_name: str,
                           name: str = "the file") -> TextPart:
    from .quantized import gather

    state = gather(state, input_name, name.strip("'"))
    found = text_kind(state)
    accepted = KIND_CHOICES.get(slot.kind, (slot.kind if slot.kind == "t5" or slot.kind in LLM_KINDS else "clip",))
    if found not in accepted:
        what = (f"a {TEXT_KINDS[found].split(' (')[0] if found in TEXT_KINDS else found.upper()} text encoder"
                if found else "no text encoder (no CLIP, T5, Qwen3 or Qwen2.5-VL tensors)")
        raise InputError(input_name, f"{name} is {what}, not the {TEXT_KINDS[slot.kind]} text encoder.",
                         f"choose the {TEXT_KINDS[slot.kind]} file from models/text_encoders.")
    if slot.kind == "t5":
        return t5_part(state, dtype, tokenizer_dirs, input_name)
    if found == "qwen3":
        return qwen3_part(state, dtype, tokenizer_dirs, input_name)
    if found == "mistral3":
        return mistral3_part(state, dtype, tokenizer_dirs, input_name)
    if found == "qwen25vl":
        return qwen25vl_part(state, dtype, tokenizer_dirs, input_name)
    return clip_part(state, slot.kind, slot.projection, dtype, vocab_dirs, input_name)


def missing_text_encoders(text_encoder: TextEncoder) -> InputError | None:
    """Why ``text_encoder`` cannot encode (a checkpoint that came without its text encoders), or None."""
    if text_encoder.parts:
        return None
    needed = " + ".join(TEXT_KINDS[s.kind] for s in text_encoder.family.text_slots if s.required)
    return InputError("text_encoder", f"'{os.path.basename(text_encoder.source)}' came without its text encoders "
                      f"({text_encoder.family.display_name} needs {needed}).",
                      "load them with 'Load Text Encoders (Diffusers)' from models/text_encoders and connect its "
                      "text_encoder output here.")
