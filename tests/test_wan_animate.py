"""Wan 2.2 Animate (tiny offline transformer and pipeline, fp32, CPU): GNA on each block's self-attention
only, over the segment's grid, with the reference (character) frame as context; one warm-up per segment;
the harness times it with random weights, and runs a checkpoint given its character image, pose and face videos."""

import re
import warnings

import pytest
import torch
from brute_force import joint_mask, masked_self_attention
from diffusers.models.transformers import transformer_wan_animate
from helpers import assert_equals_masked_stock, assert_round_trip, harness_loads
from test_apply import OperatorSpy

from gna_diffusers import GNAConfig, enabled, load_preset
from gna_diffusers.cli import main
from gna_diffusers.harness.models import on_meta
from gna_diffusers.patches import chronoedit, wan, wan_animate

GRID = (2, 4, 6)  # the segment's frames after the reference frame
FRAME_TOKENS = 4 * 6


def test_whole_extent_reproduces_stock_and_only_self_attention_is_routed(monkeypatch):
    transformer = wan_animate.tiny_transformer()
    inputs = wan_animate.transformer_inputs(transformer, GRID, text=7)
    spy = OperatorSpy(monkeypatch)

    def installed(handle):
        assert handle.runtime.layout.grid_offset == FRAME_TOKENS
        routed = {name for name, p in transformer.attn_processors.items()
                  if type(p) is wan_animate.GNAWanAnimateAttnProcessor}
        assert routed == {f"blocks.{i}.attn1.processor" for i in range(2)}  # not attn2, not the face adapter

    assert_round_trip(transformer, "wan-animate", inputs, installed)
    assert spy.contexts == [(GRID, FRAME_TOKENS)] * 4  # the reference frame: context


def test_sparse_windows_equal_an_independent_masked_attention(monkeypatch):
    """The reference frame's tokens are seen by every query and see everything; the segment's tokens see
    their window: checked against the stock model whose self-attention gets that boolean mask."""
    window, stride = (2, 2, 4), (1, 2, 2)
    transformer = wan_animate.tiny_transformer()
    inputs = wan_animate.transformer_inputs(transformer, GRID, text=7)
    mask = joint_mask(GRID, window, stride, FRAME_TOKENS)
    assert_equals_masked_stock(transformer, "wan-animate", inputs, GRID, window, stride,
                               lambda: masked_self_attention(transformer_wan_animate, mask, monkeypatch))


def test_pipeline_runs_gna_in_every_segment_after_its_own_warm_up(monkeypatch):
    """WanAnimatePipeline: 13 frames in two 9-frame segments; each segment sets its schedule again, so each
    has a dense first step. 32x32 pixels -> 8x8 latents -> 4x4 tokens; 9 frames -> 3 latent frames."""
    pipe = wan_animate.tiny_pipeline()
    spy = OperatorSpy(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gna.*")
        with enabled(pipe, GNAConfig(family="wan-animate", window=2, dense_steps=1)):
            video = pipe(prompt="a red cat", height=32, width=32, num_inference_steps=3, output_type="pt",
                         generator=torch.Generator().manual_seed(0), **wan_animate.tiny_call_kwargs()).frames
    assert video.shape[:2] == (1, 13) and torch.isfinite(video).all()
    assert spy.contexts == [((3, 4, 4), 16)] * (2 * 2 * 2)  # 2 segments x 2 sparse steps x 2 blocks


def test_preset_and_full_size_shape():
    assert wan_animate.latent_grid(720, 1280, 77) == tuple(load_preset("wan-animate-720p").base_grid)

    def block_parameters(module, config) -> int:
        model = on_meta(module.PATCH.transformer_class, config)
        return sum(p.numel() for p in model.blocks.parameters())

    # Its blocks are Wan 2.1 I2V 14B's (ChronoEdit-14B's shape); motion / face encoders and adapters come on top.
    chronoedit_blocks = block_parameters(chronoedit, chronoedit.FULL_CONFIG)
    assert block_parameters(wan_animate, wan_animate.FULL_CONFIG) == chronoedit_blocks


@pytest.mark.slow
def test_random_weights_mode_times_it(tmp_path, monkeypatch):
    name = "Wan-AI/Wan2.2-Animate-14B-Diffusers"
    assert not re.search(wan.NAME_PATTERN, name, re.IGNORECASE)  # not plain Wan's
    monkeypatch.setattr(wan_animate, "FULL_CONFIG", dict(wan_animate.tiny_transformer().config))
    monkeypatch.setattr(wan_animate, "TEXT_TOKENS", 8)
    assert main(["compare", "--random-weights", "--model", name, "--height", "128", "--width", "192",
                 "--frames", "9", "--repeats", "1", "--output", str(tmp_path / "timed")]) == 0
    report = (tmp_path / "timed" / "report.md").read_text()
    assert "wan-animate-720p" in report and "3x8x12" in report.replace(", ", "x")


def test_compare_takes_its_pose_and_face_videos_as_file_arguments(tmp_path, monkeypatch, capsys):
    """compare on Wan Animate with weights (the tiny pipeline, given to the harness as a loaded model): the character
    image from --image, the pose and face videos from --call-arg NAME=@PATH (GIFs here); without them the run stops
    naming the arguments and how to give them; --frames, which the pipeline does not take, is ignored with a
    warning."""
    import json

    import imageio.v2 as imageio


    inputs = wan_animate.tiny_call_kwargs()
    inputs["image"].save(tmp_path / "character.png")
    for name in ("pose_video", "face_video"):
        imageio.mimwrite(tmp_path / f"{name}.gif", [frame for frame in inputs[name]])
    pipe = wan_animate.tiny_pipeline()
    harness_loads(monkeypatch, wan_animate, pipe)
    args = ["compare", "--model", "Wan-AI/Wan2.2-Animate-14B-Diffusers", "--output", str(tmp_path / "out"),
            "--no-warmup", "--steps", "2", "--prompt", "a red cat", "--height", "32", "--width", "32", "--device",
            "cpu", "--image", str(tmp_path / "character.png"), "--call-arg", "segment_frame_length=9",
            "--call-arg", "max_sequence_length=48"]
    assert main(args) == 2
    assert ("WanAnimatePipeline requires pose_video, face_video: give --call-arg pose_video=VALUE (a file: "
            "pose_video=@PATH), --call-arg face_video=VALUE") in capsys.readouterr().err
    videos = [f"--call-arg={name}=@{tmp_path / name}.gif" for name in ("pose_video", "face_video")]
    with pytest.warns(UserWarning, match="WanAnimatePipeline takes no num_frames: --frames is ignored"):
        assert main([*args, *videos, "--frames", "9"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["settings"]["call_args_sha1"]) == {"pose_video", "face_video"}
    assert len(report["samples"][0]["metrics"]["per_frame_psnr"]) == 13  # the pose video's frames, two segments
    (tmp_path / "broken.gif").write_text("not a video")
    assert main([*args, "--call-arg", f"pose_video=@{tmp_path / 'broken.gif'}", videos[1]]) == 2
    assert "--call-arg pose_video: " in capsys.readouterr().err
    assert main([*args, "--call-arg", f"pose_video=@{tmp_path / 'none.gif'}"]) == 2
    assert "none.gif: no such file" in capsys.readouterr().err