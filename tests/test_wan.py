"""Wan 2.1 / 2.2 (tiny offline models, fp32, CPU): only each block's self-attention (attn1) is routed, the
cross-attention keeps its stock processor, and a Wan 2.2 pipeline's two experts are patched together."""

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from helpers import harness_loads, max_diff
from test_apply import OperatorSpy

from gna_diffusers import ConfigError, GNAConfig, apply, enabled, remove
from gna_diffusers.patches import wan

GRID = (5, 4, 4)  # the tiny pipeline's latent token grid at 32x32 pixels, 9 frames


def generate(pipe, steps=3, prompts=("a red cat", "a dog on a beach at sunset")):
    return pipe(list(prompts), height=32, width=32, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(0), **wan.tiny_call_kwargs()).frames


def sparse(**kwargs):
    return GNAConfig(family="wan", base_grid=list(GRID), window=[2, 2, 2], **kwargs)


def whole():
    return GNAConfig(family="wan", window=-1)


def test_whole_extent_windows_reproduce_the_stock_transformer_and_pipeline():
    transformer = wan.tiny_transformer()
    inputs = wan.transformer_inputs(transformer, (3, 4, 6), text=7, batch=2)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, whole()):
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
    pipe = wan.tiny_pipeline()
    stock = generate(pipe)
    with enabled(pipe, whole()) as handle:
        assert max_diff(generate(pipe), stock) <= 1e-5
        assert handle.runtime.grid == GRID


def test_only_the_self_attention_of_selected_layers_is_routed(monkeypatch):
    pipe = wan.tiny_pipeline()
    blocks = pipe.transformer.blocks
    cross = [block.attn2.processor for block in blocks]
    handle = apply(pipe, sparse(dense_layers=[{"blocks": "blocks", "layers": [0]}]))
    assert type(blocks[0].attn1.processor) is WanAttnProcessor  # a dense layer keeps the stock processor
    assert isinstance(blocks[1].attn1.processor, handle.patch.processor_class)
    assert [block.attn2.processor for block in blocks] == cross  # cross-attention untouched
    spy = OperatorSpy(monkeypatch)
    generate(pipe, steps=1)
    remove(pipe)
    assert spy.windows == [(2, 2, 2)] * 2  # conditional and unconditional calls, one sparse layer each


def test_remove_restores_outputs_bit_for_bit():
    pipe = wan.tiny_pipeline()
    stock = generate(pipe)
    with enabled(pipe, sparse()):
        assert max_diff(generate(pipe), stock) > 1e-4
    assert torch.equal(generate(pipe), stock)


def test_both_experts_of_a_wan_2_2_pipeline_are_patched_counted_and_restored(monkeypatch):
    pipe = wan.tiny_two_expert_pipeline(boundary_ratio=0.5)
    experts = (pipe.transformer, pipe.transformer_2)
    before = [[block.attn1.processor for block in expert.blocks] for expert in experts]
    stock = generate(pipe, steps=4)
    handle = apply(pipe, sparse(dense_steps=1))
    assert handle.transformers == list(experts)
    assert all(expert._gna_handle is handle for expert in experts)
    calls = []
    spy = OperatorSpy(monkeypatch)
    for index, expert in enumerate(experts):
        expert.register_forward_hook(lambda *_, index=index: calls.append((index, len(spy.windows))))
    generate(pipe, steps=4)
    experts_used = [index for index, _ in calls]
    assert set(experts_used) == {0, 1}  # the boundary switched experts within the generation
    handle.remove()
    sparse_per_call = [b - a for a, b in zip([0] + [n for _, n in calls], [n for _, n in calls])]
    # Two calls per step (guidance), two sparse layers per call; the warm-up step counts across both experts.
    assert sparse_per_call == [0, 0] + [2] * 6
    after = [[block.attn1.processor for block in expert.blocks] for expert in experts]
    assert after == before and not any(hasattr(expert, "_gna_handle") for expert in experts)
    assert torch.equal(generate(pipe, steps=4), stock)


