"""NVIDIA Cosmos (tiny offline transformer and Cosmos 2.5 Predict pipeline, fp32, CPU): GNA on each block's
``attn1``, whose stock processor names no attention backend; ``attn2`` stays stock."""

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_cosmos
from helpers import (assert_equals_masked_stock, assert_round_trip, assert_whole_windows_reproduce, harness_loads,
                     max_diff, no_gna_warnings)
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import cosmos

GRID = (3, 4, 6)


def test_whole_extent_reproduces_stock_and_only_self_attention_is_routed(monkeypatch):
    """Also checks the GNA processor keeps the stock call signature: diffusers' Attention drops the keyword
    arguments a processor does not declare (RoPE here), which whole windows would then not reproduce."""
    transformer = cosmos.tiny_transformer()
    inputs = cosmos.transformer_inputs(transformer, GRID, text=7, batch=2)
    spy = OperatorSpy(monkeypatch)

    def installed(_):
        kinds = {(type(b.attn1.processor), type(b.attn2.processor)) for b in transformer.transformer_blocks}
        assert kinds == {(cosmos.GNACosmosAttnProcessor, transformer_cosmos.CosmosAttnProcessor2_0)}

    assert_round_trip(transformer, "cosmos", inputs, installed)
    assert spy.contexts == [(GRID, 0)] * 4


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = cosmos.tiny_transformer()
    inputs = cosmos.transformer_inputs(transformer, GRID, text=7)
    mask = joint_mask(GRID, window, stride, 0)
    assert_equals_masked_stock(transformer, "cosmos", inputs, GRID, window, stride,
                               lambda: masked_self_attention(transformer_cosmos, mask, monkeypatch))


def test_predict_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """Cosmos2_5_PredictBasePipeline (text-to-world, classifier-free guidance, flow UniPC) at 32x32 pixels x 9
    frames: a 5x4x4 grid. Whole windows reproduce it; a sparse preset routes each layer of the steps after the
    dense one."""
    pipe = cosmos.tiny_pipeline()

    def generate():
        return pipe(prompt="a red cat", height=32, width=32, num_inference_steps=3, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **cosmos.tiny_call_kwargs()).frames

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    assert_whole_windows_reproduce(pipe, "cosmos", generate, stock)
    spy.contexts.clear()
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="cosmos", window=2, dense_steps=1)) as handle:
            sparse = generate()
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert spy.contexts == [((5, 4, 4), 0)] * (2 * 2 * 2)  # 2 sparse steps x 2 guidance calls x 2 layers


def test_anima_modular_pipeline_runs_gna_on_its_one_frame_grid(monkeypatch):
    """Anima's core denoise blocks at 64x96 pixels: a 1x4x6 grid, its scheduler counting 4 steps of 2 guidance calls.
    Whole windows reproduce the latents; a sparse pattern routes each layer after the dense warm-up; the shipped
    anima-1k preset runs."""
    pipe = cosmos.tiny_anima_denoise()
    prompts = cosmos.anima_prompt_inputs()

    def generate():
        return pipe(**prompts, height=64, width=96, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                    output="latents")

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    assert_whole_windows_reproduce(pipe, "cosmos", generate, stock)
    spy.contexts.clear()
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="cosmos", window=2, dense_steps=0.25)) as handle:
            sparse = generate()
            assert (handle.runtime.step, handle.runtime.total_steps) == (4, 4)
        with enabled(pipe, "anima-1k"):
            assert torch.isfinite(generate()).all()
    assert max_diff(sparse, stock) > 1e-3
    # each: 3 sparse steps (anima-1k's warm-up is round(0.32 x 4) = 1 step too) x 2 guidance calls x 2 layers
    assert spy.contexts == [((1, 4, 6), 0)] * (2 * 3 * 2 * 2)


def test_full_size_shapes_by_name_and_preset_grid():
    from gna_diffusers.harness.models import on_meta

    def billions(name: str) -> float:
        config, _ = cosmos.full_size(name)
        return sum(p.numel() for p in on_meta(cosmos.PATCH.transformer_class, config).parameters()) / 1e9

    assert billions("nvidia/Cosmos-1.0-Diffusion-7B-Text2World") == pytest.approx(7, rel=0.05)
    assert billions("nvidia/Cosmos-Predict2.5-2B") == pytest.approx(2, rel=0.05)
    with pytest.raises(ValueError, match="no full-size Cosmos 14B shape"):
        cosmos.full_size("nvidia/Cosmos-Predict2-14B-Video2World")
    assert cosmos.latent_grid(704, 1280, 93) == tuple(load_preset("cosmos-720p").base_grid)


