"""Qwen-Image: a QwenImageTransformer2DModel, a Qwen2.5-VL text encoder, the Wan-style Qwen-Image VAE.

As QwenImagePipeline: the prompt is written into the pipeline's system/user template, the text encoder's last hidden
states of the real tokens after the template's first 34 are the conditioning. Latents are 16 channels at 1/8,
normalised per channel by the VAE's latents_mean / latents_std, packed in 2x2 patches inside the engine; LATENT
stays [B, 16, h, w] (core's Qwen-Image latents, the Wan 2.1 format, without the frame axis its VAE adds for one
image). True CFG as two calls, positive first, combined as the pipeline does: the guided prediction rescaled to the
positive prediction's norm. Without a negative prompt the pipeline runs no CFG.
"""

from __future__ import annotations

import torch

from ..components import Conditioning, TextEncoder
from ..errors import InputError
from ..family import Family, LoadedModel, ModelInputs, TextSlot
from . import dit_keys
from .dit_files import DitLayout
from .flux import FluxFamily
from .folders import load_llm_folder

# QwenImagePipeline's prompt template, its first tokens (the system turn) dropped from the conditioning
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>\n<|im_start|>assistant\n")
TEMPLATE_START = 34
MAX_SEQUENCE_LENGTH = 1024  # tokenizer_max_length and max_sequence_length of the pipeline
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
             "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 0.9, "base_image_seq_len": 256,
             "max_image_seq_len": 8192, "shift_terminal": 0.02, "time_shift_type": "exponential"}  # Qwen-Image's


