"""Tiny random-weight Stable Diffusion models, in the real on-disk formats.

The architectures are the real ones with tiny widths. Values that a checkpoint's
tensors cannot tell (attention heads, group-norm groups) follow the conventions the
pack's single-file loader assumes for a family, so the folder and the single file
of the same weights describe the same model.
"""

from __future__ import annotations

import os

import torch

from .ldm_export import dit_to_original, save_ldm_checkpoint, save_sdxl_checkpoint

SD1_SCHEDULER = dict(  # the PNDM config shipped with Stable Diffusion v1.5
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None,
)


def tiny_vae(latent_channels: int, sample_size: int, **family_settings):
    """The real AutoencoderKL layout (8x downsampling) at tiny widths; scaling/shift/quant convs per family."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=sample_size, **family_settings)


def _tokenizer(vocab_size: int, pad_token: str):
    from ..engine.clip_vocab import build_clip_tokenizer

    return build_clip_tokenizer(vocab_size, pad_token=pad_token)


def build_sd_pipeline(variant: str = "sd1", unet_channels=(16, 16, 32, 32), sample_size: int = 8,
                      inpainting: bool = False):
    """A StableDiffusionPipeline with random weights. ``variant``: "sd1" (epsilon) or "sd2" (v-prediction);
    ``inpainting``: a 9-channel U-Net (latents, mask, masked image latents), as SD1.5 inpainting's."""
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sd2 = variant == "sd2"
    hidden = 48 if sd2 else 32
    groups = 16 if min(unet_channels) % 16 == 0 else 8
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=9 if inpainting else 4, out_channels=4, layers_per_block=2,
        block_out_channels=tuple(unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=hidden, norm_num_groups=groups,
        attention_head_dim=[max(1, c // 64) for c in unet_channels] if sd2 else 8,
        use_linear_projection=sd2,
    )
    torch.manual_seed(1)
    vae = tiny_vae(4, sample_size * 8, scaling_factor=0.18215)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        # SD2 checkpoints hold 24 OpenCLIP blocks of which diffusers uses 23; the single-file loader relies on that
        vocab_size=1000, hidden_size=hidden, intermediate_size=37, num_attention_heads=1,
        num_hidden_layers=23 if sd2 else 4,
        max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999,
        hidden_act="gelu" if sd2 else "quick_gelu", projection_dim=hidden,
    ))
    if sd2:
        scheduler = DDIMScheduler.from_config(
            {**SD1_SCHEDULER, "prediction_type": "v_prediction", "clip_sample": False})
    else:
        scheduler = PNDMScheduler.from_config(SD1_SCHEDULER)
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(1000, "!" if sd2 else "<|endoftext|>"),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


SDXL_SCHEDULER = dict(  # the Euler config shipped with SDXL base 1.0
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    interpolation_type="linear", prediction_type="epsilon", sample_max_value=1.0, set_alpha_to_one=False,
    skip_prk_steps=True, steps_offset=1, timestep_spacing="leading", trained_betas=None, use_karras_sigmas=False,
)


def _sdxl_unet(sample_size: int, cross_attention_dim: int, time_ids: int, in_channels: int = 4):
    """A tiny SDXL-shaped U-Net: the base's (prompt from both text encoders, 6 time ids) or the refiner's (CLIP-G
    alone, 5 time ids); the pooled prompt is 32 wide."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=4, layers_per_block=2,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        # heads follow SDXL's 64-wide rule (at least 1), which the single-file loader assumes
        transformer_layers_per_block=(1, 2, 2), attention_head_dim=(1, 1, 1), use_linear_projection=True,
        # SDXL's own time-id width (256): a U-Net file does not record it, so loaders assume the released value
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=time_ids * 256 + 32,
        cross_attention_dim=cross_attention_dim, norm_num_groups=16,
    )


def build_sdxl_pipeline(sample_size: int = 8, inpainting: bool = False):
    """A StableDiffusionXLPipeline with random weights (text encoders 32 and 48 wide, as CLIP-L and -G differ);
    ``inpainting``: a 9-channel U-Net, as SDXL inpainting 0.1's."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def clip_config(hidden, layers, act):
        return CLIPTextConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=37, num_attention_heads=1,
                              num_hidden_layers=layers, max_position_embeddings=77, bos_token_id=998,
                              eos_token_id=999, pad_token_id=999, hidden_act=act, projection_dim=32)

    torch.manual_seed(0)
    unet = _sdxl_unet(sample_size, cross_attention_dim=32 + 48, time_ids=6, in_channels=9 if inpainting else 4)
    torch.manual_seed(1)
    vae = tiny_vae(4, sample_size * 8, scaling_factor=0.13025, force_upcast=True)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(clip_config(32, 4, "quick_gelu"))
    torch.manual_seed(3)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(48, 10, "gelu"))
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=_tokenizer(1000, "<|endoftext|>"),
        tokenizer_2=_tokenizer(1000, "!"), unet=unet, scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )


