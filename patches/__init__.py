"""Model-family patches: the only place that knows diffusers model internals (installed as
gna_diffusers.patches). Each module defines ``PATCH`` (a gna_diffusers.install.ModelPatch) and tiny
in-code builders for offline tests."""

from . import flux, hunyuan_video

PATCHES = {patch.family: patch for patch in (flux.PATCH, hunyuan_video.PATCH)}
