"""Model-family patches: the only place that knows diffusers model internals (installed as
gna_diffusers.patches). Each module defines ``PATCH`` (a gna_diffusers.install.ModelPatch) and tiny
in-code builders for offline tests.

A family whose module cannot be imported (its transformer class is newer than the installed diffusers)
is left out and listed in ``UNAVAILABLE``: the other families keep working."""

import importlib

# Families the harness runs end to end (each module has a tiny pipeline and full-size configs).
_HARNESS = ("flux", "hunyuan_video", "wan", "qwen_image", "hunyuan_video15", "flux2", "chroma", "z_image",
            "skyreels_v2", "chronoedit", "ltx_video", "kandinsky5", "ltx2", "qwen_image21", "kandinsky6",
            "motif_video", "cosmos", "helios", "cogvideox", "mochi", "allegro", "anyflow", "easyanimate", "ideogram4",
            "krea2",
            "ovis_image", "longcat_image", "cogview4", "hunyuan_image", "sd3", "pixart", "hidream", "hunyuan_dit",
            "lumina2", "ernie_image", "bria", "glm_image", "prx", "nucleusmoe_image", "joyimage",
            "joyimage_plus", "bria_fibo", "cogview3plus", "auraflow", "bria_fibo2", "lumina_next", "cosmos3", "omnigen")
# Families without a tiny pipeline: the harness times them with random weights (compare --random-weights, the GPU
# suite) and runs their real weights unless the module's WEIGHTS_GAP says why not (Wan Animate: pose and face
# videos). FLUX.3 and MiniMax-H3 load as modular pipelines. A family of
# _HARNESS whose WEIGHTS_GAP is set in this environment joins them (OmniGen without torchvision, which its pipeline
# needs).
_SPEED_ONLY = ("flux3", "wan_animate", "minimax_h3", "sana_wm", "wan_animate2")

UNAVAILABLE: dict[str, str] = {}  # module name -> why it could not be imported


def _load(names: tuple[str, ...]) -> dict:
    modules = {}
    for name in names:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ImportError as error:
            UNAVAILABLE[name] = f"{type(error).__name__}: {error}"
            continue
        modules[module.PATCH.family] = module
    return modules


_harness = _load(_HARNESS)
FAMILY_MODULES = {family: module for family, module in _harness.items() if not getattr(module, "WEIGHTS_GAP", None)}
SPEED_ONLY_MODULES = {**{family: module for family, module in _harness.items() if family not in FAMILY_MODULES},
                      **_load(_SPEED_ONLY)}
# Every family apply() supports with this diffusers: its patches/ module, and its patch.
MODULES = {**FAMILY_MODULES, **SPEED_ONLY_MODULES}
PATCHES = {family: module.PATCH for family, module in MODULES.items()}