class QwenImageFamily(Family):
    id = "qwenimage"
    display_name = "Qwen-Image"
    latent_channels = 16
    spatial_factor = 8
    size_multiple = 16
    pipeline_classes = ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline")
    host_latent_format = "Wan21"  # core's Qwen-Image latent format
    flow_matching = True
    packs_latents = True
    skip_layer_lists = {"": "transformer_blocks"}  # diffusers registers QwenImageTransformerBlock for layer skips
    begin_index_on_full_run = True
    inference_dtypes = ("bf16", "fp16", "fp32")
    lora_pipeline, lora_denoiser = "QwenImagePipeline", "transformer"  # QwenImageLoraLoaderMixin: the transformer
    text_slots = (TextSlot("qwen25vl", projection=False),)
    controlnet_classes = ("QwenImageControlNetModel",)  # InstantX's, the union one included (it takes no mode)
    control_shared_across_cfg_calls = True  # QwenImageControlNetPipeline reuses the positive call's residuals

    def claims_controlnet(self, class_name, config):
        return class_name == "QwenImageControlNetModel"

    def control_problem(self, denoiser, controlnet):
        if controlnet.config.extra_condition_channels:
            return ("is an inpainting ControlNet (it also takes a mask and the masked image, which Apply ControlNet "
                    "does not give; QwenImageControlNetInpaintPipeline's inputs are not supported yet)")
        return None

    @property
    def latent_scaling(self):
        """For a transformer loaded on its own: the released Qwen-Image VAE's per-channel statistics (the
        defaults of diffusers' AutoencoderKLQwenImage)."""
        import inspect

        from diffusers import AutoencoderKLQwenImage

        defaults = inspect.signature(AutoencoderKLQwenImage.__init__).parameters
        return 1.0 / torch.tensor(defaults["latents_std"].default), torch.tensor(defaults["latents_mean"].default)

    @staticmethod
    def vae_latent_scaling(vae):
        """Per channel: (raw - latents_mean) / latents_std, the scale kept as 1 / std as the pipeline computes it."""
        config = vae.config
        return 1.0 / torch.tensor(config.latents_std), torch.tensor(config.latents_mean)

    @staticmethod
    def combine_cfg(cond, uncond, scale):
        """QwenImagePipeline's true CFG: the guided prediction rescaled to the positive prediction's norm."""
        combined = uncond + scale * (cond - uncond)
        return combined * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))

    def unconditional(self, positive, encode_empty):
        """QwenImagePipeline runs true CFG only with a negative prompt: without one there is no guidance."""
        return None

    dit_layout = DitLayout("QwenImageTransformer2DModel", "Qwen-Image transformer",
                           dit_keys.is_qwen_image, dit_keys.qwen_image_config, dit_keys.qwen_image_rules)
    file_scheduler_config = SCHEDULER

    # ---- loading -------------------------------------------------------------------------------
    def claims_checkpoint(self, keys) -> bool:
        return False  # split files and folders only

    def load_folder(self, path: str, dtype: torch.dtype, prediction: str) -> LoadedModel:
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
        from transformers import Qwen2_5_VLForConditionalGeneration

        return load_llm_folder(self, path, dtype, QwenImageTransformer2DModel, Qwen2_5_VLForConditionalGeneration,
                               AutoencoderKLQwenImage)

    # ---- conditioning ----------------------------------------------------------------------------
    def encode_prompt(self, text_encoder: TextEncoder, text: str, clip_skip: int, t5_max_length: int = 0):
        """The pipeline's _get_qwen_prompt_embeds for one prompt, cut to max_sequence_length."""
        if clip_skip:
            raise InputError("clip_skip", "Qwen-Image's text encoder is an LLM whose last layer is always used; "
                             "clip_skip does not apply.", "set clip_skip to 0.")
        tokenizer, module = text_encoder.parts[0].tokenizer, text_encoder.parts[0].module
        tokens = tokenizer([PROMPT_TEMPLATE.format(text)], max_length=MAX_SEQUENCE_LENGTH + TEMPLATE_START,
                           padding=True, truncation=True, return_tensors="pt").to(module.device)
        with torch.no_grad():
            hidden = module(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                            output_hidden_states=True).hidden_states[-1]
        embeds = hidden[0][tokens.attention_mask[0].bool()][TEMPLATE_START:]
        return Conditioning(self, embeds[:t5_max_length or MAX_SEQUENCE_LENGTH].unsqueeze(0), None, text)


    # ---- denoising -------------------------------------------------------------------------------
    # Flux.1's: 2x2 patches (the transformer sees in_channels = 4 x 16), sigmas linspace(1, 1/N, N) shifted by mu
    latent_channels_of = FluxFamily.latent_channels_of
    set_timesteps = FluxFamily.set_timesteps
    to_model_layout = FluxFamily.to_model_layout
    from_model_layout = FluxFamily.from_model_layout

    def model_inputs(self, denoiser, guider, batch, image_size) -> ModelInputs:
        module = denoiser.module
        device, dtype = module.device, module.dtype
        # one entry, as the pipeline passes for one prompt (whatever num_images_per_prompt)
        img_shapes = [[(1, image_size[0] // 16, image_size[1] // 16)]]
        guidance = None
        if module.config.guidance_embeds:
            value = guider.positive.guidance if guider.positive.guidance is not None else 1.0
            guidance = torch.full([1], value, device=device, dtype=torch.float32).expand(batch)

        def inputs(cond: Conditioning):
            embeds = cond.embeds.to(device, dtype)
            return {"encoder_hidden_states": embeds.repeat(batch, 1, 1), "encoder_hidden_states_mask": None,
                    "img_shapes": img_shapes, "guidance": guidance}

        return ModelInputs(cfg=None, cond=inputs(guider.positive), uncond=inputs(guider.negative))

    def prepare_control(self, control, height, width, batch, copies, generator):
        """As QwenImageControlNetPipeline: the image in -1..1, one frame through the VAE, its posterior sampled with
        the run's generator (before the initial noise is drawn), normalised per channel, packed in 2x2 patches."""
        from ..control_inputs import control_latents, control_pixels

        pixels = control_pixels(control, height, width, batch, normalize=True)
        return FluxFamily.to_model_layout(self, control_latents(control, pixels, sample_with=generator))

    def control_residuals(self, denoiser, control, controlnet, model_input, timestep, inputs, control_input, scale):
        timestep = timestep.expand(model_input.shape[0]).to(model_input.dtype)
        samples = controlnet(hidden_states=model_input, controlnet_cond=control_input, conditioning_scale=scale,
                             timestep=timestep / 1000, encoder_hidden_states=inputs["encoder_hidden_states"],
                             encoder_hidden_states_mask=inputs["encoder_hidden_states_mask"],
                             img_shapes=inputs["img_shapes"], return_dict=False)
        return {"controlnet_block_samples": samples}

    def predict(self, denoiser, model_input, timestep, inputs):
        timestep = timestep.expand(model_input.shape[0]).to(model_input.dtype)
        return denoiser.module(hidden_states=model_input, timestep=timestep / 1000, **inputs, return_dict=False)[0]


QWEN_IMAGE = QwenImageFamily()
