"""What every supported family must offer, checked the same way for all of them: its shipped presets run
on its tiny offline pipeline, its full-size config has the published size, and `compare` accepts its tiny
model."""

import importlib
import warnings

import pytest
import torch

from gna_diffusers import enabled, list_presets, load_config, load_preset
from gna_diffusers.cli import main
from gna_diffusers.harness.models import on_meta
from gna_diffusers.harness.runner import pipeline_output
from gna_diffusers.patches import FAMILY_MODULES

# Published transformer sizes, in billions of parameters. ChronoEdit-14B has Wan 2.1 I2V 14B's shape, whose
# image cross-attention (two 5120 x 5120 projections per block) adds 2.1B to the 14B of its name.
PUBLISHED_BILLIONS = {
    "flux": 12, "flux2": 32, "chroma": 8.9, "hunyuan-video": 13, "hunyuan-video-1.5": 8.3, "wan": 14,
    "qwen-image": 20, "z-image": 6, "skyreels-v2": 14, "chronoedit": 14 + 2.1, "ltx-video": 2,
    "kandinsky5": 2, "ltx2": 19, "cosmos": 2, "cogvideox": 5.6, "mochi": 10, "allegro": 2.8, "anyflow": 14,
    "easyanimate": 12,
    "hunyuan-image": 17, "sd3": 2, "pixart": 0.6, "hidream": 17, "hunyuan-dit": 1.5, "lumina2": 2.6, "auraflow": 6.8,
}
# Families whose full-size config is not checked against a published size, and why.
UNPUBLISHED = {
    "qwen-image-2.1": "no published size found offline: FULL_CONFIG is diffusers' class defaults (7.1B)",
    "kandinsky6": "no published size found offline: FULL_CONFIG is diffusers' class defaults, whose audio stream is "
                  "as wide as the video's (48.2B in all)",
    "motif-video": "Motif-Video-2B's config not found offline: FULL_CONFIG is diffusers' class defaults, a larger "
                   "model",
    "helios": "the released config not found offline: FULL_CONFIG is diffusers' class defaults (Wan 2.1 14B's shape)",
    "ideogram4": "no published size found offline: FULL_CONFIG is diffusers' class defaults (9.3B)",
    "krea2": "no published size or hub id found offline: FULL_CONFIG is diffusers' class defaults (12.8B)",
    "longcat-image": "LongCat-Image's 6B config not found offline: full_size refuses (the class defaults are "
                     "FLUX-sized)",
    "cogview3plus": "CogView3-Plus-3B's config not found offline: FULL_CONFIG is diffusers' class defaults (30 blocks, "
                    "64 heads x 40), which make 2.85B, 5% below the 3B of its name",
    "cogview4": "CogView4-6B's config (28 blocks, 32 heads x 128) makes 6.37B, 6% above the 6B of its name",
    "ovis-image": "Ovis-Image-7B's transformer size not found offline (7B may count its text encoder): FULL_CONFIG is "
                  "diffusers' class defaults (7.4B)",
    "ernie-image": "no published size found offline: FULL_CONFIG is diffusers' class defaults (2.8B)",
    "bria": "Bria 3.2's 4B config not found offline: full_size refuses (the class defaults are FLUX-sized)",
    "bria-fibo": "Bria FIBO's 8B config not found offline: full_size refuses (the class defaults are FLUX-sized)",
    "bria-fibo2": "no published size of Fibo 2.0 found offline: FULL_CONFIG is diffusers' class defaults (8.1B)",
    "lumina-next": "Lumina-Next-SFT's transformer config not found offline: FULL_CONFIG is diffusers' class defaults "
                   "with 8 key/value heads (2.3B; its model card says 2B)",
    "glm-image": "no published size of the diffusion decoder found offline: FULL_CONFIG is diffusers' class defaults "
                 "(2.9B)",
    "prx": "the latent PRX's published size not found offline: FULL_CONFIG is diffusers' class defaults (1.17B); "
           "PRXPixel's 7B shape is not known offline (full_size refuses)",
    "nucleusmoe-image": "no published size found offline: FULL_CONFIG is diffusers' class defaults (22.7B in all, 128 "
                        "experts per mixture-of-experts block)",
    "joyimage": "no published size found offline: FULL_CONFIG is diffusers' class defaults (4.6B)",
    "joyimage-plus": "no published size found offline: FULL_CONFIG is diffusers' class defaults (4.6B)",
    "cosmos3": "no published size of Cosmos 3 found offline: FULL_CONFIG is diffusers' class defaults (15.2B: each "
               "layer's projections and MLP twice, for the prompt's and the generation's pathways)",
}
# Families that run end to end only where an optional package is installed, and where their size is checked.
OPTIONAL = {"omnigen": "tests/test_omnigen.py, with torchvision (OmniGen v1: 3.8B)"}
# Presets for a layout the family's tiny pipeline does not make, and where they are tested instead.
OTHER_LAYOUTS = {name: "tests/test_qwen_image.py: Qwen-Image-Layered's 3-D grid of layers"
                 for name in ("qwen-image-layered-640", "qwen-image-layered-1k")}
