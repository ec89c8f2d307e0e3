from __future__ import annotations

from .cfg_guider import CFGGuider


class TCFGGuider(CFGGuider):
    NODE_ID = "DS_TCFGGuider"
    DISPLAY_NAME = "TCFG Guider (Diffusers)"
    VERSION = "1.0.0"
    DESCRIPTION = ("Tangential Damping CFG (Kwon et al. 2025): before classifier-free guidance, the negative "
                   "prediction loses its component normal to the positive one's dominant direction (an SVD of the "
                   "two), so guidance pushes along the data manifold. Runs diffusers' TangentialClassifierFreeGuidance "
                   "as its modular pipelines run it (two denoiser calls, its own step window: int(start x steps) <= "
                   "step < int(end x steps)).")

    def run(self, positive, cfg, guidance_rescale=0.0, start_percent=0.0, end_percent=1.0, negative=None):
        return (self.guider(positive, negative, cfg, guidance_rescale, start_percent, end_percent, "tcfg"),)
