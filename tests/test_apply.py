"""apply() / remove() on the tiny offline FLUX and HunyuanVideo pipelines (fp32, CPU)."""

import inspect

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import gna_diffusers
from gna_diffusers import ConfigError, GNAConfig, UnsupportedModelError, apply, enabled, remove
from gna_diffusers.patches import flux, hunyuan_video

FAMILIES = {"flux": flux, "hunyuan-video": hunyuan_video}
GRIDS = {"flux": [8, 8], "hunyuan-video": [2, 8, 8]}  # latent grids of the tiny pipelines' default sizes
# A sparse window and a larger override window per family (the video grid has only 2 latent frames).
WINDOWS = {"flux": ([2, 2], [4, 4]), "hunyuan-video": ([2, 2, 2], [2, 4, 4])}


def generate(pipe, family, prompts=("a red cat", "a dog on a beach at sunset"), steps=3, **extra):
    common = dict(height=32, width=32, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                  output_type="pt", **extra)
    output = pipe(list(prompts), **{**FAMILIES[family].tiny_call_kwargs(), **common})
    return output.images if family == "flux" else output.frames


def config(family, **kwargs):
    return GNAConfig(**{"family": family, "base_grid": GRIDS[family], "window": WINDOWS[family][0], **kwargs})


class OperatorSpy:
    """Records the window, and the (grid, context key count), of every gna_attention call the routes make."""

    def __init__(self, monkeypatch):
        self.windows = []
        self.contexts = []
        real = gna_diffusers.route.gna_attention

        def spy(*args, **kwargs):
            self.windows.append(tuple(args[4]))
            extra = kwargs.get("extra_k")
            self.contexts.append((tuple(args[3]), 0 if extra is None else extra.shape[1]))
            return real(*args, **kwargs)

        monkeypatch.setattr(gna_diffusers.route, "gna_attention", spy)


def test_whole_grid_windows_reproduce_the_stock_pipeline(pipe, family, monkeypatch):
    masks = []
    pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: masks.append(k.get("encoder_attention_mask")), with_kwargs=True
    )
    stock = generate(pipe, family)
    spy = OperatorSpy(monkeypatch)
    with enabled(pipe, config(family, window=-1)):
        patched = generate(pipe, family)
    assert spy.windows, "GNA never ran"
    if family == "hunyuan-video":  # the two prompts pad differently: the mask must be honoured
        lengths = masks[0].sum(1).tolist()
        assert lengths[0] < lengths[1] < masks[0].shape[1]
    assert (patched - stock).abs().max().item() <= 1e-5


def test_sparse_windows_change_the_output_and_reach_exactly_the_intended_layers(pipe, family, monkeypatch):
    small, large = WINDOWS[family]
    cfg = config(
        family, overrides=[{"blocks": "single", "layers": "1", "window": large}],
        dense_layers=[{"blocks": "double", "layers": [0]}],
    )
    handle = apply(pipe, cfg)
    processors = {
        (name, i): block.attn.processor
        for name, attr in handle.patch.blocks.items() for i, block in enumerate(getattr(pipe.transformer, attr))
    }
    assert isinstance(processors[("double", 0)], handle.patch.stock_processor_class)
    assert not isinstance(processors[("double", 0)], handle.patch.processor_class)
    for key in (("double", 1), ("single", 0), ("single", 1)):
        assert isinstance(processors[key], handle.patch.processor_class)
    spy = OperatorSpy(monkeypatch)
    sparse = generate(pipe, family, steps=1)
    # One forward: double.1 and single.0 use the default window, single.1 its override.
    assert spy.windows == [tuple(small), tuple(small), tuple(large)]
    assert torch.equal(sparse, generate(pipe, family, steps=1))  # deterministic
    handle.remove()
    assert (sparse - generate(pipe, family, steps=1)).abs().max().item() > 1e-3