def build_sdxl_refiner_pipeline(sample_size: int = 8):
    """A StableDiffusionXLImg2ImgPipeline shaped like SDXL's refiner: no first text encoder, the U-Net conditioned on
    the second (CLIP-G-like, 48 wide) alone, with five time ids (original size, crop, aesthetic score)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(10)
    unet = _sdxl_unet(sample_size, cross_attention_dim=48, time_ids=5)
    torch.manual_seed(11)
    vae = tiny_vae(4, sample_size * 8, scaling_factor=0.13025, force_upcast=True)
    torch.manual_seed(12)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=1000, hidden_size=48, intermediate_size=37, num_attention_heads=1, num_hidden_layers=10,
        max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999, hidden_act="gelu",
        projection_dim=32))
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None, tokenizer_2=_tokenizer(1000, "!"),
        unet=unet, scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER), requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def t5_tokenizer():
    """A small Unigram T5 tokenizer built in memory (pads with 0, ends with </s> = 1, as T5's)."""
    import string

    from transformers import T5Tokenizer

    words = ("a the photo of cat dog on mat red blue green bird fox detail details many painting light house cliff "
             "sunset warm watercolor blurry low quality").split()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -8.0)]
    pieces += [("▁" + w, -5.0) for w in words]
    pieces += [(c, -10.0) for c in string.ascii_lowercase + string.digits + ",.:()!?'-"]
    pieces += [("▁" + c, -9.0) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def qwen_tokenizer():
    """A small byte-level BPE tokenizer in Qwen2Tokenizer's format, with Qwen's special tokens and chat template."""
    from transformers import Qwen2Tokenizer

    from ..engine.text_files import QWEN3_CHAT_TEMPLATE

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]  # GPT-2's byte alphabet
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    merges = [("Ġ", "a"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("Ġ", "p"), ("h", "o"), ("Ġp", "ho"), ("t", "o")]
    for first, second in merges:
        vocab.setdefault(first + second, len(vocab))
    vision = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]  # Qwen2.5-VL's picture tokens
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *vision):
        vocab[special] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *vision]})
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def tiny_qwen3(tokenizer, hidden: int, seed: int):
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    return Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                  max_position_embeddings=40960, pad_token_id=tokenizer.pad_token_id,
                                  rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"},
                                  tie_word_embeddings=True))  # as the released Qwen3 (qwen_text.QWEN3_DEFAULTS)


def build_zimage_pipeline():
    """A ZImagePipeline with random weights: the Z-Image DiT (refiners + main layers), a Qwen3 text encoder, the
    Flux.1 VAE layout; the scheduler config of Z-Image-Turbo (shift 3, no dynamic shifting)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    tokenizer = qwen_tokenizer()
    text_encoder = tiny_qwen3(tokenizer, 32, seed=5)
    torch.manual_seed(6)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, cap_feat_dim=32, axes_dims=[4, 6, 6])  # the released proportions (dit_keys.z_image_rope_axes)
    torch.manual_seed(7)
    vae = tiny_vae(16, 64, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                   use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)


def tiny_flux2_vae():
    """The Flux.2 VAE layout (AutoencoderKLFlux2: 32 latent channels, batch norm over 2x2 patches) at tiny widths,
    with batch-norm statistics that are not the identity, as a trained VAE's."""
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(block_out_channels=(8, 16, 16, 16), latent_channels=32, layers_per_block=1,
                             norm_num_groups=8, sample_size=64)
    vae.bn.running_mean.copy_(torch.randn(128) * 0.1)
    vae.bn.running_var.copy_(torch.rand(128) + 0.5)
    return vae


def build_flux2_klein_pipeline(distilled: bool = False):
    """A Flux2KleinPipeline with random weights: the Flux.2 DiT, a Qwen3 text encoder deep enough for the layers the
    pipeline reads (9, 18, 27), the Flux.2 VAE; the released scheduler config (Flux.1-dev's)."""
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = qwen_tokenizer()
    torch.manual_seed(11)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=28, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=40960, pad_token_id=tokenizer.pad_token_id,
        rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"}, tie_word_embeddings=True))
    return Flux2KleinPipeline(text_encoder=text_encoder, tokenizer=tokenizer, is_distilled=distilled,
                              **tiny_flux2_parts(12, joint_attention_dim=48, guidance_embeds=False))


