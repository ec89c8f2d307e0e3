"""Z-Image (Turbo and base): a ZImageTransformer2DModel, a Qwen3 text encoder, the Flux.1 VAE.

As ZImagePipeline: the prompt goes through the tokenizer's chat template (a user turn, then the assistant's turn
opened, thinking on), is padded to max_sequence_length, and the text encoder's penultimate hidden states of the
real (unpadded) tokens are the conditioning, one sequence per prompt of its own length. The transformer takes lists
(one latent [C, 1, h, w] and one caption sequence per image), the time as (1000 - t) / 1000, and predicts the
negated flow. CFG is one batched call [positive, negative] combined as ``pos + g (pos - neg)`` with the pipeline's
guidance_scale ``g`` = our cfg - 1 (so cfg keeps ComfyUI's meaning: 1 = no CFG). Latents are Flux.1's (16
channels at 1/8, not packed: the transformer patches them itself); LATENT is core's ``Flux`` format.
"""

from __future__ import annotations

import torch

from ..components import Conditioning, TextEncoder
from ..errors import InputError
from ..family import Family, LoadedModel, ModelInputs, TextSlot
from . import dit_keys
from .dit_files import DitLayout
from .folders import load_llm_folder
from .qwen_text import encode_chat_prompt

MAX_SEQUENCE_LENGTH = 512  # ZImagePipeline's default
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
             "use_dynamic_shifting": False}  # Z-Image-Turbo's scheduler_config.json


def repeated(embeds: torch.Tensor, batch: int, device, dtype) -> list[torch.Tensor]:
    sequence = embeds[0].to(device=device, dtype=dtype)
    return [sequence] * batch