def test_dense_warmup_counts_steps_and_resets_per_generation(pipe, family, monkeypatch):
    apply(pipe, config(family, dense_steps=2))
    calls_per_forward = []
    spy = OperatorSpy(monkeypatch)
    pipe.transformer.register_forward_hook(lambda *_: calls_per_forward.append(len(spy.windows)))
    for _ in range(2):  # the count restarts with the second generation
        generate(pipe, family, steps=4)
    per_forward = [b - a for a, b in zip([0] + calls_per_forward, calls_per_forward)]
    assert per_forward == [0, 0, 4, 4] * 2


def test_true_cfg_two_calls_per_step_count_as_one_step(monkeypatch):
    pipe = flux.tiny_pipeline()
    handle = apply(pipe, config("flux", dense_steps=1))
    spy = OperatorSpy(monkeypatch)
    sparse_calls = []
    pipe.transformer.register_forward_hook(lambda *_: sparse_calls.append(len(spy.windows)))
    generate(pipe, "flux", prompts=("a cat",), steps=2, true_cfg_scale=2.0, negative_prompt=["blurry"])
    handle.remove()
    assert len(sparse_calls) == 4  # 2 steps x (conditional + unconditional)
    assert [b - a for a, b in zip([0] + sparse_calls, sparse_calls)] == [0, 0, 4, 4]


def test_remove_restores_processors_dispatch_and_outputs_bit_for_bit(pipe, family):
    stock = generate(pipe, family)
    transformer = pipe.transformer
    before = {name: module.processor for name, module in transformer.named_modules() if hasattr(module, "processor")}
    hooks_before = len(transformer._forward_pre_hooks)
    dispatch_module = FAMILIES[family].PATCH.dispatch_module
    original_dispatch = dispatch_module.dispatch_attention_fn
    apply(pipe, config(family))
    assert dispatch_module.dispatch_attention_fn is not original_dispatch
    generate(pipe, family, steps=1)
    remove(pipe)
    after = {name: module.processor for name, module in transformer.named_modules() if hasattr(module, "processor")}
    assert all(after[name] is before[name] for name in before)
    assert len(transformer._forward_pre_hooks) == hooks_before
    assert dispatch_module.dispatch_attention_fn is original_dispatch
    assert "step" not in vars(pipe.scheduler) and "set_timesteps" not in vars(pipe.scheduler)
    assert torch.equal(generate(pipe, family), stock)
    remove(pipe)  # a second remove is a no-op


def test_processor_signatures_name_every_argument(family):
    patch = FAMILIES[family].PATCH
    params = list(inspect.signature(patch.processor_class.__call__).parameters)
    # diffusers filters the keyword arguments it passes by these names: image_rotary_emb must be named, and
    # FLUX calls positionally in this order.
    assert params == ["self", "attn", "hidden_states", "encoder_hidden_states", "attention_mask", "image_rotary_emb"]


def test_hunyuan_token_refiner_is_left_alone():
    pipe = hunyuan_video.tiny_pipeline()
    refiner = {n: m.processor for n, m in pipe.transformer.context_embedder.named_modules() if hasattr(m, "processor")}
    assert refiner and all(isinstance(p, AttnProcessor2_0) for p in refiner.values())
    with enabled(pipe, config("hunyuan-video")):
        for name, module in pipe.transformer.context_embedder.named_modules():
            if hasattr(module, "processor"):
                assert module.processor is refiner[name]


def test_set_attention_backend_after_apply_keeps_gna(pipe, family, monkeypatch):
    apply(pipe, config(family))
    pipe.transformer.set_attention_backend("native")
    spy = OperatorSpy(monkeypatch)
    generate(pipe, family, steps=1)
    assert len(spy.windows) == 4


def test_handle_describes_what_it_installed(pipe, family):
    handle = apply(pipe, config(family, dense_layers=[{"blocks": "single", "layers": "0-1"}]))
    text = handle.describe()
    assert "double.0 | gna" in text and "single.1 | dense" in text
    layers = {(r["blocks"], r["index"], r["dense"]) for r in handle.layers()}
    assert layers >= {("double", 1, False), ("single", 0, True)}


