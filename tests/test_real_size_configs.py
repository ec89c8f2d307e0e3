"""The architectures of the released models are read back exactly from their tensor shapes.

No real weights exist here (no network), so each released configuration is built on the meta device (no memory),
its tensor names and shapes are written in the original layout the files use, and our config inference must give
back the released configuration. This checks the size rules (heads, widths, layer counts, SD3.5's dual attention,
Flux's rotary axes) at the real sizes the tiny models cannot show.
"""

from __future__ import annotations

import pytest


def meta(module_class, config):
    from diffusers_stages.engine.weights import empty

    return empty(module_class, config)


def shapes_of(tensors) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


SD3_RELEASES = {  # the released transformer configs (stabilityai/*/transformer/config.json)
    "sd3-medium": dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=192,
                       qk_norm=None, dual_attention_layers=()),
    "sd3.5-large": dict(num_layers=38, num_attention_heads=38, caption_projection_dim=2432, pos_embed_max_size=192,
                        qk_norm="rms_norm", dual_attention_layers=()),
    "sd3.5-medium": dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=384,
                         qk_norm="rms_norm", dual_attention_layers=tuple(range(13))),
}


@pytest.mark.parametrize("release", SD3_RELEASES)
def test_sd3_release_configs_are_read_back(release):
    from diffusers import SD3Transformer2DModel

    from diffusers_stages.engine.families import dit_keys

    config = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                  joint_attention_dim=4096, pooled_projection_dim=2048, **SD3_RELEASES[release])
    model = meta(SD3Transformer2DModel, config)
    original = dit_keys.to_original(model.state_dict(), dit_keys.sd3_rules(config))
    assert dit_keys.sd3_config(shapes_of(original)) == config


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_flux_release_configs_are_read_back(guidance):
    from diffusers import FluxTransformer2DModel

    from diffusers_stages.engine.families import dit_keys

    config = dict(patch_size=1, in_channels=64, out_channels=64, num_layers=19, num_single_layers=38,
                  attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                  guidance_embeds=guidance, axes_dims_rope=(16, 56, 56))
    model = meta(FluxTransformer2DModel, config)
    original = dit_keys.to_original(model.state_dict(), dit_keys.flux_rules(config))
    assert dit_keys.flux_config(shapes_of(original)) == config


@pytest.mark.parametrize("variant, heads", [("sd1", "fixed"), ("sd2", "per64"), ("sdxl", "per64")])
def test_unet_release_configs_are_read_back(variant, heads):
    from diffusers import UNet2DConditionModel

    from diffusers_stages.engine.families.bundled_configs import bundled_config, infer_unet_config
    from diffusers_stages.engine.families.ldm_keys import unet_key_to_ldm

    released = bundled_config(variant)["unet"]
    model = meta(UNet2DConditionModel, released)
    up_attention = tuple("CrossAttn" in t for t in model.config.up_block_types)
    shapes = {}
    for key, value in model.state_dict().items():
        name = unet_key_to_ldm(key, model.config.layers_per_block, up_attention)
        if name is not None:
            shapes[name] = tuple(value.shape)
    inferred = infer_unet_config(released, shapes, heads, at="")
    built = meta(UNet2DConditionModel, inferred)
    assert {k: tuple(v.shape) for k, v in built.state_dict().items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()}
    for field in ("block_out_channels", "layers_per_block", "cross_attention_dim", "transformer_layers_per_block",
                  "attention_head_dim", "use_linear_projection", "down_block_types", "up_block_types"):
        assert _same(built.config[field], model.config[field]), field


def _same(a, b) -> bool:
    """Config values equal up to how diffusers stores them (an int for 'every block' or a list)."""
    def as_list(v):
        return list(v) if isinstance(v, (list, tuple)) else [v] * 4
    return as_list(a)[:4] == as_list(b)[:4] if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)) else a == b


@pytest.mark.parametrize("kind", ["clip_l", "clip_g"])
def test_clip_release_configs_are_read_back(kind):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from diffusers_stages.engine.families.bundled_configs import bundled_config, infer_text_encoder_config

    released = bundled_config("sdxl")["text_encoder" if kind == "clip_l" else "text_encoder_2"]
    model = meta(CLIPTextModelWithProjection, CLIPTextConfig(**{k: v for k, v in released.items()
                                                                  if k != "architectures"}))
    inferred = infer_text_encoder_config(released, shapes_of(model.state_dict()), "clip", "text_model.")
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                  "max_position_embeddings", "hidden_act", "eos_token_id"):
        assert inferred[field] == released[field], field


def test_t5_xxl_config_is_read_back():
    from transformers import T5Config, T5EncoderModel

    from diffusers_stages.engine.text_files import t5_config

    released = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                    relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")
    model = meta(T5EncoderModel, T5Config(**released))
    inferred = t5_config(shapes_of(model.state_dict()))
    assert {k: inferred[k] for k in released} == released
    assert next(model.parameters()).device.type == "meta"  # nothing was allocated