def tiny_flux2_parts(seed: int, joint_attention_dim: int, guidance_embeds: bool) -> dict:
    """The Flux.2 pipelines' transformer, VAE and scheduler (the released config: Flux.1-dev's) at tiny widths."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=joint_attention_dim, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds)
    torch.manual_seed(seed + 1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    return {"transformer": transformer, "vae": tiny_flux2_vae(), "scheduler": scheduler}


MISTRAL_CHAT_TEMPLATE = (  # a Mistral-v7-style template (system prompt, then the user turn), for the tiny tokenizer
    "{{ bos_token }}{% for m in messages %}{% set text = m.content if m.content is string else m.content[0].text %}"
    "{% if m.role == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]{% elif m.role == 'user' %}[INST]{{ text }}"
    "[/INST]{% endif %}{% endfor %}")


def mistral_tokenizer():
    """A small byte-level BPE tokenizer with Mistral's special tokens and a chat template. (Flux.2 dev's folder holds
    a PixtralProcessor, which needs torchvision; its prompts are text only, so the tokenizer stands in for it, as
    the loader does.)"""
    from transformers import Qwen2Tokenizer

    base = qwen_tokenizer()
    vocab = {token: index for token, index in base.get_vocab().items() if not token.startswith("<|")}
    specials = ["<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]",
                "[IMG_BREAK]", "[IMG_END]"]
    for token in specials:
        vocab[token] = len(vocab)
    merges = [("Ġ", "a"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("Ġ", "p"), ("h", "o"), ("Ġp", "ho"), ("t", "o")]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token="<s>", eos_token="</s>",
                               pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials[3:]})
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    return tokenizer


def build_flux2_dev_pipeline():
    """A Flux2Pipeline with random weights: the Flux.2 DiT with a guidance embedding, a Mistral 3 text encoder deep
    enough for the layers the pipeline reads (10, 20, 30; 128-wide heads and the rotary base of Mistral Small 3.x,
    as the file loader assumes), the Flux.2 VAE."""
    from diffusers import Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tokenizer = mistral_tokenizer()
    torch.manual_seed(14)
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config=dict(model_type="mistral", vocab_size=len(tokenizer), hidden_size=24, intermediate_size=32,
                         num_hidden_layers=31, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                         rope_theta=1000000000.0, rms_norm_eps=1e-5, sliding_window=None,
                         max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, head_dim=8, patch_size=16, image_size=64),
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2))
    return Flux2Pipeline(text_encoder=text_encoder, tokenizer=tokenizer,
                         **tiny_flux2_parts(15, joint_attention_dim=72, guidance_embeds=True))


def mistral_flux2_file(text_encoder, keep_layers: int) -> dict[str, torch.Tensor]:
    """A Mistral 3 text encoder as ComfyUI's mistral_3_small_flux2: the language model under Llama-style names
    (model.*), pruned to the first ``keep_layers`` layers, with its tokenizer as a uint8 tensor (tekken_model)."""
    import re

    state = {}
    for key, value in text_encoder.state_dict().items():
        if not key.startswith("model.language_model."):
            continue  # the vision tower, projector and lm_head are not in the file
        key = key.replace("model.language_model.", "model.")
        layer = re.match(r"model\.layers\.(\d+)\.", key)
        if layer is None or int(layer.group(1)) < keep_layers:
            state[key] = value
    state["tekken_model"] = torch.frombuffer(bytearray(b'{"config": {}, "vocab": []}'), dtype=torch.uint8)
    return state


def build_qwen_image_pipeline():
    """A QwenImagePipeline with random weights: the Qwen-Image DiT, a Qwen2.5-VL text encoder (a tiny vision tower
    it does not use for text), the Wan-style Qwen-Image VAE; Qwen-Image's scheduler config (exponential dynamic
    shift, shift terminal 0.02)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = qwen_tokenizer()
    special = {"bos_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    pictures = {f"{name}_token_id": tokenizer.convert_tokens_to_ids(f"<|{token}|>") for name, token in (
        ("image", "image_pad"), ("video", "video_pad"), ("vision_start", "vision_start"), ("vision_end", "vision_end"))}
    torch.manual_seed(8)
    # the released proportions the file loader assumes (text_files.qwen25vl_config): 128-wide attention heads and
    # rotary sections [16, 24, 24]; an 80-wide vision head
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=128, max_position_embeddings=128000,
                         rms_norm_eps=1e-6,
                         **special, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                     "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=1, hidden_size=160, num_heads=2, intermediate_size=32, out_hidden_size=256,
                           fullatt_block_indexes=[], tokens_per_second=2), **special, **pictures))
    torch.manual_seed(9)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=256,
                                              axes_dims_rope=(4, 6, 6))
    torch.manual_seed(10)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    with torch.no_grad():  # RMS-norm scales away from 1, so that a misplaced one shows
        for name, param in vae.named_parameters():
            if name.endswith("gamma"):
                param.uniform_(0.5, 1.5)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
        base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential")
    return QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                             transformer=transformer)


def qwen_image_edit_2511_file() -> dict[str, torch.Tensor]:
    """A Qwen-Image-Edit-2511 style transformer (zero_cond_t: reference tokens modulated at timestep 0) as Comfy-Org's
    files hold it: diffusers' names and the empty ``__index_timestep_zero__`` marker."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(11)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=256,
                                              axes_dims_rope=(4, 6, 6), zero_cond_t=True)
    return {**transformer.state_dict(), "__index_timestep_zero__": torch.tensor([])}


def save_qwen_image_edit_folder(root: str, name: str, base) -> str:
    """A Qwen-Image-Edit-2509 style folder: the Qwen-Image parts, model_index naming QwenImageEditPlusPipeline and
    its Qwen2_5_VLProcessor, processor/ holding the image processor's settings (transformers cannot save the
    processor itself without a video processor)."""
    import json

    from diffusers import QwenImageEditPlusPipeline

    path = save_folder(root, name, QwenImageEditPlusPipeline(processor=None, **base.components))
    qwen25vl_processor(base.tokenizer).image_processor.save_pretrained(os.path.join(path, "processor"))
    index = os.path.join(path, "model_index.json")
    with open(index, encoding="utf-8") as f:
        entries = json.load(f)
    entries["processor"] = ["transformers", "Qwen2_5_VLProcessor"]
    with open(index, "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=2)
    return path


def qwen25vl_processor(tokenizer):
    """transformers' Qwen2_5_VLProcessor with the PIL image processor and no video processor. Without torchvision
    (this machine, CI) transformers cannot make one: its constructor checks every part's class, the video
    processor's too, whose class is a placeholder then; the check is skipped for this construction only."""
    from unittest import mock

    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from ..engine.families.qwen_image import QWEN25VL_IMAGE_PROCESSOR

    with mock.patch.object(Qwen2_5_VLProcessor, "check_argument_for_proper_class", lambda *args: None):
        return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessorPil(**QWEN25VL_IMAGE_PROCESSOR),
                                   tokenizer=tokenizer)