@pytest.fixture
def resize_without_torchvision(monkeypatch):
    """CosmosControlNetModel's forward resizes its padding mask with torchvision's nearest resize, which the test
    environment lacks: torch's nearest interpolation stands in (the same values)."""
    from types import SimpleNamespace

    from diffusers.models.controlnets import controlnet_cosmos

    def resize(mask, size, interpolation):
        return torch.nn.functional.interpolate(mask, size=size, mode=interpolation)

    functional = SimpleNamespace(resize=resize)
    stand_in = SimpleNamespace(functional=functional, InterpolationMode=SimpleNamespace(NEAREST="nearest"))
    monkeypatch.setattr(controlnet_cosmos, "transforms", stand_in, raising=False)


def test_transfer_pipeline_runs_gna_in_its_controlnet_blocks_too(monkeypatch, resize_without_torchvision):
    """Cosmos2_5_TransferPipeline: each guidance call runs the ControlNet's blocks over the control video, then the
    transformer's, on one 5x4x4 grid; 17 frames in chunks of 9 (one frame shared) make two chunks, each with its own
    scheduler run. Whole windows reproduce it; sparse windows equal the stock pipeline with every self-attention
    masked independently (ControlNet's and transformer's); a preset's dense layer 0 is dense in both."""
    window, stride = (2, 2, 4), (1, 2, 2)
    pipe = cosmos.tiny_transfer_pipeline()
    controls = torch.rand(17, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    def generate():
        return pipe(controls=[controls], prompt="a red cat", height=32, width=32, num_inference_steps=2,
                    num_frames_per_chunk=9, output_type="pt", generator=torch.Generator().manual_seed(0),
                    max_sequence_length=64).frames

    stock = generate()
    assert stock.shape[1] == 17
    spy = OperatorSpy(monkeypatch)
    assert_whole_windows_reproduce(pipe, "cosmos", generate, stock)
    assert len(spy.contexts) == 2 * 2 * 2 * 4  # chunks x steps x guidance calls x (2 control + 2 transformer blocks)
    spy.contexts.clear()
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="cosmos", base_grid=[5, 4, 4], window=list(window), stride=list(stride))):
            sparse = generate()
            assert {type(block.attn1.processor) for block in pipe.controlnet.control_blocks} == {
                cosmos.GNACosmosAttnProcessor}
        with enabled(pipe, GNAConfig(family="cosmos", window=2, dense_layers=[{"blocks": "blocks", "layers": [0]}])):
            generate()
    assert spy.contexts[-2 * 2 * 2 * 2:] == [((5, 4, 4), 0)] * (2 * 2 * 2 * 2)  # layer 1 of both, only
    assert len(spy.contexts) == 2 * 2 * 2 * 4 + 2 * 2 * 2 * 2
    assert max_diff(sparse, stock) > 1e-3
    masked_self_attention(transformer_cosmos, joint_mask((5, 4, 4), window, stride, 0), monkeypatch)
    assert max_diff(sparse, generate()) <= 1e-5


def test_compare_gives_the_transfer_pipeline_its_control_video(tmp_path, monkeypatch, capsys,
                                                              resize_without_torchvision):
    """compare on Cosmos Transfer (the tiny pipeline, given to the harness as a loaded model: its stand-in safety
    checker does not load from a folder): its required ``controls`` come from --control-video (a GIF here: no
    ffmpeg needed); without one the run stops with one line naming the flag; a pipeline taking no control video
    refuses it."""
    import json

    import imageio.v2 as imageio
    import numpy as np

    from gna_diffusers.cli import main

    pipes = {"nvidia/Cosmos-Transfer2.5-2B": cosmos.tiny_transfer_pipeline(), "nvidia/Cosmos-Predict2.5-2B":
             cosmos.tiny_pipeline()}
    harness_loads(monkeypatch, cosmos, pipes)
    frames = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    imageio.mimwrite(tmp_path / "edges.gif", list(frames))
    args = ["compare", "--output", str(tmp_path / "out"), "--no-warmup", "--steps", "2", "--prompt", "a red cat",
            "--height", "32", "--width", "32", "--frames", "9", "--device", "cpu"]
    assert main([*args, "--model", "nvidia/Cosmos-Transfer2.5-2B"]) == 2
    assert "Cosmos2_5_TransferPipeline requires controls: give --control-video PATH" in capsys.readouterr().err
    assert main([*args, "--model", "nvidia/Cosmos-Predict2.5-2B", "--control-video", str(tmp_path / "edges.gif")]) == 2
    assert "Cosmos2_5_PredictBasePipeline takes no control video" in capsys.readouterr().err
    assert main([*args, "--model", "nvidia/Cosmos-Transfer2.5-2B", "--control-video", str(tmp_path / "edges.gif")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["control_video_sha1"] and report["samples"][0]["metrics"]["psnr"] is not None
    assert "control video: `" in (tmp_path / "out" / "report.md").read_text()