class ZImageFamily(Family):
    id = "zimage"
    display_name = "Z-Image"
    latent_channels = 16
    spatial_factor = 8
    size_multiple = 16  # 8 px per latent cell x 2x2 transformer patches
    pipeline_classes = ("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline",
                        "ZImageControlNetPipeline", "ZImageControlNetInpaintPipeline")
    host_latent_format = "Flux"  # core's Lumina2 / Z-Image models use Flux.1's latent format
    flow_matching = True
    begin_index_on_full_run = True
    inference_dtypes = ("bf16", "fp16", "fp32")
    latents_dtype = torch.float32  # ZImagePipeline keeps noise and steps in float32 whatever the model's precision
    latent_scaling = (0.3611, 0.1159)  # the Flux.1 VAE
    skip_layer_lists = {"": "layers"}  # the main transformer blocks (diffusers registers ZImageTransformerBlock)
    cfg_halves = ("positive", "negative")  # ZImagePipeline batches prompt_embeds + negative_prompt_embeds
    lora_pipeline, lora_denoiser = "ZImagePipeline", "transformer"  # ZImageLoraLoaderMixin: the transformer only
    text_slots = (TextSlot("qwen3", projection=False),)
    controlnet_classes = ("ZImageControlNetModel",)  # VideoX-Fun's Z-Image-Turbo-Fun-Controlnet-Union (1.0, 2.x)

    def claims_controlnet(self, class_name, config):
        return class_name == "ZImageControlNetModel"

    def claims_controlnet_file(self, shapes, name):
        return "control_all_x_embedder.2-1.weight" in shapes

    def controlnet_from_file(self, path, shapes, dtype):
        """Z-Image-Turbo-Fun-Controlnet-Union(-2.0/-2.1).safetensors (alibaba-pai), whose names are diffusers', as
        diffusers' single-file loader reads them (2.0 keeps unused control_noise_refiner weights, which it drops)."""
        from diffusers import ZImageControlNetModel

        from ..weights import empty, fill, read_tensors

        state = read_tensors(path)
        config = z_image_controlnet_config(state)
        if config["add_control_noise_refiner"] == "control_layers":
            state = {k: v for k, v in state.items() if not k.startswith("control_noise_refiner.")}
        return fill(empty(ZImageControlNetModel, config), state, dtype, "Z-Image ControlNet", "controlnet_name")

    def prepare_control(self, control, height, width, batch, copies, generator):
        """As ZImageControlNetPipeline: the image in -1..1 through the VAE (posterior mode), shifted and scaled, one
        frame, zeros up to the ControlNet's input channels (2.x takes more); the [positive, negative] copies when
        CFG is batched."""
        from ..control_inputs import control_latents, control_pixels

        net = control.controlnet.module
        latents = control_latents(control, control_pixels(control, height, width, batch, normalize=True)).unsqueeze(2)
        missing = net.config.control_in_dim - latents.shape[1]
        if missing > 0:
            latents = torch.cat([latents, latents.new_zeros(latents.shape[0], missing, *latents.shape[2:])], dim=1)
        return torch.cat([latents] * copies)

    def control_problem(self, denoiser, controlnet):
        layers, last = len(denoiser.module.layers), max(controlnet.config.control_layers_places)
        return f"steers layer {last}, but the transformer has {layers} layers" if last >= layers else None

    def control_residuals(self, denoiser, control, controlnet, model_input, timestep, inputs, control_input, scale):
        """The ControlNet shares the transformer's embedders and refiners (diffusers' from_transformer, as the
        pipeline links them)."""
        from diffusers import ZImageControlNetModel

        if controlnet.t_embedder is not denoiser.module.t_embedder:
            ZImageControlNetModel.from_transformer(controlnet, denoiser.module)
        time = (1000 - timestep.expand(model_input.shape[0])) / 1000
        latents = list(model_input.to(denoiser.module.dtype).unsqueeze(2).unbind(dim=0))
        return {"controlnet_block_samples": controlnet(latents, time, inputs["cap_feats"], control_input,
                                                       conditioning_scale=scale)}

    @staticmethod
    def combine_cfg(cond, uncond, scale):
        """ZImagePipeline's CFG: pos + g (pos - neg), g = its guidance_scale = cfg - 1."""
        return cond + (scale - 1.0) * (cond - uncond)

    dit_layout = DitLayout("ZImageTransformer2DModel", "Z-Image transformer",
                           dit_keys.is_z_image, dit_keys.z_image_config, dit_keys.z_image_rules)
    file_scheduler_config = SCHEDULER

    # ---- loading -------------------------------------------------------------------------------
    def claims_checkpoint(self, keys) -> bool:
        return False  # no single-file Z-Image checkpoints are in use; split files come through the loaders

    def load_folder(self, path: str, dtype: torch.dtype, prediction: str) -> LoadedModel:
        from diffusers import AutoencoderKL, ZImageTransformer2DModel
        from transformers import AutoModel

        return load_llm_folder(self, path, dtype, ZImageTransformer2DModel, AutoModel, AutoencoderKL)

    # ---- conditioning ----------------------------------------------------------------------------
    def encode_prompt(self, text_encoder: TextEncoder, text: str, clip_skip: int, t5_max_length: int = 0):
        if clip_skip:
            raise InputError("clip_skip", "Z-Image's text encoder is an LLM whose penultimate layer is always used; "
                             "clip_skip does not apply.", "set clip_skip to 0.")
        embeds = encode_chat_prompt(text_encoder.parts[0], text, t5_max_length or MAX_SEQUENCE_LENGTH)
        return Conditioning(self, embeds, None, text)

    text_width_field = "cap_feat_dim"

    # ---- denoising -------------------------------------------------------------------------------
    def set_timesteps(self, scheduler, steps: int, latents: torch.Tensor) -> None:
        """ZImagePipeline's schedule: sigmas linspace(1, 1/N, N) in float32, mu from the token count (used only by
        schedulers with dynamic shifting)."""
        from .flux import calculate_shift, flow_timesteps

        config = scheduler.config
        seq_len = (latents.shape[2] // 2) * (latents.shape[3] // 2)
        mu = calculate_shift(seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        flow_timesteps(scheduler, steps, latents.device, torch.linspace(1.0, 1 / steps, steps).tolist(), mu)

    def model_inputs(self, denoiser, guider, batch, image_size) -> ModelInputs:
        module = denoiser.module
        positive = repeated(guider.positive.embeds, batch, module.device, module.dtype)
        negative = repeated(guider.negative.embeds, batch, module.device, module.dtype)
        return ModelInputs(cfg={"cap_feats": positive + negative}, cond={"cap_feats": positive},
                           uncond={"cap_feats": negative})

    def batched_inputs(self, parts):
        return {"cap_feats": [sequence for part in parts for sequence in part["cap_feats"]]}

    def predict(self, denoiser, model_input, timestep, inputs):
        """The pipeline's call: one [C, 1, h, w] latent per image, time (1000 - t) / 1000; its outputs as float,
        negated (the transformer predicts noise minus image, the scheduler steps along image minus noise)."""
        module = denoiser.module
        time = (1000 - timestep.expand(model_input.shape[0])) / 1000
        latents = list(model_input.to(module.dtype).unsqueeze(2).unbind(dim=0))
        out = module(latents, time, inputs["cap_feats"], return_dict=False,
                     controlnet_block_samples=inputs.get("controlnet_block_samples"))[0]
        return -torch.stack([prediction.float() for prediction in out], dim=0).squeeze(2)


RELEASED_LAYERS = 30  # Z-Image(-Turbo)'s transformer layers, over which the Fun ControlNets' layers are spread


def z_image_controlnet_config(tensors: dict[str, torch.Tensor]) -> dict:
    """A Z-Image ControlNet's config from its tensors: widths, heads and layer counts, and which version it is (1.0:
    plain control refiner blocks; 2.0: its control blocks also refine, its own refiner weights unused and zero;
    2.1: its own refiner blocks). The layers it steers are not recorded: spread evenly over the released 30 (every
    5th for 1.0's 6 blocks, every 2nd for 2.x's 15), as VideoX-Fun places them."""
    dim, patch_values = tensors["control_all_x_embedder.2-1.weight"].shape
    head_dim = tensors["control_layers.0.attention.norm_q.weight"].shape[0]
    heads = dim // head_dim
    count = len({k.split(".")[1] for k in tensors if k.startswith("control_layers.")})
    refiners = len({k.split(".")[1] for k in tensors if k.startswith("control_noise_refiner.")})
    before = tensors.get("control_noise_refiner.0.before_proj.weight")
    kind = None if before is None else "control_layers" if bool((before == 0).all()) else "control_noise_refiner"
    return {"control_layers_places": list(range(0, RELEASED_LAYERS, max(RELEASED_LAYERS // count, 1)))[:count],
            "control_refiner_layers_places": list(range(refiners)), "control_in_dim": patch_values // 4,
            "add_control_noise_refiner": kind, "all_patch_size": [2], "all_f_patch_size": [1], "dim": dim,
            "n_refiner_layers": refiners, "n_heads": heads,
            "n_kv_heads": tensors["control_layers.0.attention.to_k.weight"].shape[0] // head_dim}


Z_IMAGE = ZImageFamily()