def test_experts_of_different_shapes_are_refused_before_anything_is_installed():
    pipe = wan.tiny_two_expert_pipeline()
    pipe.transformer_2 = wan.tiny_transformer(num_layers=3)
    with pytest.raises(TypeError, match=r"pipeline.transformer_2 .* differs from pipeline.transformer"):
        apply(pipe, sparse())
    assert not hasattr(pipe.transformer, "_gna_handle")
    assert type(pipe.transformer.blocks[0].attn1.processor) is WanAttnProcessor



def test_full_size_configs_name_the_real_shapes():
    from gna_diffusers.harness.models import on_meta

    for hub_id, billions, grid, size in [
        ("Wan-AI/Wan2.1-T2V-14B-Diffusers", 14.29, (21, 45, 80), (720, 1280, 81)),
        ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", 5.00, (31, 22, 40), (704, 1280, 121)),
        ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 1.42, (21, 30, 52), (480, 832, 81)),
    ]:
        config, latent_grid = wan.full_size(hub_id)
        model = on_meta(wan.PATCH.transformer_class, config)
        assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == billions
        assert latent_grid(*size) == grid



def test_image_to_video_transformer_keeps_its_image_branch_stock(monkeypatch):
    """Wan 2.1 I2V: attn2 also attends to CLIP image tokens (added K/V projections); only attn1 is routed."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=64, image_dim=12, added_kv_proj_dim=32,
    ).eval()
    inputs = wan.transformer_inputs(transformer, (2, 4, 4), text=512)  # the processor expects 512 text tokens
    inputs["encoder_hidden_states_image"] = torch.randn(1, 257, 12, generator=torch.Generator().manual_seed(1))
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, whole()):
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
        with enabled(transformer, GNAConfig(family="wan", window=2)):
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
    assert len(spy.windows) == 4  # two blocks' attn1, twice


def test_vace_routes_the_main_and_the_control_blocks(monkeypatch):
    transformer = wan.tiny_vace_transformer()
    inputs = wan.transformer_inputs(transformer, (2, 4, 4), text=6)
    inputs["control_hidden_states"] = torch.randn(1, 8, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    spy = OperatorSpy(monkeypatch)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with enabled(transformer, whole()):
            assert max_diff(transformer(**inputs)[0], stock) <= 1e-5
        with enabled(transformer, GNAConfig(family="wan", base_grid=[2, 4, 4], window=[2, 2, 2],
                                            dense_layers=[{"blocks": "vace", "layers": [1]}])) as handle:
            assert max_diff(transformer(**inputs)[0], stock) > 1e-3
            assert {r["blocks"] for r in handle.layers()} == {"blocks", "vace"}
    assert len(spy.windows) == 4 + 3  # whole extent: 2 blocks + 2 VACE blocks; then one VACE block dense
    assert torch.equal(transformer(**inputs)[0], stock)


def test_a_vace_selector_on_plain_wan_names_the_missing_blocks():
    with pytest.raises(ConfigError, match="vace has no layers in this model"):
        apply(wan.tiny_transformer(),
              GNAConfig(family="wan", window=-1, dense_layers=[{"blocks": "vace", "layers": "0"}]))


@pytest.mark.parametrize("references", [0, 1], ids=["control-video", "with-reference-image"])
def test_vace_pipeline_routes_main_and_control_blocks_every_sparse_step(references, monkeypatch):
    """WanVACEPipeline: a control video drives the VACE blocks beside the main ones. A reference image adds a
    latent frame before the video's, which is context (every video token attends to all of it), not a frame
    of the grid. Whole windows reproduce the pipeline; a sparse preset routes all four blocks of every call
    after the warm-up step."""
    import warnings

    from diffusers import WanVACEPipeline
    from PIL import Image

    transformer = wan.tiny_vace_transformer(vace_in_channels=2 * 4 + 4 * 4)  # 2 latents + a 4x4 mask
    pipe = WanVACEPipeline(transformer=transformer, **wan.tiny_parts(0))
    frame = Image.fromarray((torch.arange(32 * 32 * 3) % 251).reshape(32, 32, 3).to(torch.uint8).numpy())
    extra = {"reference_images": [frame]} if references else {}

    def generate():
        return pipe(video=[frame] * 9, prompt="a red cat", height=32, width=32, num_frames=9, num_inference_steps=3,
                    output_type="pt", max_sequence_length=48, generator=torch.Generator().manual_seed(0),
                    **extra).frames

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="wan", window=-1)):
            assert max_diff(generate(), stock) <= 1e-5
        spy.contexts.clear()
        with enabled(pipe, GNAConfig(family="wan", window=2, dense_steps=1)):
            generate()
    # 9 frames -> 5 latent frames of 4x4 tokens, and the reference image's 16 as context; CFG: 2 calls a step.
    assert spy.contexts == [((5, 4, 4), 16 * references)] * (2 * 2 * 4)


def test_lucy_edit_pipeline_conditions_along_channels(monkeypatch):
    """LucyEditPipeline (Decart's Lucy Edit, a Wan 2.2 TI2V-5B fine-tune) concatenates the source video's latents
    along channels: the grid is the latents', whole windows reproduce the stock pipeline and a sparse preset routes
    the steps after the dense one."""
    from diffusers import LucyEditPipeline, WanTransformer3DModel
    from PIL import Image

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**{**wan.TINY_CONFIG, "in_channels": 2 * wan.TINY_CONFIG["in_channels"]},
                                        num_layers=2).eval()
    pipe = LucyEditPipeline(transformer=transformer, **wan.tiny_parts(0))
    video = [Image.new("RGB", (32, 32), (20 * frame, 100, 50)) for frame in range(9)]

    def generate():
        return pipe(video=video, prompt="a red cat", height=32, width=32, num_frames=9, num_inference_steps=3,
                    output_type="pt", generator=torch.Generator().manual_seed(0), max_sequence_length=32).frames

    stock = generate()
    spy = OperatorSpy(monkeypatch)
    with enabled(pipe, GNAConfig(family="wan", window=-1)) as handle:
        assert max_diff(generate(), stock) <= 1e-5
        assert handle.runtime.grid == (5, 4, 4)
    spy.windows.clear()
    with enabled(pipe, GNAConfig(family="wan", window=2, dense_steps=1)) as handle:
        sparse = generate()
        assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 1e-3
    assert len(spy.windows) == 2 * 2 * 2  # 2 sparse steps x 2 guidance calls x 2 layers


def test_compare_gives_lucy_edit_its_input_video(tmp_path, monkeypatch, capsys):
    """compare on Lucy Edit (the tiny pipeline of the test above, given to the harness as a loaded model): its
    required ``video`` comes from --video (a GIF: no ffmpeg needed); without one the run stops with one line naming
    the flag; a pipeline taking no input video refuses it."""
    import json

    import imageio.v2 as imageio
    import numpy as np
    from diffusers import LucyEditPipeline, WanTransformer3DModel

    from gna_diffusers.cli import main

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**{**wan.TINY_CONFIG, "in_channels": 2 * wan.TINY_CONFIG["in_channels"]},
                                        num_layers=2).eval()
    pipes = {"decart-ai/Lucy-Edit-Dev": LucyEditPipeline(transformer=transformer, **wan.tiny_parts(0)),
             "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": wan.tiny_pipeline()}
    harness_loads(monkeypatch, wan, pipes)
    frames = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    imageio.mimwrite(tmp_path / "source.gif", list(frames))
    args = ["compare", "--output", str(tmp_path / "out"), "--no-warmup", "--steps", "2", "--prompt", "a red cat",
            "--height", "32", "--width", "32", "--frames", "9", "--device", "cpu", "--preset", "wan-720p"]
    assert main([*args, "--model", "decart-ai/Lucy-Edit-Dev"]) == 2
    assert "LucyEditPipeline requires video: give --video PATH" in capsys.readouterr().err
    source = ["--video", str(tmp_path / "source.gif")]
    assert main([*args, "--model", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", *source]) == 2
    assert "WanPipeline takes no input video" in capsys.readouterr().err
    assert main([*args, "--model", "decart-ai/Lucy-Edit-Dev", *source]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["video_sha1"] and report["samples"][0]["metrics"]["psnr"] is not None
    assert "input video: `" in (tmp_path / "out" / "report.md").read_text()