def build_flux_pipeline(guidance_embeds: bool = True, fill: bool = False):
    """A FluxPipeline with random weights (dev-like with guidance_embeds, schnell-like without); ``fill``: a
    FluxFillPipeline (Flux.1 Fill: the transformer also takes the masked image's latents and the mask, 384 input
    channels, 64 out)."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer_2 = t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=384 if fill else 64, out_channels=64, num_layers=1, num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6))
    torch.manual_seed(1)
    vae = tiny_vae(16, 64, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                   use_post_quant_conv=False)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=37, num_attention_heads=1, num_hidden_layers=4,
        max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999, projection_dim=32))
    torch.manual_seed(3)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=64, d_kv=16, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    pipeline = diffusers.FluxFillPipeline if fill else diffusers.FluxPipeline
    return pipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=_tokenizer(1000, "<|endoftext|>"), text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)


def build_sd3_pipeline(with_t5: bool = True):
    """A StableDiffusion3Pipeline with random weights: CLIP-L 32 and CLIP-G 48 wide, T5 96 (>= 32 + 48)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def clip(hidden, layers, seed, act):
        torch.manual_seed(seed)
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=1000, hidden_size=hidden, intermediate_size=37, num_attention_heads=1, num_hidden_layers=layers,
            max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999, projection_dim=32,
            hidden_act=act))

    tokenizer_3 = t5_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=4, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=96, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=32, qk_norm="rms_norm", dual_attention_layers=(0,))  # SD3.5 medium's layout
    torch.manual_seed(1)
    vae = tiny_vae(16, 64, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                   use_post_quant_conv=False)
    text_encoder_3 = None
    if with_t5:
        torch.manual_seed(4)
        text_encoder_3 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_3), d_model=96, d_kv=16, d_ff=64, num_layers=2, num_heads=4,
            feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae, text_encoder=clip(32, 4, 2, "quick_gelu"), tokenizer=_tokenizer(1000, "<|endoftext|>"),
        text_encoder_2=clip(48, 4, 3, "gelu"), tokenizer_2=_tokenizer(1000, "!"), text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3 if with_t5 else None)


def write_models(root: str) -> dict[str, str]:
    """Populate a ComfyUI-style models folder; return the paths written."""
    paths = {}
    sd1 = build_sd_pipeline("sd1")
    paths["sd1_folder"] = save_folder(root, "tiny-sd15", sd1)
    paths["sd1_inpainting_folder"] = save_folder(root, "tiny-sd15-inpainting",
                                                 build_sd_pipeline("sd1", inpainting=True))
    os.makedirs(os.path.join(root, "checkpoints"), exist_ok=True)
    paths["sd1_single"] = os.path.join(root, "checkpoints", "tiny-sd15.safetensors")
    save_ldm_checkpoint(sd1, paths["sd1_single"])
    sd2 = build_sd_pipeline("sd2")
    paths["sd2_folder"] = save_folder(root, "tiny-sd2-v", sd2)
    paths["sd2_single"] = os.path.join(root, "checkpoints", "tiny-sd2-v.safetensors")
    save_ldm_checkpoint(sd2, paths["sd2_single"], open_clip=True)
    sdxl = build_sdxl_pipeline()
    paths["sdxl_folder"] = save_folder(root, "tiny-sdxl", sdxl)
    paths["sdxl_inpainting_folder"] = save_folder(root, "tiny-sdxl-inpainting", build_sdxl_pipeline(inpainting=True))
    paths["sdxl_single"] = os.path.join(root, "checkpoints", "tiny-sdxl.safetensors")
    save_sdxl_checkpoint(sdxl, paths["sdxl_single"])
    refiner = build_sdxl_refiner_pipeline()
    paths["sdxl_refiner_folder"] = save_folder(root, "tiny-sdxl-refiner", refiner)
    paths["sdxl_refiner_single"] = os.path.join(root, "checkpoints", "tiny-sdxl-refiner.safetensors")
    save_sdxl_checkpoint(refiner, paths["sdxl_refiner_single"])
    flux = build_flux_pipeline()
    paths["flux_folder"] = save_folder(root, "tiny-flux", flux)
    fill = build_flux_pipeline(fill=True)
    paths["flux_fill_folder"] = save_folder(root, "tiny-flux-fill", fill)
    paths.update(save_files(root, {"flux_fill_dit": ("diffusion_models", "tiny-flux1-fill-dev.safetensors",
                                                     dit_to_original(fill.transformer))}))
    sd3 = build_sd3_pipeline()
    paths["sd3_folder"] = save_folder(root, "tiny-sd3", sd3)
    zimage = build_zimage_pipeline()
    paths["zimage_folder"] = save_folder(root, "tiny-z-image", zimage)
    qwen_image = build_qwen_image_pipeline()
    paths["qwen_image_folder"] = save_folder(root, "tiny-qwen-image", qwen_image)
    paths["qwen_image_edit_folder"] = save_qwen_image_edit_folder(root, "tiny-qwen-image-edit-2509", qwen_image)
    paths.update(save_files(root, {"qwen_image_edit_2511_dit": (
        "diffusion_models", "tiny-qwen-image-edit-2511.safetensors", qwen_image_edit_2511_file())}))
    klein = build_flux2_klein_pipeline()
    paths["flux2_klein_folder"] = save_folder(root, "tiny-flux2-klein", klein)
    paths.update(write_flux2_files(root, klein))
    dev = build_flux2_dev_pipeline()
    paths["flux2_dev_folder"] = save_folder(root, "tiny-flux2-dev", dev)
    paths.update(save_files(root, {
        "flux2_dev_dit": ("diffusion_models", "tiny-flux2-dev.safetensors", dit_to_original(dev.transformer)),
        "flux2_dev_mistral": ("text_encoders", "tiny-mistral-3-small-flux2.safetensors",
                              mistral_flux2_file(dev.text_encoder, keep_layers=30))}))
    paths.update(write_flux2_loras(root, klein, dev))
    paths.update(write_split_files(root, flux, sd3, sd1, zimage, qwen_image))
    paths.update(write_unet_files(root, sd1, sdxl))
    paths.update(write_controlnets(root, sd1, sdxl, sd3, flux, qwen_image, zimage))
    paths.update(write_loras(root, sd1, sdxl, sd3, flux, zimage, qwen_image))
    return paths


