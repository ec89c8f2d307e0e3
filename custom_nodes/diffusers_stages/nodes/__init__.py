"""The pack's nodes, one module per stage."""

from .aesthetic_score import AestheticScore
from .apg_guider import APGGuider
from .cfg_guider import CFGGuider
from .cfg_zero_star_guider import CFGZeroStarGuider
from .controlnet_apply import ApplyControlNet
from .denoise import Denoise
from .empty_latent import EmptyLatent
from .fdg_guider import FDGGuider
from .flux_guidance import FluxGuidance
from .inpaint_conditioning import InpaintConditioning
from .load_controlnet import LoadControlNet
from .load_diffusion_model import LoadDiffusionModel
from .load_lora import LoadLoRA
from .load_model import LoadModel
from .load_text_encoders import LoadTextEncoders
from .load_vae import LoadVAE
from .pag_guider import PAGGuider
from .reference_image import ReferenceImage
from .scheduler import Scheduler
from .seg_guider import SEGGuider
from .size_conditioning import SizeConditioning
from .skip_layer_guidance import SkipLayerGuidance
from .tcfg_guider import TCFGGuider
from .text_encode import TextEncode
from .vae_decode import VAEDecode
from .vae_encode import VAEEncode

ALL_NODES = (LoadModel, LoadDiffusionModel, LoadTextEncoders, LoadVAE, LoadLoRA, TextEncode, SizeConditioning,
             AestheticScore, FluxGuidance, Scheduler, CFGGuider, CFGZeroStarGuider, APGGuider, TCFGGuider, PAGGuider,
             SEGGuider, FDGGuider,
             SkipLayerGuidance,
             LoadControlNet, ApplyControlNet, ReferenceImage,
             EmptyLatent, Denoise, VAEDecode, VAEEncode, InpaintConditioning)

for _node in ALL_NODES:  # the version shows in the node's description (V1 nodes have no field of their own)
    if "[node v" not in _node.DESCRIPTION:
        _node.DESCRIPTION = f"{_node.DESCRIPTION} [node v{_node.VERSION}]"

NODE_CLASS_MAPPINGS = {node.NODE_ID: node for node in ALL_NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.NODE_ID: node.DISPLAY_NAME for node in ALL_NODES}