FAMILY_PRESETS = [(load_preset(name).family, name) for name in list_presets()
                  if load_preset(name).family in FAMILY_MODULES and name not in OTHER_LAYOUTS]


def tiny_generate(family: str, pipe, steps: int) -> torch.Tensor:
    module = FAMILY_MODULES[family]
    tiny_size = getattr(module, "TINY_SIZE", {})  # (its "frames" is the harness's; tiny_call_kwargs has them too)
    size = {"height": 32, "width": 32, **{k: v for k, v in tiny_size.items() if k != "frames"}}
    output = pipe(prompt="a red cat", num_inference_steps=steps, output_type="pt",
                  generator=torch.Generator().manual_seed(0), **size, **module.tiny_call_kwargs(),
                  **getattr(module, "steps_call_kwargs", lambda steps: {})(steps))
    return torch.as_tensor(pipeline_output(module, output))


def test_every_family_is_described_and_has_presets():
    assert set(PUBLISHED_BILLIONS) | set(UNPUBLISHED) == set(FAMILY_MODULES) - set(OPTIONAL)
    assert {family for family, _ in FAMILY_PRESETS} == set(FAMILY_MODULES)
    for module in FAMILY_MODULES.values():
        assert module.DEFAULT_PRESET in list_presets()
        assert load_preset(module.DEFAULT_PRESET).family == module.PATCH.family


@pytest.mark.parametrize("family, preset", FAMILY_PRESETS, ids=[name for _, name in FAMILY_PRESETS])
def test_shipped_presets_run_on_their_family_tiny_pipeline(family, preset):
    pipe = FAMILY_MODULES[family].tiny_pipeline()
    with enabled(pipe, preset) as handle:
        out = tiny_generate(family, pipe, steps=4)
        assert handle.runtime.grid is not None  # the layout was understood: GNA ran on the sparse steps
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", sorted(PUBLISHED_BILLIONS))
def test_full_size_config_has_the_published_size(family):
    module = FAMILY_MODULES[family]
    config = module.full_size(family)[0] if hasattr(module, "full_size") else module.FULL_CONFIG
    billions = sum(p.numel() for p in on_meta(module.PATCH.transformer_class, config).parameters()) / 1e9
    assert abs(billions - PUBLISHED_BILLIONS[family]) / PUBLISHED_BILLIONS[family] < 0.05