def save_folder(root: str, name: str, pipe) -> str:
    """A pipeline as a diffusers folder in models/diffusers; returns its path."""
    path = os.path.join(root, "diffusers", name)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def save_files(root: str, files: dict[str, tuple[str, str, dict]]) -> dict[str, str]:
    """{key: (model folder, file name, tensors)} written under ``root``; returns {key: path}."""
    from .ldm_export import save

    paths = {}
    for key, (sub, name, tensors) in files.items():
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        paths[key] = os.path.join(root, sub, name)
        save(tensors, paths[key])
    return paths


def build_controlnet(unet, seed: int):
    """A ControlNet shaped after ``unet`` (its encoder half) with random weights everywhere, zero convolutions
    included (a fresh ControlNet's zero convolutions would make every residual zero)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 16))
    return randomise(controlnet, ("controlnet_down_blocks", "controlnet_mid_block",
                                  "controlnet_cond_embedding.conv_out"), seed)


def randomise(module, prefixes: tuple[str, ...], seed: int):
    """Random values for a fresh ControlNet's zero-initialised layers (else its residuals are all zero)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.startswith(prefixes):
                param.copy_(torch.randn_like(param) * 0.2)
    return module


def build_union_controlnet(unet, seed: int):
    """An SDXL union ControlNet (ControlNetUnionModel, as xinsir's promax) shaped after ``unet``."""
    import inspect

    from diffusers import ControlNetModel, ControlNetUnionModel

    torch.manual_seed(seed)
    base = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 16)).config
    accepted = inspect.signature(ControlNetUnionModel.__init__).parameters
    config = {k: v for k, v in base.items() if k in accepted}
    width = config["block_out_channels"][0]
    controlnet = ControlNetUnionModel(**config, num_control_type=8, num_trans_channel=width, num_trans_head=2,
                                      num_proj_channel=width)
    return randomise(controlnet, ("controlnet_down_blocks", "controlnet_mid_block",
                                  "controlnet_cond_embedding.conv_out", "spatial_ch_projs", "task_embedding"), seed)


def build_sd3_controlnet(transformer, seed: int):
    """An SD3 ControlNet in the InstantX layout (control image as VAE latents, pooled prompt used)."""
    from diffusers import SD3ControlNetModel

    config = transformer.config
    torch.manual_seed(seed)
    controlnet = SD3ControlNetModel(
        sample_size=config.sample_size, patch_size=config.patch_size, in_channels=config.in_channels, num_layers=2,
        attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.joint_attention_dim, caption_projection_dim=config.caption_projection_dim,
        pooled_projection_dim=config.pooled_projection_dim, out_channels=config.out_channels,
        pos_embed_max_size=config.pos_embed_max_size, qk_norm=config.qk_norm, force_zeros_for_pooled_projection=False)
    return randomise(controlnet, ("controlnet_blocks", "pos_embed_input"), seed)


def build_flux_controlnet(transformer, seed: int):
    """A Flux ControlNet in the InstantX layout (control image as packed VAE latents)."""
    from diffusers import FluxControlNetModel

    torch.manual_seed(seed)
    config = transformer.config
    controlnet = FluxControlNetModel.from_transformer(
        transformer, num_layers=1, num_single_layers=1, attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads)
    return randomise(controlnet, ("controlnet_blocks", "controlnet_single_blocks", "controlnet_x_embedder"), seed)


def build_qwen_image_controlnet(transformer, seed: int):
    """A Qwen-Image ControlNet in InstantX's layout (the control image as packed, normalised VAE latents)."""
    from diffusers import QwenImageControlNetModel

    torch.manual_seed(seed)
    config = transformer.config
    controlnet = QwenImageControlNetModel.from_transformer(
        transformer, num_layers=1, attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads)
    return randomise(controlnet, ("controlnet_blocks", "controlnet_x_embedder"), seed)


