"""Shipped YAML presets (installed as gna_diffusers.configs; read them with importlib.resources)."""
