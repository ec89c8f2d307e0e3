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
