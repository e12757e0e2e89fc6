"""Qwen-Image 2.1 (tiny offline transformer and pipeline, fp32, CPU): GNA on the generated image's queries only,
with the prompt and condition images (block-causal among themselves, untouched) as context; in the prefill's
per-segment calls and in the KV-cached steps; the flex processor's cached steps; compiled per block."""

import re
import warnings

import pytest
import torch
from brute_force import neighbor_mask
from diffusers.models.transformers import transformer_qwenimage21
from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21FlexAttnProcessor, QwenImage21KVCache
from helpers import max_diff
from PIL import Image
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled
from gna_diffusers.patches import qwen_image21

GRID = (4, 6)
N = GRID[0] * GRID[1]
# (condition images' token shapes, each sample's valid prompt tokens)
CASES = {"text-to-image": ((), None), "two condition images, padded batch": (((2, 4), (4, 2)), (5, 8))}


def inputs_for(case: str, transformer) -> dict:
    references, valid = CASES[case]
    return qwen_image21.transformer_inputs(transformer, GRID, text=8, batch=2 if valid else 1, valid_text=valid,
                                           references=references)


def run(transformer, inputs, cached: bool = False) -> torch.Tensor:
    """One prefill call, or (``cached``) a prefill filling the KV cache then one cached call: the target's rows."""
    with torch.no_grad():
        if not cached:
            return transformer(**inputs)[0][:, -N:]
        cache = QwenImage21KVCache(len(transformer.transformer_blocks))
        transformer(**inputs, kv_cache=cache, kv_cache_mode="extract")
        return transformer(**inputs, kv_cache=cache, kv_cache_mode="cached")[0]


@pytest.mark.parametrize("case", CASES)
def test_whole_extent_reproduces_stock_and_only_the_generated_image_changes(case, monkeypatch):
    transformer = qwen_image21.tiny_transformer()
    inputs = inputs_for(case, transformer)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(transformer, GNAConfig(family="qwen-image-2.1", window=-1)):
            assert max_diff(run(transformer, inputs), stock[:, -N:]) <= 1e-5
            assert max_diff(run(transformer, inputs, cached=True), stock[:, -N:]) <= 1e-5
        assert len(spy.windows) == 2 * 3  # 2 layers x (prefill, then prefill + cached step)
        context = spy.contexts[0][1]
        assert spy.contexts == [(GRID, context)] * 6 and context == inputs["img_mask"].shape[1] - N // 4 + 3 * (
            inputs["hidden_states"].shape[1] - N) // 4  # the whole sequence before the grid
        with enabled(transformer, GNAConfig(family="qwen-image-2.1", window=2)):
            with torch.no_grad():
                sparse = transformer(**inputs)[0]
            assert max_diff(sparse[:, -N:], stock[:, -N:]) > 1e-3
            assert torch.equal(sparse[:, :-N], stock[:, :-N])  # context rows never see the grid: untouched
            assert max_diff(run(transformer, inputs, cached=True), sparse[:, -N:]) <= 1e-5
    with torch.no_grad():
        assert torch.equal(transformer(**inputs)[0], stock)  # removed: bit-identical


def windowed_grid_queries(window, stride, monkeypatch) -> None:
    """The stock model with its grid-query call (the generated image's queries against every key) masked by the
    loop-based GNA definition: context keys as the stock mask has them, grid keys within the window."""
    inner = neighbor_mask(GRID, window, stride, (1, 1), (False, False))
    real = transformer_qwenimage21.dispatch_attention_fn

    def masked(query, key, value, attn_mask=None, **kwargs):
        if query.shape[1] == N and key.shape[1] > N:
            rows = torch.cat([torch.ones(N, key.shape[1] - N, dtype=torch.bool), inner], dim=1)
            attn_mask = rows if attn_mask is None else attn_mask & rows
        return real(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(transformer_qwenimage21, "dispatch_attention_fn", masked)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cached", [False, True], ids=["prefill", "cached"])
def test_sparse_windows_equal_an_independent_masked_attention(case, cached, monkeypatch):
    window, stride = (2, 4), (1, 2)
    transformer = qwen_image21.tiny_transformer()
    inputs = inputs_for(case, transformer)
    with enabled(transformer, GNAConfig(family="qwen-image-2.1", base_grid=list(GRID), window=list(window),
                                        stride=list(stride))):
        routed = run(transformer, inputs, cached)
    windowed_grid_queries(window, stride, monkeypatch)
    assert max_diff(routed, run(transformer, inputs, cached)) <= 1e-5


def generate(pipe, **kwargs) -> torch.Tensor:
    return pipe(prompt="a red cat", num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0),
                **kwargs).images


@pytest.mark.parametrize("use_kv_cache", [True, False])
@pytest.mark.parametrize("condition", [False, True], ids=["text-to-image", "condition image"])
def test_pipeline_runs_gna_after_the_warm_up(use_kv_cache, condition, monkeypatch):
    """QwenImage21Pipeline at 64x96 (a 4x6 grid), with its KV cache (the default: one prefill, then cached steps)
    or without (a prefill every step), with a 64x64 condition image (16 latent tokens, 4 encoder slots) or none.
    Whole windows reproduce the stock pipeline; a sparse preset routes every layer of every step after the
    dense one, with no notice."""
    pipe = qwen_image21.tiny_pipeline()
    kwargs = dict(use_kv_cache=use_kv_cache, height=64, width=96)
    if condition:
        pixels = (torch.arange(64 * 64 * 3) % 251).reshape(64, 64, 3).to(torch.uint8).numpy()
        kwargs.update(image=Image.fromarray(pixels), output_resolution=64)
    stock = generate(pipe, **kwargs)
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="qwen-image-2.1", window=-1)):
            assert max_diff(generate(pipe, **kwargs), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="qwen-image-2.1", window=2, dense_steps=1)) as handle:
            sparse = generate(pipe, **kwargs)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert [grid for grid, _ in spy.contexts] == [GRID] * (2 * 2)  # 2 sparse steps x 2 layers
    context = {count for _, count in spy.contexts}
    assert len(context) == 1 and context.pop() > (16 if condition else 0)  # the prompt (+ the condition image)


