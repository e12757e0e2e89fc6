"""Sana-WM (tiny offline transformer and pipeline, fp32 weights, CPU): GNA in the softmax blocks' two attention calls
(main and camera branch, each from a parameter-free module with no processor, SDPA in bf16), the linear-attention
blocks left as they are. No text in the self-attention."""

import numpy as np
import pytest
import torch
from brute_force import neighbor_mask
from diffusers.models.transformers.transformer_sana_wm import (
    SanaWMBidirectionalGDNAttention,
    SanaWMSoftmaxAttention,
    SanaWMSoftmaxCamAttention,
)
from helpers import harness_loads, max_diff, no_gna_warnings, random_weights_report
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.patches import sana_wm

GRID = (3, 4, 6)
N = 3 * 4 * 6


def run(transformer, inputs) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**inputs)[0]


@pytest.mark.parametrize("camera", [True, False], ids=["camera", "no camera"])
def test_whole_extent_reproduces_stock_and_removal_restores_the_modules(camera, monkeypatch):
    transformer = sana_wm.tiny_transformer()
    linear, softmax = transformer.blocks
    linear_modules = (linear.attn.attn, linear.attn.cam_attn)
    inputs = sana_wm.transformer_inputs(transformer, GRID, text=5, camera=camera)
    stock = run(transformer, inputs)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(transformer, GNAConfig(family="sana-wm", window=-1)) as handle:
            assert max_diff(run(transformer, inputs), stock) <= 1e-5
            assert handle.runtime.layout.grid == GRID
            assert (type(softmax.attn.attn), type(softmax.attn.cam_attn)) == (
                sana_wm.GNASanaWMSoftmaxAttention, sana_wm.GNASanaWMSoftmaxCamAttention)
            assert (linear.attn.attn, linear.attn.cam_attn) == linear_modules  # the linear block: untouched
        with enabled(transformer, GNAConfig(family="sana-wm", window=2)):
            assert max_diff(run(transformer, inputs), stock) > 1e-3
    assert (type(softmax.attn.attn), type(softmax.attn.cam_attn)) == (SanaWMSoftmaxAttention, SanaWMSoftmaxCamAttention)
    assert torch.equal(run(transformer, inputs), stock)  # removed: bit-identical
    assert isinstance(linear.attn.attn, SanaWMBidirectionalGDNAttention)
    # the softmax block's calls in each of the 2 runs: the main branch's, and the camera branch's when there is one
    calls = 2 if camera else 1
    assert len(spy.windows) == 2 * calls and spy.windows[calls:] == [(2, 2, 2)] * calls