@pytest.mark.parametrize("variant", ["sd1", "sdxl"])
@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_controlnet_release_configs_are_read_back(variant, layout):
    """A ControlNet of the released U-Net's shape (control_v11p_sd15_*, controlnet-canny-sdxl-1.0), in both file
    layouts."""
    import inspect

    from diffusers import ControlNetModel

    from diffusers_stages.engine.families.bundled_configs import bundled_config
    from diffusers_stages.engine.families.controlnet_files import controlnet_config
    from diffusers_stages.engine.families.ldm_keys import controlnet_key_to_ldm

    released = bundled_config(variant)["unet"]
    accepted = inspect.signature(ControlNetModel.__init__).parameters
    model = meta(ControlNetModel, {k: v for k, v in released.items() if k in accepted})
    state = shapes_of(model.state_dict())
    if layout == "original":
        blocks = len(model.controlnet_cond_embedding.blocks)
        state = {"control_model." + name: shape for key, shape in state.items()
                 if (name := controlnet_key_to_ldm(key, model.config.layers_per_block, blocks)) is not None}
    config, diffusers_layout = controlnet_config(state)
    assert diffusers_layout == (layout == "diffusers")
    assert shapes_of(meta(ControlNetModel, config).state_dict()) == shapes_of(model.state_dict())


def test_z_image_turbo_config_is_read_back():
    """Tongyi-MAI/Z-Image-Turbo/transformer/config.json (6B), written as the original layout ComfyUI's
    z_image_turbo_bf16.safetensors uses."""
    from diffusers import ZImageTransformer2DModel

    from diffusers_stages.engine.families import dit_keys

    config = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                  n_refiner_layers=2, n_heads=30, n_kv_heads=30, qk_norm=True, cap_feat_dim=2560,
                  axes_dims=[32, 48, 48])
    model = meta(ZImageTransformer2DModel, config)
    original = dit_keys.to_original(model.state_dict(), dit_keys.z_image_rules(config))
    assert dit_keys.z_image_config(shapes_of(original)) == config
    assert model.config.axes_lens == [1024, 512, 512] and model.config.rope_theta == 256.0  # the defaults we keep


def test_qwen3_4b_config_is_read_back():
    """Qwen/Qwen3-4B's config (Z-Image's text encoder), from qwen_3_4b.safetensors' names (Qwen3ForCausalLM)."""
    from transformers import Qwen3Config, Qwen3Model

    from diffusers_stages.engine.text_files import qwen3_config, qwen3_prefix

    released = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=1000000.0,
                    rms_norm_eps=1e-6, max_position_embeddings=40960, hidden_act="silu", attention_bias=False,
                    tie_word_embeddings=True)
    model = meta(Qwen3Model, Qwen3Config(**released))
    names = {f"model.{k}": v for k, v in model.state_dict().items()}
    prefix = qwen3_prefix(names)
    assert prefix == "model."
    assert qwen3_config({k[len(prefix):]: tuple(v.shape) for k, v in names.items()}) == released


def test_qwen_image_config_is_read_back():
    """Qwen/Qwen-Image/transformer/config.json (20B), from the names ComfyUI's qwen_image_bf16.safetensors uses."""
    from diffusers import QwenImageTransformer2DModel

    from diffusers_stages.engine.families import dit_keys

    config = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56),
                  use_additional_t_cond=False, zero_cond_t=False)
    model = meta(QwenImageTransformer2DModel, config)
    assert dit_keys.qwen_image_config(shapes_of(model.state_dict())) == config
    # Qwen-Image-Edit-2511 (Qwen/Qwen-Image-Edit-2511: zero_cond_t true), as Comfy-Org's file marks it
    marked = {**shapes_of(model.state_dict()), "__index_timestep_zero__": (0,)}
    assert dit_keys.qwen_image_config(marked) == {**config, "zero_cond_t": True}


FLUX2_RELEASES = {  # black-forest-labs/FLUX.2-*/transformer/config.json (diffusers' convert_flux2_to_diffusers.py)
    "dev": dict(num_layers=8, num_single_layers=48, num_attention_heads=48, joint_attention_dim=15360,
                guidance_embeds=True),
    "klein-4b": dict(num_layers=5, num_single_layers=20, num_attention_heads=24, joint_attention_dim=7680,
                     guidance_embeds=False),
    "klein-9b": dict(num_layers=8, num_single_layers=24, num_attention_heads=32, joint_attention_dim=12288,
                     guidance_embeds=False),
}


@pytest.mark.parametrize("release", FLUX2_RELEASES)
def test_flux2_release_configs_are_read_back(release):
    """The BFL layout ComfyUI's flux2_dev / flux-2-klein-*.safetensors use."""
    from diffusers import Flux2Transformer2DModel

    from diffusers_stages.engine.families import dit_keys

    config = dict(patch_size=1, in_channels=128, out_channels=128, attention_head_dim=128,
                  timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000,
                  eps=1e-6, **FLUX2_RELEASES[release])
    model = meta(Flux2Transformer2DModel, config)
    original = dit_keys.to_original(model.state_dict(), dit_keys.flux2_rules(config))
    assert all(not k.endswith(".bias") for k in original)  # the release has no biases
    assert dit_keys.flux2_config(shapes_of(original)) == config


