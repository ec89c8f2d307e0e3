"""Errors the engine raises for input a user can fix.

The engine does not know which node called it; it names the *input* and the fix.
The node layer adds the node's name (see ``nodes/base.py``), so every message a
user sees reads: node › input: what is wrong. Fix: what to do.
"""


class InputError(ValueError):
    """A value supplied by the user is unusable. ``input_name`` is the node input it came from."""

    def __init__(self, input_name: str, problem: str, fix: str):
        self.input_name = input_name
        self.problem = problem
        self.fix = fix
        super().__init__(f"input '{input_name}': {problem} Fix: {fix}")


class StageError(RuntimeError):
    """An ``InputError`` with the node that received the input: what users see."""

    def __init__(self, node_name: str, error: InputError):
        self.node_name = node_name
        self.input_name = error.input_name
        self.problem = error.problem
        self.fix = error.fix
        super().__init__(f"[Diffusers Stages] {node_name} › {error.input_name}: {error.problem} Fix: {error.fix}")


def require_finite(tensor, input_name: str, what: str, causes: str) -> None:
    """Refuse a tensor holding NaN or infinity where it is made, instead of letting it become a black image."""
    import torch

    if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise InputError(input_name, f"{what} holds NaN or infinite values.", f"likely cause: {causes}")
