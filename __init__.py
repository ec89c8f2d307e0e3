"""ComfyUI entry point: ComfyUI imports this file when the repo sits in ComfyUI/custom_nodes/<any name>.

Relative imports only, so the folder name does not matter.
"""

from .custom_nodes.diffusers_stages import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# ComfyUI resolves WEB_DIRECTORY against this file's folder (node help pages live in web/docs/).
WEB_DIRECTORY = "./custom_nodes/diffusers_stages/web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
