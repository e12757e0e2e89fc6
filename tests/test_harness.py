"""compare / sweep on the tiny offline pipelines, the metrics' wiring, resumable sweeps and errors."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from skimage import data, img_as_float
from skimage import metrics as skm

from gna_diffusers.cli import main
from gna_diffusers.harness import metrics, runner

FAST = ["--steps", "2", "--prompt", "a red cat", "--no-warmup"]


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def read(path):
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("model, picture", [("tiny-flux", "p0-s0.png"), ("tiny-hunyuan-video", "p0-s0-gna.mp4")])
def test_compare_writes_the_report_files(tmp_path, capsys, model, picture):
    assert main(["compare", "--model", model, "--output", str(tmp_path), "--seeds", "0,1", *FAST]) == 0
    assert "wrote" in capsys.readouterr().out
    report = read(tmp_path / "report.json")
    assert report["schema_version"] == 1 and report["kind"] == "compare"
    assert {"device", "torch", "diffusers", "triton", "gna_diffusers"} <= set(report["environment"])
    assert report["model"]["weights"].startswith("random") and report["dense_backend"] == "diffusers default"
    assert report["gna_backend"] == {"auto": "reference", "skipped": {}}  # a CPU's first choice
    assert report["preset"]["name"] == ("flux-4k" if model == "tiny-flux" else "hunyuan-video-720p")
    assert report["preset"]["config"]["window"] and any(not layer["dense"] for layer in report["preset"]["layers"])
    assert [s["seed"] for s in report["samples"]] == [0, 1]
    sample = report["samples"][0]
    assert sample["dense"]["wall_s"] > 0 and len(sample["gna"]["transformer_call_s"]) == 2
    assert 0 < sample["metrics"]["psnr"] < metrics.PSNR_CAP and 0 < sample["metrics"]["ssim"] < 1
    assert sample["metrics"]["lpips"].startswith("skipped: no LPIPS weights")
    assert (tmp_path / picture).stat().st_size > 0 and (tmp_path / "p0-s1.png").exists()
    for written in ("report.json", "report.md", "p0-s1.png"):  # readable by colleagues, like any new file
        assert (tmp_path / written).stat().st_mode & 0o777 == 0o666 & ~current_umask()
    markdown = (tmp_path / "report.md").read_text()
    assert "random weights" in markdown and "| p0-s1" in markdown and "- GNA backend (auto): reference\n" in markdown
    if model == "tiny-hunyuan-video":
        assert sample["metrics"]["temporal_psnr"] > 0 and len(sample["metrics"]["per_frame_psnr"]) == 9


@pytest.mark.slow
def test_video_compare_without_an_mp4_encoder_still_reports(tmp_path, monkeypatch):
    # The GPU image has no imageio-ffmpeg: the comparison stands, with the frame strip and one clear warning.
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import then raises ImportError
    with pytest.warns(UserWarning, match="imageio-ffmpeg is not installed, so no MP4 was written"):
        assert main(["compare", "--model", "tiny-hunyuan-video", "--output", str(tmp_path), *FAST]) == 0
    sample = read(tmp_path / "report.json")["samples"][0]
    assert sample["files"] == {"strip": "p0-s0.png"} and sample["metrics"]["temporal_psnr"] > 0
    assert not list(tmp_path.glob("*.mp4")) and "[p0-s0.png](p0-s0.png)" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_dense_check_matches_dense_exactly(tmp_path):
    assert main(["compare", "--preset", "dense-check", "--output", str(tmp_path), *FAST]) == 0
    summary = read(tmp_path / "report.json")["summary"]
    assert summary["psnr"] == metrics.PSNR_CAP and summary["ssim"] == pytest.approx(1.0, abs=1e-9)


def test_the_report_says_when_auto_could_not_take_its_first_gna_backend(tmp_path, monkeypatch):
    """On a GPU whose triton does not import, auto times flex: the report names the backend and why triton could
    not run, next to figures that are then flex's, not the kernel's."""
    import gna_diffusers

    seen = {}

    def support(device, dtype, head_dim=128):
        seen.update(device=torch.device(device).type, dtype=dtype, head_dim=head_dim)
        return {"triton": "triton is not importable (ImportError: no libcuda)", "flex": None, "reference": None}, "flex"

    monkeypatch.setattr(gna_diffusers, "backend_support", support)
    assert main(["compare", "--preset", "dense-check", "--output", str(tmp_path), *FAST]) == 0
    report = read(tmp_path / "report.json")
    assert report["gna_backend"] == {"auto": "flex", "skipped": {"triton": "triton is not importable (ImportError: "
                                                                          "no libcuda)"}}
    assert seen == {"device": "cpu", "dtype": torch.float32, "head_dim": 16}  # the run's, and tiny FLUX's heads
    assert ("- GNA backend (auto): flex; triton cannot run here: triton is not importable (ImportError: no libcuda)\n"
            in (tmp_path / "report.md").read_text())


@pytest.mark.slow
def test_sweep_resumes_and_records_failures(tmp_path, monkeypatch):
    args = ["sweep", "--presets", "flux-4k,flux-4k-conservative,dense-check", "--output", str(tmp_path), *FAST]
    assert main(args) == 0
    summary = read(tmp_path / "summary.json")
    assert [r["status"] for r in summary["presets"]] == ["done"] * 3
    assert (tmp_path / "quality_vs_speed.png").stat().st_size > 0
    assert "quality vs speed" in (tmp_path / "summary.md").read_text()
    for name in ("flux-4k", "flux-4k-conservative", "dense-check"):
        assert (tmp_path / name / "report.json").exists() and (tmp_path / name / "p0-s0.png").exists()

    # Interrupt: one preset's report is gone. The re-run regenerates only that preset (dense outputs are cached).
    (tmp_path / "flux-4k-conservative" / "report.json").unlink()
    generations = []
    real_generate = runner._generate
    monkeypatch.setattr(runner, "_generate", lambda *a: generations.append(1) or real_generate(*a))
    # ...and dense-check now fails as if the GPU ran out of memory: recorded, and the sweep goes on.
    real_apply = runner.apply

    def failing_apply(pipe, config):
        if config.family == "any":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_apply(pipe, config)

    monkeypatch.setattr(runner, "apply", failing_apply)
    (tmp_path / "dense-check" / "report.json").unlink()
    assert main(args) == 0
    rows = {r["preset"]: r for r in read(tmp_path / "summary.json")["presets"]}
    assert rows["flux-4k"]["status"] == "done (earlier run)"
    assert rows["flux-4k-conservative"]["status"] == "done"
    assert rows["dense-check"] == {"preset": "dense-check", "status": "failed", "error": "CUDA out of memory"}
    assert len(generations) == 1  # one GNA generation; no dense generation re-run

    # Other settings into the same folder: nothing stale is reused, every preset and the dense run redo.
    monkeypatch.setattr(runner, "apply", real_apply)
    generations.clear()
    assert main([*args, "--steps", "3"]) == 0  # the later --steps wins
    rows = {r["preset"]: r for r in read(tmp_path / "summary.json")["presets"]}
    assert all(r["status"] == "done" for r in rows.values())
    assert len(generations) == 1 + 3  # one dense, three presets
    assert read(tmp_path / "flux-4k" / "report.json")["settings"]["steps"] == 3


@pytest.mark.slow
def test_random_weights_mode_times_transformer_steps(tmp_path):
    assert main(["compare", "--random-weights", "--model", "tiny-hunyuan-video", "--height", "64", "--width", "64",
                 "--frames", "9", "--steps", "10", "--repeats", "2", "--output", str(tmp_path)]) == 0
    report = read(tmp_path / "report.json")
    assert report["kind"] == "random-weights" and report["grid"] == [3, 4, 4]
    (row,) = report["presets"]
    assert row["dense_step_ms"] > 0 and row["gna_step_ms"] > 0 and row["psnr"] == "n/a: random weights"
    assert row["end_to_end_estimate"]["dense_warmup_steps"] == 3  # 0.3 of 10 steps
    assert "random weights" in (tmp_path / "report.md").read_text()


def test_reports_name_a_preset_whose_name_has_a_dot_in_full(tmp_path):
    """A shipped preset's name is no file name: hunyuan-video-1.5-720p was reported as hunyuan-video-1."""
    preset = tmp_path / "my.preset.yaml"
    preset.write_text("family: hunyuan-video-1.5\nwindow: 2\n")
    for name, expected in (("hunyuan-video-1.5-720p", "hunyuan-video-1.5-720p"), (str(preset), "my.preset")):
        assert main(["compare", "--random-weights", "--model", "tiny-hunyuan-video-1.5", "--height", "64",
                     "--width", "64", "--frames", "9", "--steps", "2", "--repeats", "1", "--preset", name,
                     "--output", str(tmp_path / expected)]) == 0
        (row,) = read(tmp_path / expected / "report.json")["presets"]
        assert row["preset"] == expected


