"""The family registry: every family adapter, and finding the one a file or folder belongs to.

The adapters (one module each) are the only place where the differences between model families live; the
interface they implement is ``engine/family.py``. Helpers shared by several adapters live beside them
(``folders``, ``clip_text``, ``t5_text``, ``qwen_text``, ``dit_keys``, ``ldm_keys``, ``dit_files``,
``bundled_configs``, ``controlnet_files``) and import no adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..family import Family


def all_families() -> list[Family]:
    from .flux import FLUX
    from .flux2 import FLUX2
    from .qwen_image import QWEN_IMAGE
    from .sd3 import STABLE_DIFFUSION_3
    from .stable_diffusion import STABLE_DIFFUSION
    from .stable_diffusion_xl import STABLE_DIFFUSION_XL
    from .z_image import Z_IMAGE

    return [STABLE_DIFFUSION, STABLE_DIFFUSION_XL, STABLE_DIFFUSION_3, FLUX, FLUX2, Z_IMAGE, QWEN_IMAGE]


def family_for_pipeline_class(class_name: str) -> Family | None:
    return next((f for f in all_families() if class_name in f.pipeline_classes), None)


def family_for_checkpoint(keys: set[str]) -> Family | None:
    return next((f for f in all_families() if f.claims_checkpoint(keys)), None)