def build_zimage_controlnet(transformer, seed: int, kind: str | None, control_in_dim: int = 16):
    """A Z-Image Fun ControlNet (VideoX-Fun's layout) of one version: ``kind`` None = 1.0 (plain refiner blocks),
    "control_layers" = 2.0, "control_noise_refiner" = 2.1; 2.x take 33 input channels (the latent padded)."""
    from diffusers import ZImageControlNetModel

    torch.manual_seed(seed)
    config = transformer.config
    controlnet = ZImageControlNetModel(
        control_layers_places=[0], control_refiner_layers_places=[0], control_in_dim=control_in_dim,
        add_control_noise_refiner=kind, dim=config.dim, n_refiner_layers=config.n_refiner_layers,
        n_heads=config.n_heads, n_kv_heads=config.n_kv_heads)
    return randomise(controlnet, ("control_layers", "control_noise_refiner", "control_all_x_embedder"), seed)


def zimage_controlnet_2_0_file(controlnet_2_1) -> dict[str, torch.Tensor]:
    """A 2.0 file as released: the control blocks, and refiner blocks whose input projection is zero (unused)."""
    state = dict(controlnet_2_1.state_dict())
    state.update({k: torch.zeros_like(v) for k, v in state.items() if k.startswith("control_noise_refiner.0.before")})
    return state


def build_flux_union_controlnet(transformer, seed: int, **variant):
    """A Flux union ControlNet (InstantX layout with a control-mode embedding), or with ``variant`` another kind:
    ``conditioning_embedding_channels=16`` is the XLabs layout (the ControlNet reads pixels itself)."""
    from diffusers import FluxControlNetModel

    config = transformer.config
    torch.manual_seed(seed)
    settings = dict(patch_size=config.patch_size, in_channels=config.in_channels, num_layers=1, num_single_layers=1,
                    attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
                    joint_attention_dim=config.joint_attention_dim, pooled_projection_dim=config.pooled_projection_dim,
                    guidance_embeds=config.guidance_embeds, axes_dims_rope=config.axes_dims_rope)
    controlnet = FluxControlNetModel(**{**settings, **(variant or {"num_mode": 7})})
    return randomise(controlnet, ("controlnet_blocks", "controlnet_single_blocks", "controlnet_x_embedder",
                                  "input_hint_block.conv_out"), seed)


def write_controlnets(root: str, sd1, sdxl, sd3, flux, qwen_image, zimage) -> dict[str, str]:
    """Diffusers ControlNet folders in models/controlnet: two for SD1.5 (to combine), one each for SDXL, SD3, Flux,
    Qwen-Image."""
    paths = {}
    builders = {"sd1_controlnet": lambda: build_controlnet(sd1.unet, 11),
                "sd1_controlnet_2": lambda: build_controlnet(sd1.unet, 12),
                "sdxl_controlnet": lambda: build_controlnet(sdxl.unet, 13),
                "sdxl_union_controlnet": lambda: build_union_controlnet(sdxl.unet, 16),
                "sd3_controlnet": lambda: build_sd3_controlnet(sd3.transformer, 14),
                "flux_controlnet": lambda: build_flux_controlnet(flux.transformer, 15),
                "flux_union_controlnet": lambda: build_flux_union_controlnet(flux.transformer, 17),
                "qwen_image_controlnet": lambda: build_qwen_image_controlnet(qwen_image.transformer, 19),
                "zimage_controlnet": lambda: build_zimage_controlnet(zimage.transformer, 20, None),
                "zimage_controlnet_2_1": lambda: build_zimage_controlnet(
                    zimage.transformer, 21, "control_noise_refiner", control_in_dim=33),
                # XLabs: 16 hint channels at 1/8 size in 2x2 patches = the 64 packed latent channels
                "flux_xlabs_controlnet": lambda: build_flux_union_controlnet(
                    flux.transformer, 18, conditioning_embedding_channels=16, patch_size=2)}
    from .ldm_export import controlnet_to_ldm, save

    for key, build in builders.items():
        paths[key] = os.path.join(root, "controlnet", f"tiny-{key.replace('_', '-')}")
        controlnet = build()
        controlnet.save_pretrained(paths[key], safe_serialization=True)
        if key in ("sd1_controlnet", "sdxl_controlnet"):  # also as the single files ComfyUI users have: the original
            # layout (control_v11p_sd15_*.safetensors) and a diffusers folder's weights kept as one file
            paths[key + "_single"] = paths[key] + ".safetensors"
            save(controlnet_to_ldm(controlnet), paths[key + "_single"])
            paths[key + "_diffusers_file"] = paths[key] + "-diffusers-layout.safetensors"
            save(controlnet.state_dict(), paths[key + "_diffusers_file"])
        if key.startswith("zimage"):  # as released: one file (Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors)
            paths[key + "_single"] = paths[key] + ".safetensors"
            save(controlnet.state_dict(), paths[key + "_single"])
            if key == "zimage_controlnet_2_1":
                paths["zimage_controlnet_2_0_single"] = os.path.join(root, "controlnet",
                                                                     "tiny-zimage-controlnet-2-0.safetensors")
                save(zimage_controlnet_2_0_file(controlnet), paths["zimage_controlnet_2_0_single"])
    return paths