def test_flux2_vae_is_read_back():
    """flux2-vae.safetensors (BFL layout: quant convs inside encoder / decoder, batch-norm statistics) gives the
    released AutoencoderKLFlux2 (diffusers' defaults are the release's), tensor for tensor."""
    from diffusers import AutoencoderKLFlux2

    from diffusers_stages.engine.vae_loading import vae_config
    from diffusers_stages.tiny.ldm_export import flux2_vae_to_bfl

    released = meta(AutoencoderKLFlux2, {})
    config, layout, prefix = vae_config(shapes_of(flux2_vae_to_bfl(released)))
    assert (layout, prefix) == ("ldm", "")
    assert shapes_of(meta(AutoencoderKLFlux2, config).state_dict()) == shapes_of(released.state_dict())


def test_qwen_image_vae_is_read_back_and_renamed_as_diffusers_does():
    """qwen_image_vae.safetensors (the Wan 2.1 layout): the released AutoencoderKLQwenImage config is read back, and
    every original name maps to the diffusers name diffusers' own converter (convert_wan_vae_to_diffusers, written
    for the released 4 levels x 2 blocks) gives it."""
    import torch
    from diffusers import AutoencoderKLQwenImage
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    from diffusers_stages.engine.wan_vae import to_original_key, wan_vae_state

    released = meta(AutoencoderKLQwenImage, {})
    blocks = released.config.num_res_blocks
    original = {to_original_key(k, blocks): k for k in released.state_dict()}
    assert convert_wan_vae_to_diffusers(dict(original)) == {name: name for name in original.values()}
    config, state = wan_vae_state({k: torch.empty(released.state_dict()[v].shape, device="meta")
                                   for k, v in original.items()}, "vae_name")
    assert {k: v for k, v in released.config.items() if k in config} == config
    assert set(state) == set(released.state_dict())


def test_qwen_2_5_vl_7b_config_is_read_back():
    """Qwen/Qwen2.5-VL-7B-Instruct's config (Qwen-Image's text encoder), from qwen_2.5_vl_7b.safetensors' original
    names (model.* for the language model, visual.* for the vision tower, lm_head)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from diffusers_stages.engine.text_files import qwen25vl_config, qwen25vl_state, text_kind
    from diffusers_stages.tiny.ldm_export import text_encoder_file

    text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, head_dim=128, max_position_embeddings=128000,
                rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, out_hidden_size=3584,
                  in_channels=3, patch_size=14, temporal_patch_size=2, tokens_per_second=2, window_size=112,
                  spatial_merge_size=2, fullatt_block_indexes=[7, 15, 23, 31])
    released = dict(text_config=text, vision_config=vision, tie_word_embeddings=False)
    model = meta(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig(**released))
    names = text_encoder_file(model)
    assert "model.layers.0.self_attn.k_proj.bias" in names and "visual.blocks.0.attn.qkv.weight" in names
    assert text_kind(names) == "qwen25vl"
    assert qwen25vl_config(shapes_of(qwen25vl_state(names))) == released


def test_z_image_fun_controlnet_union_config_is_read_back():
    """alibaba-pai's Z-Image-Turbo-Fun-Controlnet-Union (1.0): 6 control blocks over the 30 layers (every 5th),
    2 plain refiner blocks, 16 input channels; its file holds no config."""
    from diffusers import ZImageControlNetModel

    from diffusers_stages.engine.families.z_image import z_image_controlnet_config

    released = dict(control_layers_places=[0, 5, 10, 15, 20, 25], control_refiner_layers_places=[0, 1],
                    control_in_dim=16, add_control_noise_refiner=None, all_patch_size=[2], all_f_patch_size=[1],
                    dim=3840, n_refiner_layers=2, n_heads=30, n_kv_heads=30)
    model = meta(ZImageControlNetModel, released)
    assert z_image_controlnet_config(model.state_dict()) == released


def test_mistral_3_small_config_is_read_back():
    """Mistral-Small-3.2-24B's language model (Flux.2 dev's text encoder), from mistral_3_small_flux2's names."""
    from transformers import MistralConfig, MistralModel

    from diffusers_stages.engine.text_files import mistral3_config, text_kind

    released = dict(vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=1000000000.0,
                    rms_norm_eps=1e-5, max_position_embeddings=131072, hidden_act="silu", tie_word_embeddings=False,
                    sliding_window=None)
    model = meta(MistralModel, MistralConfig(**released))
    names = {f"model.{k}": v for k, v in model.state_dict().items()}
    assert text_kind(names) == "mistral3"
    assert mistral3_config({k[len("model."):]: tuple(v.shape) for k, v in names.items()}) == released