def test_calls_naming_no_backend_keep_it_on_every_path(monkeypatch):
    """The stock prefill names no backend (diffusers' default), the cached step the processor's: GNA's dense
    steps and its context calls keep exactly those, whatever backend the model was set to."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    # set_attention_backend also sets diffusers' process-wide default backend, which reset does not undo.
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
    transformer = qwen_image21.tiny_transformer()
    transformer.set_attention_backend("_native_math")
    inputs = inputs_for("two condition images, padded batch", transformer)
    backends = []
    real = transformer_qwenimage21.dispatch_attention_fn

    def recording(query, key, *args, backend=None, **kwargs):
        backends.append((backend, query.shape[1] == N and key.shape[1] > N))  # (backend, grid queries?)
        return real(query, key, *args, backend=backend, **kwargs)

    def calls(config=None) -> list:
        backends.clear()
        if config is None:
            run(transformer, inputs, cached=True)
        else:
            with enabled(transformer, config):
                run(transformer, inputs, cached=True)
        return list(backends)

    monkeypatch.setattr(transformer_qwenimage21, "dispatch_attention_fn", recording)
    stock = calls()
    # The prefill's context segments and grid queries name none; the cached step's grid queries name the model's.
    assert set(stock) == {(None, False), (None, True), ("_native_math", True)}
    assert calls(GNAConfig(family="qwen-image-2.1", window=2, dense_steps=2)) == stock  # both calls dense
    sparse = calls(GNAConfig(family="qwen-image-2.1", window=2))
    assert sparse == [call for call in stock if not call[1]]  # the grid queries ran GNA, the rest as they came


def test_flex_processor_runs_its_cached_steps_sparse_and_says_its_prefill_is_dense(monkeypatch):
    """diffusers' faster processor (a flex BlockMask over the whole prefill) gets GNA's subclass: the prefill stays
    dense (one warning per layer), the cached steps are routed; remove restores the flex processors."""
    transformer = qwen_image21.tiny_transformer()
    transformer.set_attn_processor(QwenImage21FlexAttnProcessor())
    inputs = inputs_for("two condition images, padded batch", transformer)
    with torch.no_grad():
        stock = run(transformer, inputs, cached=True)
    spy = OperatorSpy(monkeypatch)
    with enabled(transformer, GNAConfig(family="qwen-image-2.1", window=-1)):
        processors = {type(p) for p in transformer.attn_processors.values()}
        assert processors == {qwen_image21.GNAQwenImage21FlexAttnProcessor}
        with pytest.warns(UserWarning, match="runs dense on prefill calls") as caught:
            routed = run(transformer, inputs, cached=True)
        assert len([w for w in caught if "prefill" in str(w.message)]) == 2  # once per layer
    assert max_diff(routed, stock) <= 1e-5
    assert len(spy.windows) == 2  # the cached call of each layer
    assert {type(p) for p in transformer.attn_processors.values()} == {QwenImage21FlexAttnProcessor}


def test_blocks_compile_and_run_gna_as_in_eager_mode():
    """The stock transformer does not compile whole with fullgraph=True (it reads its image-slot mask to the
    host); its blocks do, the prefill's segment calls included, and GNA runs in them as in eager mode."""
    transformer = qwen_image21.tiny_transformer()
    inputs = inputs_for("two condition images, padded batch", transformer)
    config = GNAConfig(family="qwen-image-2.1", base_grid=list(GRID), window=[2, 4], stride=[1, 2])
    with enabled(transformer, config):
        eager = run(transformer, inputs), run(transformer, inputs, cached=True)
    torch._dynamo.reset()
    transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    try:
        with enabled(transformer, config):
            compiled = run(transformer, inputs), run(transformer, inputs, cached=True)
    finally:
        torch._dynamo.reset()
    assert max_diff(compiled[0], eager[0]) <= 1e-6 and max_diff(compiled[1], eager[1]) <= 1e-6


def test_layout_probe_names_what_it_cannot_place():
    from gna_diffusers.route import LayoutError

    transformer = qwen_image21.tiny_transformer()
    inputs = inputs_for("text-to-image", transformer)
    inputs["img_shapes"] = [[(1, 3, 6)]]  # 18 tokens: not the 24 of the call, nor whole 2x2 slots
    with pytest.raises(LayoutError, match="do not describe the 24 image tokens"):
        qwen_image21.layout_probe(transformer, (), inputs, None)


def test_hub_names_and_grids():
    from gna_diffusers import load_preset
    from gna_diffusers.patches import qwen_image

    def names(pattern: str, name: str) -> bool:  # as --random-weights matches them
        return re.search(pattern, name, re.IGNORECASE) is not None

    assert names(qwen_image21.NAME_PATTERN, "Qwen/Qwen-Image-2.1")
    assert not names(qwen_image.NAME_PATTERN, "Qwen/Qwen-Image-2.1")
    assert names(qwen_image.NAME_PATTERN, "Qwen/Qwen-Image-Edit-2509")
    assert qwen_image21.latent_grid(2048, 2048) == tuple(load_preset("qwen-image-2.1-2k").base_grid)
    assert qwen_image21.latent_grid(1024, 1024) == tuple(load_preset("qwen-image-2.1-1k").base_grid)
    with pytest.raises(ValueError, match="divisible by 32"):
        qwen_image21.latent_grid(1000, 1000)