def tiny_cli_size(module) -> list[str]:
    """--height / --width (/ --frames) for a tiny model: small, or the family's TINY_SIZE (sizes its VAE decodes)."""
    tiny = {"height": 32, "width": 32, "frames": 5, **getattr(module, "TINY_SIZE", {})}
    size = ["--height", str(tiny["height"]), "--width", str(tiny["width"])]
    return size + (["--frames", str(tiny["frames"])] if module.PATCH.video else [])


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
def test_compare_accepts_the_tiny_model(family, tmp_path):
    module = FAMILY_MODULES[family]
    size = tiny_cli_size(module)
    args = ["--model", module.TINY_NAME, "--output", str(tmp_path), "--steps", "2", "--prompt", "a red cat",
            "--no-warmup", *size]
    assert main(["compare", *args]) == 0
    assert (tmp_path / "report.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
def test_calibrate_runs_on_the_tiny_model(family, tmp_path):
    """The probe reaches every family's self-attention (the tiny models' random weights attend almost
    uniformly, so their layers stay dense); the preset it writes loads."""
    module = FAMILY_MODULES[family]
    size = tiny_cli_size(module)
    preset = tmp_path / "calibrated.yaml"
    assert main(["calibrate", "--model", module.TINY_NAME, "--steps", "4", "--output", str(preset), *size]) == 0
    assert load_config(preset).family == family
    assert "recall" in (tmp_path / "calibrated.md").read_text()


# Even the stock model does not compile with fullgraph=True: diffusers' HunyuanVideo 1.5 transformer
# branches on tensor data (text-to-video or not); Z-Image's RoPE enters a `with device` block; Qwen-Image 2.1
# reads its image-slot mask to the host (RoPE, prefill segments); Mochi's processor finds each sample's valid
# prompt tokens with torch.nonzero; HunyuanImage 2.1 reorders its prompt tokens by boolean indexing (valid ones
# first), a data-dependent shape; HiDream's mixture-of-experts loops over its tokens-per-expert counts; Lumina 2
# reads its caption lengths to the host (.tolist()); Bria Fibo 2.0's RoPE enters a `with device` block, as Z-Image's;
# OmniGen's RoPE branches on the largest position id (a family here only where torchvision is installed).
# Z-Image, Qwen-Image 2.1 and Bria Fibo 2.0 are compiled per block instead (tests/test_z_image.py,
# tests/test_qwen_image21.py, tests/test_bria_fibo2.py), HunyuanImage and OmniGen too (tests/test_hunyuan_image.py,
# tests/test_omnigen.py).
COMPILABLE = sorted(set(FAMILY_MODULES) - {"hunyuan-video-1.5", "z-image", "qwen-image-2.1", "mochi", "hunyuan-image",
                                           "hidream", "lumina2", "bria-fibo2", "omnigen"})


# Cosmos 3's pre-hook reads the prompt's length (und_len, an int the pipeline passes: the grid's offset), so the hook's
# own frame compiles as the forward does, static for the prompt, then dynamic for the negative's other length, then
# once sparse: the forward's three graphs (the stock's two and one sparse) and three of the hook.
HOOK_GRAPHS = {"cosmos3"}


def compiled_graphs(family: str, pipe) -> int:
    """Graphs torch.compile(fullgraph=True) makes of the pipeline's transformer over two generations (the
    second compiles nothing new); fails on any graph break."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    pipe.transformer.compile(fullgraph=True, backend="eager")
    try:
        for _ in range(2):
            tiny_generate(family, pipe, steps=4)
    finally:
        torch._dynamo.reset()
    assert sum(counters["graph_break"].values()) == 0
    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
@pytest.mark.parametrize("family", COMPILABLE)
def test_fullgraph_compile_has_no_graph_break_and_one_graph_per_phase(family):
    """GNA compiles each of the stock model's graphs once dense and once sparse, plus at most one for its
    pre-hook where that reads the grid inside the graph (LTX-2: no pipeline method gives it); nothing per
    layer or per step. A stock model may have several graphs: Kandinsky 5 recompiles once for the negative
    prompt's text length (the sparse phase then reuses the dynamic graph), LTX-2 for its guidance calls."""
    from gna_diffusers import GNAConfig, apply, remove

    try:
        stock = compiled_graphs(family, FAMILY_MODULES[family].tiny_pipeline())
    except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as error:  # e.g. GLM-Image on torch 2.9
        first_line = str(error).splitlines()[0]
        pytest.skip(f"the stock transformer does not compile with fullgraph=True on torch {torch.__version__}: "
                    f"{first_line}")
    pipe = FAMILY_MODULES[family].tiny_pipeline()
    apply(pipe, GNAConfig(family=family, window=2, dense_steps=2))
    try:
        assert stock < compiled_graphs(family, pipe) <= (2 * stock + 1 if family not in HOOK_GRAPHS else 3 * stock)
    finally:
        remove(pipe)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
def test_group_offloading_keeps_whole_extent_gna_exact(family):
    """diffusers' block-level group offloading wraps every block in onload / offload hooks around the same
    attention modules: GNA still finds its layout and reproduces the stock pipeline."""
    from gna_diffusers import GNAConfig

    pipe = FAMILY_MODULES[family].tiny_pipeline()
    if not getattr(pipe.transformer, "_supports_group_offloading", True):
        pytest.skip(f"diffusers does not group-offload {type(pipe.transformer).__name__}")
    stock = tiny_generate(family, pipe, steps=3)
    pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                          offload_type="block_level", num_blocks_per_group=1)
    with enabled(pipe, GNAConfig(family=family, window=-1, dense_steps=1)) as handle:
        out = tiny_generate(family, pipe, steps=3)
        assert handle.runtime.grid is not None and handle.runtime.step == 3
    assert (out - stock).abs().max().item() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
def test_first_block_cache_stacks_with_gna_where_diffusers_supports_the_family(family):
    """FirstBlockCache skips the blocks after the first when its residual barely changes; the steps still come
    from the scheduler. Families whose stock pipeline diffusers' cache cannot run are skipped with its error."""
    from diffusers import FirstBlockCacheConfig

    from gna_diffusers import GNAConfig

    pipe = FAMILY_MODULES[family].tiny_pipeline()
    if not hasattr(pipe.transformer, "enable_cache"):
        pytest.skip(f"{type(pipe.transformer).__name__} has no enable_cache")
    try:
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.5))
        stock = tiny_generate(family, pipe, steps=4)
    except (ValueError, TypeError) as error:
        pytest.skip(f"diffusers' FirstBlockCache does not run stock {family}: {error}")
    with enabled(pipe, GNAConfig(family=family, window=-1, dense_steps=1)) as handle:
        assert (tiny_generate(family, pipe, steps=4) - stock).abs().max().item() <= 1e-5
        assert handle.runtime.step == 4


