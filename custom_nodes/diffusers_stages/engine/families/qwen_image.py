"""Qwen-Image: a QwenImageTransformer2DModel, a Qwen2.5-VL text encoder, the Wan-style Qwen-Image VAE.

As QwenImagePipeline: the prompt is written into the pipeline's system/user template, the text encoder's last hidden
states of the real tokens after the template's first 34 are the conditioning. Latents are 16 channels at 1/8,
normalised per channel by the VAE's latents_mean / latents_std, packed in 2x2 patches inside the engine; LATENT
stays [B, 16, h, w] (core's Qwen-Image latents, the Wan 2.1 format, without the frame axis its VAE adds for one
image). True CFG as two calls, positive first, combined as the pipeline does: the guided prediction rescaled to the
positive prediction's norm. Without a negative prompt the pipeline runs no CFG.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from ..components import Conditioning, TextEncoder
from ..errors import InputError
from ..family import Family, LoadedModel, ModelInputs, TextSlot
from . import dit_keys
from .dit_files import DitLayout
from .flux import FluxFamily, reference_problem, with_references
from .folders import load_llm_folder

# QwenImagePipeline's prompt template, its first tokens (the system turn) dropped from the conditioning
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>\n<|im_start|>assistant\n")
TEMPLATE_START = 34
# QwenImageEditPlusPipeline's: the prompt follows "Picture 1: <picture tokens>" for each reference picture, which the
# text encoder's vision tower reads; the first 64 tokens dropped
EDIT_TEMPLATE = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
                 "objects, background), then explain how the user's text instruction should alter or modify the "
                 "image. Generate a new image that meets the user's requirements while maintaining consistency with "
                 "the original input where appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
                 "<|im_start|>assistant\n")
EDIT_TEMPLATE_START = 64
PICTURE_PROMPT = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"
# Qwen2.5-VL's image processor settings (its preprocessor_config.json), for a text encoder loaded from a file
QWEN25VL_IMAGE_PROCESSOR = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                            "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                            "image_std": [0.26862954, 0.26130258, 0.27577711]}
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
    pipeline_classes = ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline",
                        "QwenImageEditPlusPipeline", "QwenImageEditPipeline")
    takes_reference_images = True  # Qwen-Image-Edit (Plus): through the VL text encoder and as latent tokens
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

        loaded = load_llm_folder(self, path, dtype, QwenImageTransformer2DModel, Qwen2_5_VLForConditionalGeneration,
                                 AutoencoderKLQwenImage)
        processor = os.path.join(path, "processor", "preprocessor_config.json")
        if not os.path.isfile(processor):  # a text-to-image folder: pictures get Qwen2.5-VL's own settings
            return loaded
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        image_processor = Qwen2VLImageProcessorPil.from_pretrained(os.path.dirname(processor))
        part = dataclasses.replace(loaded.text_encoder.parts[0], image_processor=image_processor)
        return dataclasses.replace(loaded, text_encoder=dataclasses.replace(loaded.text_encoder, parts=(part,)))

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


    # ---- reference pictures (Qwen-Image-Edit Plus) ------------------------------------------------
    def reference_latents(self, vae, raw):
        """As QwenImageEditPlusPipeline: (raw - latents_mean) / latents_std per channel (a division, where its
        text-to-image and img2img pipelines multiply by 1 / std)."""
        view = (1, -1, 1, 1)
        mean = torch.tensor(vae.module.config.latents_mean).view(view).to(raw)
        std = torch.tensor(vae.module.config.latents_std).view(view).to(raw)
        return (raw - mean) / std

    def with_references(self, cond, vae, pictures, raw):
        """The pictures also go to the text encoder: the prompt is encoded again as QwenImageEditPlusPipeline encodes
        it, with every reference picture so far ("Picture 1: …", "Picture 2: …") before it."""
        cond = super().with_references(cond, vae, pictures, raw)
        if cond.text_encoder is None:
            raise InputError("positive", "the prompt does not say which text encoder made it, and Qwen-Image-Edit "
                             "reads the reference pictures through it.", "connect a Text Encode node's output.")
        embeds = encode_edit_prompt(cond.text_encoder.parts[0], cond.text, cond.reference_pictures)
        return dataclasses.replace(cond, embeds=embeds)

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
            shapes, references = img_shapes, {}
            if cond.references:  # as QwenImageEditPlusPipeline: their tokens after the latents', their sizes listed
                problem = reference_problem(cond, most=None)
                if problem:
                    raise InputError("guider", f"{problem}.", "remove the ControlNet or the Reference Image node.")
                latents = [reference.to(device, dtype) for reference in cond.references]
                shapes = [[*img_shapes[0], *((1, r.shape[2] // 2, r.shape[3] // 2) for r in latents)]]
                references = {"reference_tokens": torch.cat([self.to_model_layout(r) for r in latents],
                                                            dim=1).repeat(batch, 1, 1)}
            return {"encoder_hidden_states": embeds.repeat(batch, 1, 1), "encoder_hidden_states_mask": None,
                    "img_shapes": shapes, "guidance": guidance, **references}

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
        hidden_states, inputs = with_references(model_input, inputs)
        output = denoiser.module(hidden_states=hidden_states, timestep=timestep / 1000, **inputs, return_dict=False)[0]
        return output[:, :model_input.shape[1]]


def encode_edit_prompt(part, text: str, pictures) -> torch.Tensor:
    """QwenImageEditPlusPipeline's _get_qwen_prompt_embeds for one prompt and its reference pictures (IMAGE [1, H, W,
    3] each): each picture as a PIL picture resized (Lanczos) to about 384 x 384 in its aspect ratio, as the pipeline
    resizes it, then the Qwen2.5-VL processor (its own resize to 28 px cells, normalisation, patches) and the text
    encoder with its vision tower; the last hidden states of the tokens after the template's first 64."""
    import numpy as np
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import CONDITION_IMAGE_SIZE, calculate_dimensions
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    resized = []
    for picture in pictures:
        pixels = (picture[0, ..., :3].float().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        width, height = calculate_dimensions(CONDITION_IMAGE_SIZE, image.width / image.height)
        resized.append(image.resize((width, height), resample=Image.LANCZOS))
    image_processor = part.image_processor or Qwen2VLImageProcessorPil(**QWEN25VL_IMAGE_PROCESSOR)
    prompt = "".join(PICTURE_PROMPT.format(i + 1) for i in range(len(resized))) + text
    tokens, images = vision_language_inputs(image_processor, part.tokenizer, EDIT_TEMPLATE.format(prompt), resized)
    module = part.module
    hidden = module(input_ids=tokens["input_ids"].to(module.device),
                    attention_mask=tokens["attention_mask"].to(module.device),
                    pixel_values=images["pixel_values"].to(module.device, module.dtype),
                    image_grid_thw=images["image_grid_thw"].to(module.device),
                    output_hidden_states=True).hidden_states[-1]
    return hidden[0][tokens["attention_mask"][0].bool().to(module.device)][EDIT_TEMPLATE_START:].unsqueeze(0)


def vision_language_inputs(image_processor, tokenizer, text: str, pictures) -> tuple[dict, dict]:
    """What Qwen2.5-VL's processor gives for one text and its pictures (transformers cannot build that processor
    without torchvision, for its video part): the pictures' patches and grids, and the text's tokens with each
    <|image_pad|> repeated once per merged patch of its picture, in order."""
    images = image_processor(images=pictures, return_tensors="pt")
    counts = iter(int(n) for n in images["image_grid_thw"].prod(-1) // image_processor.merge_size ** 2)
    pad = "<|image_pad|>"
    first, *rest = text.split(pad)
    expanded = first + "".join(pad * next(counts) + after for after in rest)
    return tokenizer([expanded], padding=True, return_tensors="pt"), images


QWEN_IMAGE = QwenImageFamily()
