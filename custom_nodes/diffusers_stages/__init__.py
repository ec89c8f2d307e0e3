"""Diffusers Stages: every stage of a Hugging Face diffusers pipeline as a ComfyUI node."""

import os

from . import host
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# the pictures the shipped templates' Load Image nodes name (workflows/input/, beside the templates)
host.provide_template_inputs(os.path.join(os.path.dirname(__file__), "..", "..", "workflows", "input"))

WEB_DIRECTORY = "./web"
__version__ = "0.1.0"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