@pytest.mark.slow
def test_random_weights_mode_times_flux3_which_the_harness_cannot_build_a_pipeline_for(tmp_path, monkeypatch):
    """FLUX.3 (modular pipelines only) is timed with --random-weights; its full-size config is swapped for
    the tiny one here. Its name does not match FLUX.1's pattern."""
    from helpers import random_weights_report

    from gna_diffusers.patches import flux3

    report = random_weights_report(flux3, "some-org/FLUX.3-test", ["--height", "128", "--width", "128"], tmp_path,
                                   monkeypatch)
    assert report["model"]["family"] == "flux3" and report["grid"] == [8, 8] and report["text_tokens"] == 8
    (row,) = report["presets"]
    assert row["preset"] == "flux3-2k" and row["gna_step_ms"] > 0
    assert {layer["blocks"] for layer in row["layers"]} == {"image", "single"}


def test_compare_loads_a_saved_modular_image_pipeline(tmp_path):
    """A folder saved from a modular pipeline (FLUX's AutoBlocks on the tiny components: modular_model_index.json
    only) is loaded as one and scored on its images (Echo's video case: tests/test_ltx2.py)."""
    import diffusers.modular_pipelines

    from gna_diffusers.patches import flux

    pipe = diffusers.modular_pipelines.FluxAutoBlocks().init_pipeline()
    tiny = flux.tiny_pipeline().components
    pipe.update_components(**{name: tiny[name] for name in pipe.component_names if tiny.get(name) is not None})
    pipe.save_pretrained(str(tmp_path / "flux"), overwrite_modular_index=True)
    assert not (tmp_path / "flux" / "model_index.json").exists()
    assert main(["compare", "--model", str(tmp_path / "flux"), "--output", str(tmp_path / "out"), "--no-warmup",
                 "--height", "64", "--width", "64", "--steps", "4", "--prompt", "a red cat"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["family"] == "flux" and report["model"]["weights"] == "pretrained"
    assert len(report["samples"][0]["gna"]["transformer_call_s"]) == 4
    assert 20 < report["summary"]["psnr"] < float("inf") and report["summary"]["ssim"] > 0.5


def test_a_folder_with_no_pipeline_index_is_refused_naming_both(capsys, tmp_path):
    folder = tmp_path / "FLUX.3-dev"
    folder.mkdir()
    assert main(["compare", "--model", str(folder), "--output", str(tmp_path / "out")]) == 2
    assert ("the folder holds neither model_index.json (a pipeline) nor modular_model_index.json (a modular "
            "pipeline)") in capsys.readouterr().err


def test_full_size_transformers_are_built_on_meta_then_materialized():
    from gna_diffusers.harness.models import materialize_random, on_meta
    from gna_diffusers.patches import flux, hunyuan_video

    full_flux = on_meta(flux.PATCH.transformer_class, flux.FULL_CONFIG)
    assert sum(p.numel() for p in full_flux.parameters()) > 11e9  # the 12B FLUX.1-dev transformer
    full_hunyuan = on_meta(hunyuan_video.PATCH.transformer_class, hunyuan_video.FULL_CONFIG)
    assert len(full_hunyuan.single_transformer_blocks) == 40
    from gna_diffusers.patches import flux3

    full_flux3 = on_meta(flux3.PATCH.transformer_class, flux3.FULL_CONFIG)
    assert len(full_flux3.mode_blocks["image"]) == 5 and len(full_flux3.single_transformer_blocks) == 28
    tiny_config = dict(flux.tiny_transformer().config)
    small = materialize_random(on_meta(flux.PATCH.transformer_class, tiny_config), torch.device("cpu"), torch.float32)
    weights = torch.cat([p.flatten() for p in small.parameters()])
    assert weights.device.type == "cpu" and weights.std().item() == pytest.approx(0.02, rel=0.05)
    inputs = flux.transformer_inputs(small, (4, 4), text=3)
    with torch.no_grad():
        assert torch.isfinite(small(**inputs)[0]).all()


@pytest.mark.parametrize("family", ["sd3", "wan"])
def test_materialized_random_weights_keep_the_constructors_buffers(family):
    """Buffers are no weights: SD3's positional table and Wan's RoPE frequencies keep the values the constructor
    computes (to_empty alone would leave uninitialised memory there)."""
    from gna_diffusers.harness.models import materialize_random, on_meta
    from gna_diffusers.patches import FAMILY_MODULES

    module = FAMILY_MODULES[family]
    built = module.tiny_transformer()
    meta = on_meta(module.PATCH.transformer_class, dict(built.config))
    assert all(p.is_meta for p in meta.parameters())
    small = materialize_random(meta, torch.device("cpu"), torch.float32)
    expected = dict(built.named_buffers())
    assert expected and {name: buffer for name, buffer in small.named_buffers()}.keys() == expected.keys()
    for name, buffer in small.named_buffers():
        assert torch.equal(buffer, expected[name]), name


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_psnr_and_ssim_match_scikit_image(name):
    image = img_as_float(getattr(data, name)())[:160, :200]
    image = image[..., None] if image.ndim == 2 else image
    rng = np.random.default_rng(0)
    degraded = {
        "noise": np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1),
        "blur": (image + np.roll(image, 1, 0) + np.roll(image, 1, 1)) / 3,
        "contrast": image * 0.9 + 0.05,
    }
    for version in degraded.values():
        expected_psnr = skm.peak_signal_noise_ratio(image, version, data_range=1.0)
        assert metrics.psnr(image, version) == pytest.approx(expected_psnr, abs=1e-5)
        expected = skm.structural_similarity(image, version, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                             sigma=1.5, use_sample_covariance=False)
        assert metrics.ssim(image, version) == pytest.approx(expected, abs=1e-6)
    assert metrics.psnr(image, image) == metrics.PSNR_CAP and metrics.ssim(image, image) == pytest.approx(1.0)


def test_video_temporal_psnr_sees_motion_changes():
    rng = np.random.default_rng(0)
    video = rng.random((6, 24, 24, 3))
    still = np.repeat(video[:1], 6, axis=0)  # every frame right at frame 0, motion gone
    assert metrics.video_metrics(video, video)["temporal_psnr"] == metrics.PSNR_CAP
    frozen = metrics.video_metrics(video, still)
    # Uniform noise vs no motion: differences have variance 1/6 in a range of 2 -> 10 log10(4 / (1/6)) = 13.8 dB.
    assert frozen["temporal_psnr"] == pytest.approx(13.8, abs=0.5) and len(frozen["per_frame_psnr"]) == 6


def test_lpips_without_weights_is_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv(metrics.LPIPS_ENV, raising=False)
    assert metrics.lpips_scorer(None).startswith("skipped: no LPIPS weights (pass --lpips-weights")
    assert metrics.lpips_scorer(tmp_path).startswith("skipped: no LPIPS weights at")


@pytest.mark.parametrize(
    "args, message",
    [
        (["compare", "--model", "./no/such/folder"], "model './no/such/folder' not found: not a built-in tiny model"),
        (["compare", "--preset", "flux-9k"], "unknown preset 'flux-9k'"),
        (["compare", "--preset", "hunyuan-video-720p"], "is for family 'hunyuan-video' but tiny-flux is 'flux'"),
        (["sweep", "--presets", "flux-4k,nope"], "unknown preset 'nope'"),
        (["compare", "--random-weights", "--model", "stable-diffusion"],
         "--random-weights needs a model name that names one family"),
        (["compare", "--control-image", "/no/such.png"], "--control-image /no/such.png: no such file"),
        (["compare", "--control-video", "/no/such.mp4"], "--control-video /no/such.mp4: no such file"),
        (["compare", "--random-weights", "--model", "tiny-flux", "--call-arg", "guidance_scale=2"],
         "--call-arg needs a pipeline; --random-weights times the transformer alone"),
        (["compare", "--device", "cuda"] if not torch.cuda.is_available() else ["compare", "--prompts", "/no/file"],
         "CUDA is not available" if not torch.cuda.is_available() else "cannot read --prompts file"),
    ],
)
def test_errors_are_one_clear_line(capsys, tmp_path, args, message):
    assert main([*args, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "report.json").exists()


def test_control_videos_are_read_back_frame_by_frame(tmp_path):
    """media.read_frames reads what write_mp4 writes (H.264: lossy, so close, not equal; GIFs: test_cosmos's compare);
    a file that is no video is refused by name."""
    from gna_diffusers.harness import media

    ramp = np.linspace(0, 255, 9 * 32 * 32 * 3).reshape(9, 32, 32, 3).astype(np.uint8)
    if media.mp4_unavailable() is None:
        frames = media.read_frames(media.write_mp4(tmp_path / "ramp.mp4", ramp))
        assert frames.shape == ramp.shape and np.abs(frames.astype(float) - ramp).mean() < 8
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="notes.mp4: not a readable video"):
        media.read_frames(tmp_path / "notes.mp4")


@pytest.mark.parametrize("flag", [["--steps", "0"], ["--seeds", "a"], ["--dtype", "float8"], ["--height", "-5"],
                                  ["--call-arg", "guidance_scale"], ["--call-arg", "2x=1"],
                                  ["--call-arg", "size=[1, 2"]])
def test_bad_flag_values_exit_with_usage(capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *flag])
    assert exit_info.value.code == 2 and "error: argument" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_runs_a_controlnet_pipeline_from_a_local_folder(tmp_path, capsys):
    """A ControlNet pipeline (here a saved tiny FluxControlNetPipeline) takes its control image from
    --control-image; without one, or given to a pipeline that takes none, the run stops with one clear line."""
    from diffusers import FluxControlNetModel, FluxControlNetPipeline
    from PIL import Image

    from gna_diffusers.patches import flux

    parts = flux.tiny_pipeline().components
    config = parts["transformer"].config
    controlnet = FluxControlNetModel.from_transformer(parts["transformer"], num_layers=1, num_single_layers=1,
                                                      attention_head_dim=config.attention_head_dim,
                                                      num_attention_heads=config.num_attention_heads)
    FluxControlNetPipeline(controlnet=controlnet, **parts).save_pretrained(tmp_path / "pipe")
    Image.new("RGB", (32, 32), (90, 30, 200)).save(tmp_path / "control.png")
    common = ["--model", str(tmp_path / "pipe"), "--height", "32", "--width", "32", "--steps", "2", "--prompt",
              "a red cat", "--no-warmup", "--preset", "flux-2k"]
    assert main(["compare", *common, "--control-image", str(tmp_path / "control.png"),
                 "--output", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["settings"]["control_image_sha1"] and report["samples"][0]["metrics"]["psnr"] is not None
    assert "control image: `" in (tmp_path / "run" / "report.md").read_text()
    assert main(["compare", *common, "--output", str(tmp_path / "none")]) == 2
    assert "is a ControlNet pipeline (FluxControlNetPipeline): give its control image" in capsys.readouterr().err
    assert main(["compare", "--control-image", str(tmp_path / "control.png"), "--output", str(tmp_path / "t")]) == 2
    assert "FluxPipeline takes no control image" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_reads_file_call_arguments_as_images(tmp_path):
    """A saved tiny FluxFillPipeline takes its image from --image and its mask from --call-arg mask_image=@PATH (a
    PNG read as an RGB image); the mask file's digest is part of what the report records."""
    from diffusers import FluxFillPipeline
    from PIL import Image

    from gna_diffusers.patches import flux

    torch.manual_seed(0)
    plain = flux.tiny_transformer()
    transformer = type(plain).from_config(plain.config, in_channels=24, out_channels=4).eval()  # latents, image, mask
    parts = {name: part for name, part in flux.tiny_pipeline().components.items()
             if name not in ("transformer", "image_encoder", "feature_extractor")}
    FluxFillPipeline(transformer=transformer, **parts).save_pretrained(tmp_path / "fill")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    Image.fromarray(np.where(pixels[..., :1] > 127, 255, 0).repeat(3, -1).astype(np.uint8)).save(tmp_path / "mask.png")
    assert main(["compare", "--model", str(tmp_path / "fill"), "--height", "32", "--width", "32", "--steps", "2",
                 "--prompt", "a red cat", "--no-warmup", "--preset", "flux-2k", "--image", str(tmp_path / "photo.png"),
                 "--call-arg", f"mask_image=@{tmp_path / 'mask.png'}", "--output", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert list(report["settings"]["call_args_sha1"]) == ["mask_image"]
    assert report["samples"][0]["metrics"]["psnr"] is not None


def test_a_pipeline_folder_loads_without_deprecated_arguments(tmp_path):
    """diffusers 0.42 deprecates from_pretrained's ``torch_dtype`` for ``dtype``: loading a model warns nothing of
    it (the examples and the README load the same way)."""
    import warnings

    from gna_diffusers.harness.models import load_pipeline
    from gna_diffusers.patches import flux

    flux.tiny_pipeline().save_pretrained(tmp_path / "FLUX.1-tiny")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*torch_dtype.*")
        model = load_pipeline(str(tmp_path / "FLUX.1-tiny"), torch.device("cpu"), torch.bfloat16)
    assert model.family.PATCH.family == "flux" and model.transformer.dtype == torch.bfloat16


@pytest.mark.slow
def test_compare_gives_an_image_conditioned_pipeline_its_input_image(tmp_path, capsys):
    """An image-to-video pipeline (here a saved tiny CogVideoXImageToVideoPipeline) takes its input image from
    --image; without one, or given to a pipeline that takes none, the run stops with one clear line."""
    from diffusers import CogVideoXImageToVideoPipeline
    from PIL import Image

    from gna_diffusers.patches import cogvideox

    transformer = cogvideox.tiny_transformer()
    wide = type(transformer).from_config({**transformer.config, "in_channels": 8}).eval()
    CogVideoXImageToVideoPipeline(transformer=wide, **cogvideox.tiny_parts()).save_pretrained(tmp_path / "pipe")
    Image.new("RGB", (32, 32), (90, 30, 200)).save(tmp_path / "first-frame.png")
    common = ["--model", str(tmp_path / "pipe"), "--height", "32", "--width", "32", "--frames", "9", "--steps", "2",
              "--prompt", "a red cat", "--no-warmup", "--preset", "cogvideox-480p"]
    assert main(["compare", *common, "--image", str(tmp_path / "first-frame.png"),
                 "--output", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["settings"]["image_sha1"] and report["samples"][0]["metrics"]["psnr"] is not None
    assert "input image: `" in (tmp_path / "run" / "report.md").read_text()
    assert main(["compare", *common, "--output", str(tmp_path / "none")]) == 2
    assert ("is an image-conditioned pipeline (CogVideoXImageToVideoPipeline): give its input image with --image"
            in capsys.readouterr().err)
    assert main(["compare", "--image", str(tmp_path / "first-frame.png"), "--output", str(tmp_path / "t")]) == 2
    assert "--image: FluxPipeline takes no input image" in capsys.readouterr().err
    assert main(["compare", "--image", "/no/such.png", "--output", str(tmp_path / "u")]) == 2
    assert "--image /no/such.png: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("backend, kernel", [("_native_math", "MATH"), ("flash", None)])
def test_dense_backend_reaches_families_that_call_sdpa_themselves(tmp_path, monkeypatch, backend, kernel):
    """diffusers' --dense-backend does not reach CogVideoX's processors (they call torch's SDPA): a native backend
    pins torch's SDPA kernel around the timed runs instead, any other says it cannot."""
    import torch.nn.attention

    pinned, calls = [], []
    real_kernel, real_sdpa = torch.nn.attention.sdpa_kernel, torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.attention, "sdpa_kernel", lambda b: pinned.append(b) or real_kernel(b))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(torch._C._get_mem_efficient_sdp_enabled()) or real_sdpa(*a, **k))
    monkeypatch.setattr("diffusers.ModelMixin.set_attention_backend", lambda self, name: None)  # flash is not installed
    args = ["compare", "--random-weights", "--model", "tiny-cogvideox", "--output", str(tmp_path), "--steps", "4",
            "--dense-backend", backend, "--repeats", "1", "--no-warmup"]
    if kernel is None:
        with pytest.warns(UserWarning, match="does not reach cogvideox's attention"):
            assert main(args) == 0
        assert pinned == [] and all(calls)
    else:
        assert main(args) == 0
        assert pinned == [getattr(torch.nn.attention.SDPBackend, kernel)] and calls and not any(calls)


@pytest.mark.parametrize("error, message", [
    (ImportError("`cosmos_guardrail` is not installed. Please install it: `pip install cosmos_guardrail`."),
     r"cannot load model 'nvidia/Cosmos3-Nano': its pipeline needs a package that is not installed: "
     r"`cosmos_guardrail` is not installed"),
    (OSError("nvidia/Cosmos3-Nano is not a local folder and is not a valid model identifier\nmore"),
     r"cannot load model 'nvidia/Cosmos3-Nano' from the hub \(or the local cache, when offline\): "
     r"nvidia/Cosmos3-Nano is not a local folder and is not a valid model identifier$"),
])
def test_a_pipeline_that_cannot_load_is_one_clear_error(error, message, monkeypatch):
    """Loading fails before any weight is used: a missing checkpoint, or a package the pipeline's own constructor
    needs (Cosmos pipelines build their guardrail unless told not to): one message naming the model and the cause."""
    from diffusers import DiffusionPipeline

    from gna_diffusers.harness.models import HarnessError, load_pipeline

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", fail)
    with pytest.raises(HarnessError, match=message):
        load_pipeline("nvidia/Cosmos3-Nano", torch.device("cpu"), torch.float32)