# diffusers' modular pipeline blocks per family.
MODULAR_BLOCKS = {"flux": "FluxAutoBlocks", "wan": "WanBlocks", "ltx-video": "LTXAutoBlocks",
                  "qwen-image": "QwenImageAutoBlocks", "z-image": "ZImageAutoBlocks",
                  "hunyuan-video-1.5": "HunyuanVideo15AutoBlocks", "ltx2": "LTX2AutoBlocks",
                  "qwen-image-2.1": "QwenImage21AutoBlocks", "ernie-image": "ErnieImageAutoBlocks",
                  "sd3": "StableDiffusion3AutoBlocks", "helios": "HeliosAutoBlocks", "cosmos3": "Cosmos3OmniBlocks",
                  "ideogram4": "Ideogram4AutoBlocks", "flux2": "Flux2KleinAutoBlocks", "krea2": "Krea2AutoBlocks"}
# Inputs a family's modular blocks need at 3 steps (Ideogram 4's default guidance schedule has 48 entries).
MODULAR_INPUTS = {"ideogram4": {"guidance_schedule": [7.0] * 3}}
# Module constants a family's modular blocks read where the classic pipeline takes an argument: Krea 2's text encoder
# step stacks fixed layers of the real (deep) text encoder; the tiny one has 3.
MODULAR_CONSTANTS = {"krea2": ("diffusers.modular_pipelines.krea2.encoders", "KREA2_TEXT_ENCODER_SELECT_LAYERS",
                               "TEXT_LAYERS")}


def layouts_seen(pipe, family: str, generate) -> set:
    """The (grid, stream tokens, grid offset) of every transformer call ``generate()`` makes under a sparse pattern."""
    from gna_diffusers import GNAConfig

    seen = set()
    with enabled(pipe, GNAConfig(family=family, window=2, dense_steps=0)) as handle:
        hook = pipe.transformer.register_forward_hook(lambda *_: seen.add(handle.runtime.layout))
        try:
            generate()
        finally:
            hook.remove()
    return {(layout.grid, layout.stream_tokens, layout.grid_offset) for layout in seen if layout is not None}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(MODULAR_BLOCKS))
def test_modular_pipelines_count_their_steps_and_run_gna(family, monkeypatch):
    """The family's modular pipeline (diffusers' AutoBlocks with the tiny pipeline's components), from prompt to
    latents: whole windows reproduce it, a sparse preset runs GNA after the warm-up step, with no notice, and each
    call's layout (grid, and where it lies among the tokens) is the one the family's pipeline gives the same request
    (whole windows alone would not notice a grid placed over the wrong tokens)."""
    import diffusers.modular_pipelines
    from test_apply import OperatorSpy

    from gna_diffusers import GNAConfig
    from gna_diffusers.harness.models import pipeline_inputs

    module = FAMILY_MODULES[family]
    if family in MODULAR_CONSTANTS:
        where, name, tiny_value = MODULAR_CONSTANTS[family]
        monkeypatch.setattr(importlib.import_module(where), name, getattr(module, tiny_value))
    classic = module.tiny_pipeline()
    pipe = getattr(diffusers.modular_pipelines, MODULAR_BLOCKS[family])().init_pipeline()
    pipe.update_components(**{k: v for k, v in classic.components.items() if v is not None})
    if hasattr(pipe, "disable_safety_checker"):
        pipe.disable_safety_checker()  # Cosmos 3's blocks refuse to run without a checker or this opt-out
    kwargs = {k: v for k, v in module.tiny_call_kwargs().items() if k in pipeline_inputs(pipe)}
    kwargs |= MODULAR_INPUTS.get(family, {})
    size = {"height": 32, "width": 32, **getattr(module, "TINY_SIZE", {})}

    def run():
        return pipe(prompt="a red cat", num_inference_steps=3, output="latents",
                    generator=torch.Generator().manual_seed(0), **size, **kwargs)

    stock = run()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family=family, window=-1)):
            assert (run() - stock).abs().max().item() <= 1e-5
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family=family, window=2, dense_steps=1)) as handle:
            run()
            assert handle.runtime.step == 3 and handle.runtime.grid is not None
    assert spy.windows
    classic_layouts = layouts_seen(classic, family, lambda: tiny_generate(family, classic, steps=3))
    assert layouts_seen(pipe, family, run) == classic_layouts
