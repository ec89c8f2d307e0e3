"""Diffusers Stages: every stage of a Hugging Face diffusers pipeline as a ComfyUI node."""

import os

from . import host
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

_PACK_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))  # the clone: workflows/ is there
# the pictures the shipped templates' Load Image nodes name (workflows/input/, beside the templates)
host.provide_template_inputs(os.path.join(_PACK_DIR, "workflows", "input"))
if host.IN_COMFYUI:  # the templates' titles and descriptions, under the folder name this clone has
    from .templates import write_template_locale

    write_template_locale(_PACK_DIR)

WEB_DIRECTORY = "./web"
__version__ = "0.1.0"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