def test_errors_install_nothing(pipe, family, tmp_path):
    transformer = pipe.transformer
    snapshot = {n: m.processor for n, m in transformer.named_modules() if hasattr(m, "processor")}
    other = "hunyuan-video" if family == "flux" else "flux"
    bad = tmp_path / "bad.yaml"
    cases = [
        (GNAConfig(family=other, base_grid=GRIDS[other], window=2), ConfigError, "does not match the model"),
        ("no-such-preset", ConfigError, "unknown preset 'no-such-preset'"),
        (config(family, overrides=[{"blocks": "double", "layers": "0-7"}]), ConfigError,
         r"index 7 out of range; double has 2"),
        (config(family, backend="cuda-magic"), ConfigError, "backend 'cuda-magic' is unknown"),
        (bad, ConfigError, "bad.yaml: invalid YAML"),
    ]
    bad.write_text("family: [")
    for preset, error, message in cases:
        with pytest.raises(error, match=message):
            apply(pipe, preset)
        assert {n: m.processor for n, m in transformer.named_modules() if hasattr(m, "processor")} == snapshot
        assert not transformer._forward_pre_hooks and getattr(transformer, "_gna_handle", None) is None
    with pytest.raises(ConfigError, match="dense_steps=0.3 is a fraction of the steps, but the step count is unknown"):
        apply(transformer, config(family, dense_steps=0.3))
    apply(pipe, config(family))
    with pytest.raises(RuntimeError, match="already applied"):
        apply(pipe, config(family))


def test_unsupported_models_list_the_supported_families():
    with pytest.raises(UnsupportedModelError,
                       match=r"Linear is not supported; supported families: flux \(FluxTransformer2DModel\)"):
        apply(torch.nn.Linear(2, 2), "flux-4k")
    with pytest.raises(UnsupportedModelError, match="takes a diffusers pipeline"):
        apply("flux-4k", "flux-4k")


def test_bare_transformer_counts_forward_calls(monkeypatch):
    transformer = flux.tiny_transformer()
    inputs = flux.transformer_inputs(transformer, (6, 8), text=5)
    handle = apply(transformer, config("flux", base_grid=[6, 8], dense_steps=1))  # the inputs' grid
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        transformer(**inputs)
        assert spy.windows == []
        transformer(**inputs)
        assert len(spy.windows) == 4
        handle.reset_steps()
        transformer(**inputs)
    handle.remove()
    assert len(spy.windows) == 4


def test_a_family_this_diffusers_lacks_is_left_out_and_named(tmp_path):
    """A family module that cannot be imported (its transformer class is newer than the installed diffusers)
    does not break the package: the others work, and an unsupported model's error names the missing one."""
    import subprocess
    import sys

    script = """
import sys
sys.modules["gna_diffusers.patches.flux3"] = None  # as if this diffusers had no Flux3Transformer2DModel
import torch
from gna_diffusers import ConfigError, GNAConfig, UnsupportedModelError, apply, load_preset
from gna_diffusers.cli import main
from gna_diffusers.patches import PATCHES, UNAVAILABLE, flux

def refused(call, error_type, text):
    try:
        call()
    except error_type as error:
        assert text in str(error), error
    else:
        raise AssertionError("no error")

assert "flux3" not in PATCHES and "flux" in PATCHES and list(UNAVAILABLE) == ["flux3"]
apply(flux.tiny_transformer(), GNAConfig(family="flux", window=2)).remove()
refused(lambda: apply(torch.nn.Linear(2, 2), "flux-4k"), UnsupportedModelError,
        "flux3 is unavailable with this diffusers")
refused(lambda: load_preset("flux3-1k"), ConfigError, "not importable with this diffusers: flux3")
assert main(["presets", "list"]) == 0 and main(["families"]) == 0  # the flux3 presets' rows say why
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
