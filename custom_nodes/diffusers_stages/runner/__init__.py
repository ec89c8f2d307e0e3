"""Headless execution of ComfyUI workflows (UI and API JSON, PNG) with this pack's nodes."""
