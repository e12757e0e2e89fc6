"""Model-family patches: the only place that knows diffusers model internals (installed as
gna_diffusers.patches). Each module defines ``PATCH`` (a gna_diffusers.install.ModelPatch) and tiny
in-code builders for offline tests."""

from . import (
    chroma, chronoedit, flux, flux2, flux3, hunyuan_video, hunyuan_video15, qwen_image, skyreels_v2, wan, z_image,
)

# Families the harness runs end to end (each module has a tiny pipeline and full-size configs).
FAMILY_MODULES = {
    module.PATCH.family: module
    for module in (flux, hunyuan_video, wan, qwen_image, hunyuan_video15, flux2, chroma, z_image, skyreels_v2,
                   chronoedit)
}
# Families the harness only times with random weights (compare --random-weights, the GPU suite): FLUX.3
# ships in diffusers 0.42 as modular pipelines only, which the harness does not build yet.
SPEED_ONLY_MODULES = {module.PATCH.family: module for module in (flux3,)}
# Every family apply() supports.
PATCHES = {family: module.PATCH for family, module in (*FAMILY_MODULES.items(), *SPEED_ONLY_MODULES.items())}
