"""Run the pack's headless runner from a clone, without installing: ``python stages.py demo`` / ``run …``."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "custom_nodes"))

from diffusers_stages.runner.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
