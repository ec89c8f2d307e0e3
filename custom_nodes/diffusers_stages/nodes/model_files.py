"""Finding a user-chosen model name in the host's model folders, refusing unsafe names."""

from __future__ import annotations

import os
from collections.abc import Callable

from .. import host
from ..engine import loading
from ..engine.errors import InputError


def locate(kind: str, relative: str, input_name: str, is_model: Callable[[str], bool] = os.path.isfile) -> str:
    """The first ``<root>/<relative>`` of the ``kind`` folders that ``is_model`` accepts; pickle files and names
    leaving the folder are refused, and a missing model names every folder searched."""
    loading.refuse_pickle(relative, input_name)
    for root in host.model_roots(kind):
        path = loading.safe_join(root, relative, input_name)
        if is_model(path):
            return path
    where = ", ".join(host.model_roots(kind)) or f"models/{kind}"
    raise InputError(input_name, f"'{relative}' was not found in {where}.",
                     f"put it in models/{kind} and refresh the node list.")
