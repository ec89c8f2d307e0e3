"""What every node of the pack shares: socket type names, category, error wording, versioning.

Nodes use ComfyUI's V1 contract (plain classes), which needs nothing from ComfyUI to
import, so the same classes run in the host, headless and in tests.
"""

from __future__ import annotations

from ..engine.errors import InputError, StageError

PACK = "Diffusers Stages"  # node ids are "DS_<Name>"; never rename a shipped id, bump VERSION and migrate

# Custom socket types carrying engine objects between our nodes.
DENOISER = "DS_DENOISER"
TEXT_ENCODER = "DS_TEXT_ENCODER"
VAE = "DS_VAE"
SCHEDULER = "DS_SCHEDULER"
CONDITIONING = "DS_CONDITIONING"
GUIDER = "DS_GUIDER"
CONTROLNET = "DS_CONTROLNET"


class StageNode:
    """Base of every node: ``execute`` runs ``run`` and turns engine input errors into named node errors."""

    NODE_ID: str = ""
    DISPLAY_NAME: str = ""
    VERSION: str = "1.0.0"  # bumped on any change of inputs/outputs; workflows are migrated, ids never change
    FUNCTION = "execute"

    def execute(self, **inputs):
        try:
            return self.run(**inputs)
        except InputError as error:
            raise StageError(self.DISPLAY_NAME, error) from error

    def run(self, **inputs):
        raise NotImplementedError

    # model-file inputs: input name -> the model folder kind its value names a file or folder in
    MODEL_FILE_INPUTS: dict[str, str] = {}

    @classmethod
    def model_files(cls, inputs: dict) -> list[str]:
        """Paths of the model files and folders these literal inputs name (those that exist), for fingerprints."""
        from .model_files import existing_path

        found = (existing_path(kind, inputs.get(name)) for name, kind in cls.MODEL_FILE_INPUTS.items())
        return [path for path in found if path]

    @classmethod
    def check(cls, error: InputError | None) -> bool | str:
        """For VALIDATE_INPUTS: True, or the message ComfyUI shows at queue time."""
        return True if error is None else str(StageError(cls.DISPLAY_NAME, error))

    @classmethod
    def check_call(cls, function, *args) -> bool | str:
        """For VALIDATE_INPUTS: True, or the message of the InputError ``function(*args)`` raises."""
        try:
            function(*args)
        except InputError as error:
            return cls.check(error)
        return True


def window_error(start: float | None, end: float | None) -> InputError | None:
    """A start/end percent pair that is not a window of the steps (both 0..1, start not after end)."""
    for name, value in (("start_percent", start), ("end_percent", end)):
        if value is not None and not 0.0 <= value <= 1.0:
            return InputError(name, f"{value} is outside 0..1.", "use a fraction of the steps, 0 to 1.")
    if start is not None and end is not None and start > end:
        return InputError("start_percent", f"start ({start}) is after end ({end}).",
                          "make start_percent less than or equal to end_percent.")
    return None


def category(sub: str) -> str:
    return f"{PACK}/{sub}"