@pytest.mark.parametrize("backend, tolerance", [("reference", 1e-5), ("flex", 5e-4)])
def test_sparse_windows_equal_an_independent_masked_attention(backend, tolerance, monkeypatch):
    """Both calls of the softmax block (main and camera branch, bf16 SDPA) against the stock model with the loop-based
    GNA mask; flex's bf16 accumulation differs from SDPA's by its rounding. (Triton: bf16 runs on GPUs only.)"""
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = sana_wm.tiny_transformer()
    inputs = sana_wm.transformer_inputs(transformer, GRID, text=5)
    with enabled(transformer, GNAConfig(family="sana-wm", base_grid=list(GRID), window=list(window),
                                        stride=list(stride), backend=backend)):
        routed = run(transformer, inputs)
    allowed = neighbor_mask(GRID, window, stride, (1, 1, 1), (False, False, False))
    real = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def masked(query, key, value, attn_mask=None, *args, **kwargs):
        if query.shape[-2] == key.shape[-2] == N:  # the self-attention calls (the cross-attention's pass through)
            assert attn_mask is None
            calls.append(query.dtype)
            attn_mask = allowed
        return real(query, key, value, attn_mask, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", masked)
    expected = run(transformer, inputs)
    assert calls == [torch.bfloat16] * 2
    assert max_diff(routed, expected) <= tolerance


def test_a_camera_call_with_padded_frames_runs_dense_with_one_warning():
    """Padded frames mask the camera branch's keys with a -1e9 bias on grid keys, which a window cannot carry: that
    call runs stock (one warning); the main branch (padded tokens zeroed, no mask) stays sparse."""
    transformer = sana_wm.tiny_transformer()
    inputs = sana_wm.transformer_inputs(transformer, GRID, text=5) | {"frame_valid_mask": torch.tensor([[1., 1., 0.]])}
    stock = run(transformer, inputs)
    with enabled(transformer, GNAConfig(family="sana-wm", window=-1)):
        with pytest.warns(UserWarning, match=r"blocks.1 runs dense: its additive attention mask is not uniform"):
            assert max_diff(run(transformer, inputs), stock) <= 1e-5


def generate(pipe, steps: int = 3) -> torch.Tensor:
    from PIL import Image

    image = Image.fromarray((np.arange(32 * 32 * 3) % 251).reshape(32, 32, 3).astype("uint8"))
    poses = np.tile(np.eye(4, dtype=np.float32), (5, 1, 1))
    poses[:, 2, 3] = np.linspace(0.0, 0.5, 5)  # moving forward
    return pipe(image, "a red cat", c2w=poses, intrinsics=[32.0, 32.0, 16.0, 16.0], height=32, width=32,
                num_frames=5, num_inference_steps=steps, max_sequence_length=16,
                generator=torch.Generator().manual_seed(0), output_type="pt").frames


def test_pipeline_runs_gna_after_the_warm_up(monkeypatch):
    """SanaWMPipeline from a first frame along a camera path, 32x32x5 (a 3x16x16 grid), guidance in one batch:
    whole windows reproduce it; a sparse preset routes both calls of the softmax block after the dense step."""
    pipe = sana_wm.tiny_pipeline()
    stock = generate(pipe)
    spy = OperatorSpy(monkeypatch)
    with no_gna_warnings():
        with enabled(pipe, GNAConfig(family="sana-wm", window=-1)) as handle:
            assert max_diff(generate(pipe), stock) <= 1e-5
            assert handle.runtime.grid == (3, 16, 16)
        spy.windows.clear()
        with enabled(pipe, GNAConfig(family="sana-wm", window=3, dense_steps=1)) as handle:
            sparse = generate(pipe)
            assert handle.runtime.step == 3
    assert torch.isfinite(sparse).all() and max_diff(sparse, stock) > 0
    assert len(spy.windows) == 2 * 2  # 2 sparse steps x (main + camera call) of the one softmax block
    with enabled(pipe, "sana-wm-720p"):
        assert torch.isfinite(generate(pipe, steps=2)).all()


def test_regional_compilation_runs_gna_like_eager():
    transformer = sana_wm.tiny_transformer()
    inputs = sana_wm.transformer_inputs(transformer, GRID, text=5)
    with enabled(transformer, GNAConfig(family="sana-wm", window=2)):
        eager = run(transformer, inputs)
        transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
        compiled = run(transformer, sana_wm.transformer_inputs(transformer, GRID, text=5))
    assert max_diff(compiled, eager) <= 1e-6


def test_full_size_and_preset_grid():
    from gna_diffusers.harness.models import on_meta

    model = on_meta(sana_wm.PATCH.transformer_class, sana_wm.FULL_CONFIG)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(2.66, rel=0.01)
    assert sum(isinstance(block.attn.attn, SanaWMSoftmaxAttention) for block in model.blocks) == 5
    assert sana_wm.latent_grid(704, 1280, 161) == tuple(load_preset("sana-wm-720p").base_grid)
    with pytest.raises(ValueError, match=r"8k\+1 frames"):
        sana_wm.latent_grid(704, 1280, 160)


def test_compare_times_it_with_random_weights(tmp_path, monkeypatch):
    report = random_weights_report(sana_wm, "Efficient-Large-Model/SANA-WM_bidirectional", [
        "--height", "128", "--width", "192", "--frames", "17"], tmp_path, monkeypatch)
    assert report["model"]["family"] == "sana-wm" and report["grid"] == [3, 4, 6]
    (row,) = report["presets"]
    assert row["preset"] == "sana-wm-720p" and row["gna_step_ms"] > 0


def test_compare_runs_it_from_a_first_frame_with_a_default_or_given_camera(tmp_path, monkeypatch, capsys):
    """compare on SANA-WM with weights (the tiny pipeline, given to the harness as a loaded model): the first frame
    from --image, the camera walking forward through a 60-degree pinhole unless --call-arg gives one; --call-arg
    names the harness sets itself, or the pipeline lacks, stop the run with one line."""
    import functools
    import json

    from PIL import Image

    from gna_diffusers.cli import main

    pipe = sana_wm.tiny_pipeline()
    harness_loads(monkeypatch, sana_wm, pipe)
    calls = []
    real_call = type(pipe).__call__

    @functools.wraps(real_call)  # the harness reads the call's signature
    def recording_call(self, *args, **kwargs):
        calls.append(kwargs)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", recording_call)
    Image.fromarray((np.arange(32 * 48 * 3) % 251).reshape(32, 48, 3).astype("uint8")).save(tmp_path / "first.png")
    args = ["compare", "--model", "Efficient-Large-Model/SANA-WM_bidirectional", "--output", str(tmp_path / "out"),
            "--no-warmup", "--steps", "2", "--prompt", "a red cat", "--height", "32", "--width", "32", "--frames", "9",
            "--device", "cpu", "--image", str(tmp_path / "first.png"), "--call-arg", "max_sequence_length=16"]
    assert main(args) == 0
    assert {(k["action"], tuple(k["intrinsics"])) for k in calls} == {("w-9", (48 * 3 ** 0.5 / 2, 48 * 3 ** 0.5 / 2,
                                                                                24.0, 16.0))}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["samples"][0]["metrics"]["psnr"] is not None and len(report["samples"][0]["metrics"]
                                                                        ["per_frame_psnr"]) == 9
    calls.clear()
    camera = ["--call-arg", "action=jw-4,w-4", "--call-arg", "intrinsics=[40, 40, 24, 16]"]
    assert main([*args, "--output", str(tmp_path / "turn"), *camera]) == 0
    assert {(k["action"], tuple(k["intrinsics"])) for k in calls} == {("jw-4,w-4", (40, 40, 24, 16))}
    assert "pipeline call arguments: `max_sequence_length=16`, `action='jw-4,w-4'`" in (
        tmp_path / "turn" / "report.md").read_text()
    for extra, message in ((["--call-arg", "num_frames=17"], "--call-arg num_frames: compare sets num_frames itself; "
                                                              "use --frames"),
                           (["--call-arg", "strength=0.5"], "--call-arg strength: SanaWMPipeline takes no strength")):
        assert main([*args, *extra]) == 2
        assert message in capsys.readouterr().err