def write_loras(root: str, sd1, sdxl, sd3, flux, zimage, qwen_image) -> dict[str, str]:
    """LoRA files in models/loras: SD1.5 in diffusers format (U-Net + text encoder) and the same weights in
    kohya/A1111 format, a second SD1.5 LoRA (to stack), SDXL, SD3 and Flux LoRAs (denoiser + CLIPs), and a
    Z-Image and a Qwen-Image LoRA (transformer: diffusers loads none for their LLM text encoders)."""
    from .lora_export import (
        save_comfy_lora,
        save_diffusers_lora,
        save_kohya_flux_lora,
        save_kohya_lora,
        save_trainer_layouts,
    )

    folder = os.path.join(root, "loras")
    os.makedirs(folder, exist_ok=True)
    paths = {"sd1_lora": os.path.join(folder, "tiny-sd15-lora.safetensors"),
             "sd1_lora_kohya": os.path.join(folder, "tiny-sd15-lora-kohya.safetensors"),
             "sd1_lora_comfy": os.path.join(folder, "tiny-sd15-lora-comfyui-trained.safetensors"),
             "sd1_lora_2": os.path.join(folder, "tiny-sd15-lora-2.safetensors"),
             "sdxl_lora": os.path.join(folder, "tiny-sdxl-lora.safetensors"),
             "sd3_lora": os.path.join(folder, "tiny-sd3-lora.safetensors"),
             "sdxl_lora_kohya": os.path.join(folder, "tiny-sdxl-lora-kohya.safetensors"),
             "flux_lora": os.path.join(folder, "tiny-flux-lora.safetensors"),
             "flux_lora_kohya": os.path.join(folder, "tiny-flux-lora-kohya.safetensors"),
             "zimage_lora": os.path.join(folder, "tiny-z-image-lora.safetensors"),
             "zimage_lora_prefixed": os.path.join(folder, "tiny-z-image-lora-ai-toolkit.safetensors"),
             "zimage_lora_kohya": os.path.join(folder, "tiny-z-image-lora-kohya.safetensors"),
             "qwen_image_lora": os.path.join(folder, "tiny-qwen-image-lora.safetensors"),
             "qwen_image_lora_prefixed": os.path.join(folder, "tiny-qwen-image-lora-ai-toolkit.safetensors"),
             "qwen_image_lora_kohya": os.path.join(folder, "tiny-qwen-image-lora-kohya.safetensors")}
    layers = save_diffusers_lora(sd1, paths["sd1_lora"], seed=21)
    save_kohya_lora(layers, paths["sd1_lora_kohya"])
    save_comfy_lora(layers, sd1.unet, paths["sd1_lora_comfy"])
    save_diffusers_lora(sd1, paths["sd1_lora_2"], seed=22)
    sdxl_layers = save_diffusers_lora(sdxl, paths["sdxl_lora"], seed=23)
    save_kohya_lora(sdxl_layers, paths["sdxl_lora_kohya"], unet=sdxl.unet)
    save_diffusers_lora(sd3, paths["sd3_lora"], seed=24)
    save_diffusers_lora(flux, paths["flux_lora"], seed=25)
    save_kohya_flux_lora(flux.transformer, paths["flux_lora_kohya"], seed=26)
    zimage_layers = save_diffusers_lora(zimage, paths["zimage_lora"], seed=27, text_encoders=False)
    save_trainer_layouts(zimage_layers, paths["zimage_lora_prefixed"], paths["zimage_lora_kohya"])
    qwen_layers = save_diffusers_lora(qwen_image, paths["qwen_image_lora"], seed=28, text_encoders=False)
    save_trainer_layouts(qwen_layers, paths["qwen_image_lora_prefixed"], paths["qwen_image_lora_kohya"])
    return paths


def write_unet_files(root: str, sd1, sdxl) -> dict[str, str]:
    """SD1.5 and SDXL as split files: U-Nets in diffusion_models (original layout; SD1.5 without, SDXL with the
    checkpoint prefix, as both occur) and their CLIP text encoders in text_encoders."""
    from .ldm_export import text_encoder_file, unet_to_ldm

    return save_files(root, {
        "sd1_unet": ("diffusion_models", "tiny-sd15-unet.safetensors",
                     {k.removeprefix("model.diffusion_model."): v for k, v in unet_to_ldm(sd1.unet).items()}),
        "sd1_clip_l": ("text_encoders", "tiny-sd15-clip_l.safetensors", text_encoder_file(sd1.text_encoder)),
        "sdxl_unet": ("diffusion_models", "tiny-sdxl-unet.safetensors", unet_to_ldm(sdxl.unet)),
        "sdxl_clip_l": ("text_encoders", "tiny-sdxl-clip_l.safetensors", text_encoder_file(sdxl.text_encoder)),
        "sdxl_clip_g": ("text_encoders", "tiny-sdxl-clip_g.safetensors", text_encoder_file(sdxl.text_encoder_2)),
    })


def write_flux2_files(root: str, klein) -> dict[str, str]:
    """Flux.2 klein as ComfyUI users have it: flux-2-klein-4b (BFL layout), qwen_3_4b, flux2-vae (BFL layout: the
    quant convs inside encoder / decoder, the batch-norm statistics beside them)."""
    from .ldm_export import dit_to_original, flux2_vae_to_bfl, text_encoder_file

    return save_files(root, {
        "flux2_dit": ("diffusion_models", "tiny-flux-2-klein.safetensors", dit_to_original(klein.transformer)),
        "flux2_qwen3": ("text_encoders", "tiny-flux2-qwen-3.safetensors", text_encoder_file(klein.text_encoder)),
        "flux2_vae": ("vae", "tiny-flux2-vae.safetensors", flux2_vae_to_bfl(klein.vae)),
    })


