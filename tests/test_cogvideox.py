"""CogVideoX (tiny offline 1.5-style transformer and pipelines, fp32, CPU): GNA on each block's joint
[text, video] attention, whose stock processor calls F.scaled_dot_product_attention itself."""

import contextlib
import warnings

import pytest
import torch
from brute_force import joint_mask, masked_sdpa
from helpers import assert_equals_masked_stock, assert_round_trip, max_diff, no_gna_warnings
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import cogvideox

GRID = (3, 4, 6)
TEXT = 7


def tiny_consisid():
    """ConsisID's transformer: CogVideoX's blocks with the same processor (its face cross-attention, between blocks,
    is a module of its own and stays stock)."""
    from diffusers import ConsisIDTransformer3DModel

    torch.manual_seed(0)
    return ConsisIDTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=cogvideox.TEXT_WIDTH, num_layers=2, sample_width=8, sample_height=8, sample_frames=9,
        patch_size=2, temporal_compression_ratio=2, max_text_seq_length=TEXT, use_rotary_positional_embeddings=True,
    ).eval()


@pytest.mark.parametrize("build", [cogvideox.tiny_transformer, tiny_consisid], ids=["cogvideox", "consisid"])
def test_whole_extent_reproduces_stock_and_removal_is_exact(build, monkeypatch):
    transformer = build()
    inputs = cogvideox.transformer_inputs(transformer, GRID, text=TEXT, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        assert {type(b.attn1.processor) for b in transformer.transformer_blocks} == {
            cogvideox.GNACogVideoXAttnProcessor}

    assert_round_trip(transformer, "cogvideox", inputs, installed)
    assert spy.contexts == [(GRID, TEXT)] * 4  # every text token is context of every video query


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = cogvideox.tiny_transformer()
    inputs = cogvideox.transformer_inputs(transformer, GRID, text=TEXT)
    assert_equals_masked_stock(transformer, "cogvideox", inputs, GRID, window, stride,
                               lambda: masked_sdpa(joint_mask(GRID, window, stride, TEXT), monkeypatch))


def generate(pipe, steps=3, **kwargs):
    return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **cogvideox.tiny_call_kwargs(), **kwargs).frames


def test_text_to_video_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """CogVideoXPipeline (classifier-free guidance in one batch of 2, DDIM) at 32x32 pixels x 9 frames: 5 latent
    frames padded to 6, a 3x4x4 grid. Whole windows reproduce it; a sparse preset routes the steps after the
    dense one."""
    pipe = cogvideox.tiny_pipeline()
    stock = generate(pipe)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="cogvideox", window=-1)):
            # 1.6e-5 on an AMD EPYC CPU (MKL sums in another order there): three guided DDIM steps and the VAE
            assert max_diff(generate(pipe), stock) <= 1e-4
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="cogvideox", window=2, dense_steps=1)) as handle:
            sparse = generate(pipe)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert spy.contexts == [((3, 4, 4), 48)] * (2 * 2)  # 2 sparse steps x 2 layers; 48 prompt tokens


def test_image_to_video_pipeline_conditions_along_channels():
    """CogVideoXImageToVideoPipeline concatenates the image latents along channels (prepare_latents returns both):
    the grid is the latents', and whole windows reproduce the stock pipeline."""
    from diffusers import CogVideoXImageToVideoPipeline

    torch.manual_seed(0)
    transformer = cogvideox.tiny_transformer()
    wide = type(transformer).from_config({**transformer.config, "in_channels": 8}).eval()
    pipe = CogVideoXImageToVideoPipeline(transformer=wide, **cogvideox.tiny_parts())
    image = torch.rand(1, 3, 32, 32)
    stock = generate(pipe, image=image)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="cogvideox", window=-1)) as handle:
            assert max_diff(generate(pipe, image=image), stock) <= 1e-5
            assert handle.runtime.grid == (3, 4, 4)
    with enabled(pipe, GNAConfig(family="cogvideox", window=2, dense_steps=1)):
        assert torch.isfinite(generate(pipe, image=image)).all()


def test_pyramid_attention_broadcast_stacks_with_gna():
    """diffusers' Pyramid Attention Broadcast (made for CogVideoX) replays attention outputs of earlier steps from a
    hook around each attention module; GNA runs inside the module: whole windows reproduce stock + PAB."""
    from diffusers import PyramidAttentionBroadcastConfig

    def generate_with_pab(config):
        pipe = cogvideox.tiny_pipeline()
        pipe.transformer.enable_cache(PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
            current_timestep_callback=lambda: pipe.current_timestep))
        with enabled(pipe, config) if config else contextlib.nullcontext():
            return generate(pipe, steps=4)

    stock = generate_with_pab(None)
    assert max_diff(stock, generate(cogvideox.tiny_pipeline(), steps=4)) > 1e-3  # PAB skipped some attention
    assert max_diff(generate_with_pab(GNAConfig(family="cogvideox", window=-1)), stock) <= 1e-5
    sparse = generate_with_pab(GNAConfig(family="cogvideox", window=2, dense_steps=1))
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0


