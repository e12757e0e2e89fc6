"""Model-family patches: the only place that knows diffusers model internals (installed as gna_diffusers.patches)."""