def write_flux2_loras(root: str, klein, dev) -> dict[str, str]:
    """Flux.2 LoRAs (transformer only: diffusers loads none for its LLM text encoders) in the diffusers layout and in
    BFL's block names as ai-toolkit writes them (fused q/k/v with one LoRA each), for klein and for dev."""
    from .ldm_export import dit_to_original
    from .lora_export import save_diffusers_lora, save_original_layout_lora

    folder = os.path.join(root, "loras")
    os.makedirs(folder, exist_ok=True)
    paths = {"flux2_lora": os.path.join(folder, "tiny-flux2-lora.safetensors"),
             "flux2_lora_ai_toolkit": os.path.join(folder, "tiny-flux2-lora-ai-toolkit.safetensors"),
             "flux2_dev_lora_ai_toolkit": os.path.join(folder, "tiny-flux2-dev-lora-ai-toolkit.safetensors")}
    save_diffusers_lora(klein, paths["flux2_lora"], seed=29, text_encoders=False)
    save_original_layout_lora(dit_to_original(klein.transformer), paths["flux2_lora_ai_toolkit"], seed=30)
    save_original_layout_lora(dit_to_original(dev.transformer), paths["flux2_dev_lora_ai_toolkit"], seed=31)
    return paths


def write_split_files(root: str, flux, sd3, sd1, zimage, qwen_image) -> dict[str, str]:
    """The Flux, SD3 and Z-Image models as ComfyUI users have them: denoisers in diffusion_models (original layout),
    text encoders in text_encoders, VAEs in vae (original and diffusers layout, as both occur), and whole
    checkpoints (Flux without T5, as some releases; SD3 with all three)."""
    from .ldm_export import dit_to_original, save_dit_checkpoint, text_encoder_file, vae_to_ldm, wan_vae_to_original

    def ldm_vae(vae):
        return {k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(vae).items()}

    paths = save_files(root, {
        "flux_dit": ("diffusion_models", "tiny-flux1-dev.safetensors", dit_to_original(flux.transformer)),
        "flux_clip_l": ("text_encoders", "tiny-flux-clip_l.safetensors", text_encoder_file(flux.text_encoder)),
        "flux_t5": ("text_encoders", "tiny-flux-t5xxl.safetensors", text_encoder_file(flux.text_encoder_2)),
        "flux_vae_ldm": ("vae", "tiny-flux-ae.safetensors", ldm_vae(flux.vae)),
        "flux_vae": ("vae", "tiny-flux-vae-diffusers.safetensors", flux.vae.state_dict()),
        "sd1_vae": ("vae", "tiny-sd15-vae.safetensors", ldm_vae(sd1.vae)),
        "sd3_dit": ("diffusion_models", "tiny-sd3.5-medium.safetensors", dit_to_original(sd3.transformer)),
        "sd3_clip_l": ("text_encoders", "tiny-sd3-clip_l.safetensors", text_encoder_file(sd3.text_encoder)),
        "sd3_clip_g": ("text_encoders", "tiny-sd3-clip_g.safetensors", text_encoder_file(sd3.text_encoder_2)),
        "sd3_t5": ("text_encoders", "tiny-sd3-t5xxl.safetensors", text_encoder_file(sd3.text_encoder_3)),
        "zimage_dit": ("diffusion_models", "tiny-z-image-turbo.safetensors", dit_to_original(zimage.transformer)),
        "zimage_qwen3": ("text_encoders", "tiny-qwen-3.safetensors", text_encoder_file(zimage.text_encoder)),
        "zimage_vae": ("vae", "tiny-z-image-ae.safetensors", ldm_vae(zimage.vae)),
        # as qwen_image_bf16.safetensors: diffusers' names (ComfyUI's Qwen-Image model uses them too)
        "qwen_image_dit": ("diffusion_models", "tiny-qwen-image.safetensors", qwen_image.transformer.state_dict()),
        "qwen_image_text": ("text_encoders", "tiny-qwen-2.5-vl.safetensors",
                            text_encoder_file(qwen_image.text_encoder)),
        "qwen_image_vae": ("vae", "tiny-qwen-image-vae.safetensors", wan_vae_to_original(qwen_image.vae)),
    })
    paths["flux_single"] = os.path.join(root, "checkpoints", "tiny-flux1-dev.safetensors")
    save_dit_checkpoint(flux, paths["flux_single"], {"clip_l": flux.text_encoder, "t5xxl": flux.text_encoder_2}, "vae.")
    paths["sd3_single"] = os.path.join(root, "checkpoints", "tiny-sd3.5-medium.safetensors")
    save_dit_checkpoint(sd3, paths["sd3_single"], {"clip_l": sd3.text_encoder, "clip_g": sd3.text_encoder_2,
                                                   "t5xxl": sd3.text_encoder_3}, "first_stage_model.")
    paths["sd3_single_no_text"] = os.path.join(root, "checkpoints", "tiny-sd3.5-medium-no-text.safetensors")
    save_dit_checkpoint(sd3, paths["sd3_single_no_text"], {}, "first_stage_model.")
    return paths