def test_fused_qkv_projections_keep_gna():
    """``fuse_qkv_projections()`` swaps in FusedCogVideoXAttnProcessor2_0, before or after apply: GNA's fused
    subclass takes its place, and whole windows reproduce the fused stock model."""
    transformer = cogvideox.tiny_transformer()
    inputs = cogvideox.transformer_inputs(transformer, GRID, text=TEXT)
    transformer.fuse_qkv_projections()
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, GNAConfig(family="cogvideox", window=-1)):
            assert {type(b.attn1.processor) for b in transformer.transformer_blocks} == {
                cogvideox.GNAFusedCogVideoXAttnProcessor}
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
        with enabled(transformer, GNAConfig(family="cogvideox", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3


@pytest.mark.parametrize("arguments", [dict(is_causal=True), dict(dropout_p=0.5), dict(scale=0.3)])
def test_sdpa_arguments_reach_the_route(arguments):
    """Through the routed F, whole-extent GNA equals the stock SDPA call with the same arguments: a causal or
    dropout call runs dense (with one warning naming it), a custom softmax scale reaches GNA."""
    from gna_diffusers.config import LayerPattern
    from gna_diffusers.route import GNARoute, TokenLayout, _RoutedFunctional

    grid = (2, 3)
    q, k, v = torch.randn(3, 1, 2, TEXT + 6, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
    functional = _RoutedFunctional(torch.nn.functional)
    functional.unnamed_route = route = GNARoute(("blocks", 0), text_first=True, backend="reference")
    route.layout, route.pattern = TokenLayout(grid, 6), LayerPattern(False, grid, (1, 1), (1, 1))
    dense = "scale" not in arguments
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(1)
        routed = functional.scaled_dot_product_attention(q, k, v, **arguments)
    torch.manual_seed(1)
    torch.testing.assert_close(routed, torch.nn.functional.scaled_dot_product_attention(q, k, v, **arguments),
                               atol=1e-6, rtol=1e-6)
    assert [str(w.message) for w in caught if "gna" in str(w.message)] == (
        [f"gna: layer blocks.0 runs dense: the call asks for {', '.join(f'{n}={a}' for n, a in arguments.items())}"]
        if dense else [])


def test_the_routed_functional_is_torchs_elsewhere():
    """While installed, attention_processor's F stands in for torch.nn.functional: the same functions, SDPA routed
    only during a GNA processor's call; removal puts torch's module back."""
    from diffusers.models import attention_processor

    transformer = cogvideox.tiny_transformer()
    with enabled(transformer, GNAConfig(family="cogvideox", window=2)):
        functional = attention_processor.F
        assert functional is not torch.nn.functional and functional.unnamed_route is None
        assert functional.pad is torch.nn.functional.pad
    assert attention_processor.F is torch.nn.functional


def test_full_size_shapes_by_name_and_preset_grids():
    from gna_diffusers.harness.models import on_meta

    def billions(name: str) -> float:
        config, _ = cogvideox.full_size(name)
        return sum(p.numel() for p in on_meta(cogvideox.PATCH.transformer_class, config).parameters()) / 1e9

    assert billions("THUDM/CogVideoX-2b") == pytest.approx(1.7, rel=0.05)
    assert billions("THUDM/CogVideoX-5b") == pytest.approx(5.6, rel=0.05)
    assert billions("THUDM/CogVideoX1.5-5B") == pytest.approx(5.6, rel=0.05)
    _, grid_1_5 = cogvideox.full_size("THUDM/CogVideoX1.5-5B")
    assert grid_1_5(768, 1360, 81) == tuple(load_preset("cogvideox-1.5-768p").base_grid)
    assert cogvideox.latent_grid(480, 720, 49) == tuple(load_preset("cogvideox-480p").base_grid)
    with pytest.raises(ValueError, match="4k \\+ 1"):
        cogvideox.latent_grid(480, 720, 48)


def test_the_route_in_flight_is_per_thread():
    """Two threads whose GNA processors share a module (CogVideoX's and Allegro's share diffusers' attention_processor)
    each see their own route while their calls are in flight."""
    import threading

    from gna_diffusers.route import GNARoute, _RoutedFunctional, _with_unnamed_route

    functional = _RoutedFunctional(torch.nn.functional)
    routes = [GNARoute(("blocks", i), text_first=True, backend="reference") for i in range(2)]
    barrier, seen = threading.Barrier(2), {}

    def call(i):
        def inside():
            barrier.wait()  # both routes set before either thread reads its own
            seen[i] = functional.unnamed_route
            barrier.wait()
        _with_unnamed_route(functional, routes[i], inside)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {0: routes[0], 1: routes[1]} and functional.unnamed_route is None
