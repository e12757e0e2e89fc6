"""compare / sweep: dense and GNA runs on the same prompts, seeds and steps, timed and compared.

Layout of an output folder (every file written atomically)::

    dense/<sample>-<key>.npz         dense outputs and timings, reused by every preset and by re-runs
                                     (the key fingerprints prompt, seed, model, size, steps, dtype, ...)
    <preset>/report.json, report.md  one entry per preset (compare writes its entry at the top level)
    <preset>/<sample>.png            dense | sparse | amplified difference (videos: .mp4 + strip .png)
    summary.json, summary.md, quality_vs_speed.png   (sweep)

A sweep skips presets whose report.json was made with the same settings, so an interrupted sweep re-run
finishes the rest, and a re-run with other settings redoes everything. A
preset that fails (e.g. CUDA out of memory) is recorded with its error and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import gna_diffusers
from gna_diffusers import GNAConfig, apply
from gna_diffusers.config import dense_step_count
from gna_diffusers.files import atomic_write_json
from gna_diffusers.presets import resolve_preset

from . import media, metrics
from .models import TINY_MODELS, HarnessError, Model, is_modular, load_pipeline, pipeline_inputs, random_transformer
from .report import entry_markdown, summary_markdown, write_markdown

SCHEMA_VERSION = 1
DEFAULT_PROMPTS = ("a lighthouse on a rocky cliff at sunrise", "a red fox in fresh snow, close-up")
# Sizes for the built-in tiny models, small enough for a CPU: 128 px -> a 32x32 token grid (their VAEs
# downsample 2x / 4x), 9 frames -> 3 latent frames.
TINY_DEFAULTS = dict(height=128, width=128, frames=9, steps=4)
CONSTANT_OUTPUT = ("the dense output is one constant colour, so the quality metrics compare nothing; the pipeline's "
                   "VAE may not decode this size: raise --height / --width / --frames")


@dataclass
class Settings:
    """Everything a run depends on; recorded in every report."""

    model: str = "tiny-flux"
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int | None = None
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    output: str = "runs/compare"
    dense_backend: str | None = None  # diffusers attention backend pinned for the dense paths
    lpips_weights: str | None = None
    random_weights: bool = False
    repeats: int = 5  # timed transformer steps per mode in random-weights mode
    warmup: bool = True
    control_image: str | None = None  # image file a ControlNet pipeline takes as its control_image
    control_image_sha1: str | None = None  # its content, so a changed file invalidates cached outputs
    image: str | None = None  # image file an image-conditioned pipeline takes as its image (image-to-video, edit)
    image_sha1: str | None = None
    control_video: str | None = None  # video file a ControlNet pipeline takes as its control video (Cosmos Transfer)
    control_video_sha1: str | None = None
    video: str | None = None  # video file a video-to-video pipeline takes as its video (Lucy Edit, SkyReels-V2 V2V)
    video_sha1: str | None = None
    call_args: dict = field(default_factory=dict)  # further pipeline call arguments (--call-arg NAME=VALUE)
    call_args_sha1: dict = field(default_factory=dict)  # the content of each file one names (NAME=@PATH)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def environment(device: torch.device) -> dict:
    import diffusers
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
        "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "gna_diffusers": gna_diffusers.__version__, "cuda": torch.version.cuda,
    }


def gna_backend(model: Model, settings: Settings, device: torch.device) -> dict:
    """The GNA backend ``auto`` takes for this model's attention on ``device`` in the run's dtype, and why each backend
    it tries before that one cannot run (triton not importable on a GPU: the GNA timings are then flex's)."""
    head_dim = model.transformer.config.get("attention_head_dim")
    reasons, picked = gna_diffusers.backend_support(device, settings.torch_dtype,
                                                    head_dim if isinstance(head_dim, int) else 128)
    tried_first = itertools.takewhile(lambda name: name != picked, reasons)  # all of them when none can run
    return {"auto": picked, "skipped": {name: reasons[name] for name in tried_first}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TransformerTimer:
    """Wall time of every transformer forward (CUDA-synchronised), via forward hooks."""

    def __init__(self, transformer: torch.nn.Module, device: torch.device):
        self.device = device
        self.calls: list[float] = []
        self._start = 0.0
        self._handles = [
            transformer.register_forward_pre_hook(self._before),
            transformer.register_forward_hook(self._after),
        ]

    def _before(self, *_):
        _sync(self.device)
        self._start = time.perf_counter()

    def _after(self, *_):
        _sync(self.device)
        self.calls.append(time.perf_counter() - self._start)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class Sample:
    prompt_index: int
    prompt: str
    seed: int

    @property
    def id(self) -> str:
        return f"p{self.prompt_index}-s{self.seed}"


def _read_input_files(settings: Settings) -> Settings:
    """The settings with the content digests of ``--image``, ``--control-image``, ``--control-video`` and ``--video``;
    a HarnessError when a file is missing or there is no pipeline to take it (nor ``--call-arg``)."""
    if settings.call_args and settings.random_weights:
        raise HarnessError("--call-arg needs a pipeline; --random-weights times the transformer alone")
    digests = {}
    for name, value in settings.call_args.items():
        if _file_argument(value):
            path = Path(value[1:]).expanduser()
            if not path.is_file():
                raise HarnessError(f"--call-arg {name}={value}: no such file")
            digests[name] = hashlib.sha1(path.read_bytes()).hexdigest()
    settings = replace(settings, call_args_sha1=digests)
    for name in ("image", "control_image", "control_video", "video"):
        value = getattr(settings, name)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        path = Path(value).expanduser()
        if not path.is_file():
            raise HarnessError(f"{flag} {value}: no such file")
        if settings.random_weights:
            raise HarnessError(f"{flag} needs a pipeline; --random-weights times the transformer alone")
        settings = replace(settings, **{f"{name}_sha1": hashlib.sha1(path.read_bytes()).hexdigest()})
    return settings


@functools.lru_cache(maxsize=4)
def _load_image(path: str, mode: str = "RGB"):
    from PIL import Image

    try:
        with Image.open(Path(path).expanduser()) as image:
            return image.convert(mode)
    except OSError as error:  # PIL's UnidentifiedImageError is one
        raise HarnessError(f"{path}: not a readable image ({error})") from error


@functools.lru_cache(maxsize=2)
def _load_video(path: str, flag: str) -> list:
    """A video file's frames as RGB PIL images (a pipeline's video input); ``flag`` names it in errors."""
    from PIL import Image

    try:
        frames = media.read_frames(Path(path).expanduser())
    except ValueError as error:
        raise HarnessError(f"{flag} {error}") from error
    return [Image.fromarray(frame) for frame in frames]


# Pipeline arguments compare sets itself -> the flag that sets them (None: not the user's to set).
_HARNESS_ARGUMENTS = {"prompt": "--prompt", "generator": "--seeds", "height": "--height", "width": "--width",
                      "num_inference_steps": "--steps", "num_frames": "--frames", "image": "--image",
                      "video": "--video", "control_image": "--control-image", "controls": "--control-video",
                      "output_type": None, "return_dict": None, "output": None}


# Video settings -> (the pipeline argument taking the frames, what it is, for errors).
_VIDEO_INPUTS = {"control_video": ("controls", "control video (Cosmos Transfer's pipeline does)"),
                 "video": ("video", "input video (a video-to-video or video editing pipeline does)")}
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")  # --call-arg NAME=@PATH files read as videos


def _file_argument(value) -> bool:
    """Whether a --call-arg value names a file (``@PATH``)."""
    return isinstance(value, str) and value.startswith("@") and len(value) > 1


def _call_args(call_args: dict, parameters: dict, pipeline: str) -> dict:
    """The --call-arg arguments checked against the pipeline's call, ``@PATH`` values read: a video file (by its
    suffix) as a list of RGB frames, any other as an RGB image."""
    resolved = {}
    for name, value in call_args.items():
        if name in _HARNESS_ARGUMENTS:
            flag = _HARNESS_ARGUMENTS[name]
            raise HarnessError(f"--call-arg {name}: compare sets {name} itself" + (f"; use {flag}" if flag else ""))
        if name not in parameters:
            raise HarnessError(f"--call-arg {name}: {pipeline} takes no {name}")
        if _file_argument(value):
            video = value.lower().endswith(VIDEO_SUFFIXES)
            value = _load_video(value[1:], f"--call-arg {name}:") if video else _load_image(value[1:])
        resolved[name] = value
    return resolved


def _call_kwargs(model: Model, settings: Settings) -> dict:
    kwargs = model.family.tiny_call_kwargs() if model.tiny else {}
    pipeline = type(model.pipeline).__name__
    parameters = pipeline_inputs(model.pipeline)  # name -> required
    takes_control = "control_image" in parameters
    if settings.control_image is not None:
        if not takes_control:
            raise HarnessError(f"--control-image: {pipeline} takes no control image (a ControlNet pipeline does)")
        kwargs["control_image"] = _load_image(settings.control_image)
    elif takes_control and getattr(model.pipeline, "controlnet", None) is not None:
        raise HarnessError(f"model {settings.model!r} is a ControlNet pipeline ({pipeline}): give its control image "
                           f"with --control-image PATH")
    for setting, (argument, what) in _VIDEO_INPUTS.items():
        path, flag = getattr(settings, setting), "--" + setting.replace("_", "-")
        if path is not None:
            if argument not in parameters:
                raise HarnessError(f"{flag}: {pipeline} takes no {what}")
            kwargs[argument] = _load_video(path, flag)
    if settings.image is not None:
        if "image" not in parameters:
            raise HarnessError(f"--image: {pipeline} takes no input image (an image-to-video, editing or refining "
                               f"pipeline does)")
        # RGB unless the family says the pipeline decomposes an image with its alpha (Qwen-Image-Layered: RGBA).
        kwargs["image"] = _load_image(settings.image, "RGBA" if pipeline in getattr(model.family, "RGBA_PIPELINES", ())
                                      else "RGB")
    elif "image" in parameters and "image" not in kwargs and (
            parameters["image"] or pipeline in getattr(model.family, "IMAGE_PIPELINES", ())):
        raise HarnessError(f"model {settings.model!r} is an image-conditioned pipeline ({pipeline}): give its input "
                           f"image with --image PATH")
    requested = {"height": settings.height, "width": settings.width, "num_inference_steps": settings.steps,
                 "num_frames": settings.frames if model.family.PATCH.video else None}
    for name, value in requested.items():
        if value is None:
            continue
        if name not in parameters:  # Echo's loop walks its own sigmas; Wan Animate's pose video sets the frames
            flag = "--steps" if name == "num_inference_steps" else f"--{name.removeprefix('num_')}"
            warnings.warn(f"gna-diffusers: {pipeline} takes no {name}: {flag} is ignored", stacklevel=2)
            continue
        kwargs[name] = value
    # A family whose pipeline ties other arguments to the step count (Ideogram 4's guidance schedule) says them.
    kwargs.update(getattr(model.family, "steps_call_kwargs", lambda steps: {})(settings.steps))
    kwargs.update(_call_args(settings.call_args, parameters, pipeline))
    # A family whose pipeline needs arguments compare has no flag for gives defaults (SANA-WM's camera path).
    kwargs = {**getattr(model.family, "default_call_kwargs", lambda kwargs: {})(kwargs), **kwargs}
    # A DiffusionPipeline's call parameters without a default (a modular pipeline's blocks check their own inputs:
    # their flags are no guide, Echo's marks the sigmas its loop makes itself as required).
    missing = [] if is_modular(model.pipeline) else [
        name for name, required in parameters.items() if required and name not in kwargs and name != "prompt"]
    if missing:
        flags = {"controls": "--control-video PATH", "video": "--video PATH"}
        give = ", ".join(flags.get(name, f"--call-arg {name}=VALUE (a file: {name}=@PATH)") for name in missing)
        raise HarnessError(f"model {settings.model!r}: {pipeline} requires {', '.join(missing)}: give {give}")
    return kwargs


def run_pipeline(model: Model, prompt: str, generator: torch.Generator, output_type: str, **kwargs):
    """One call of the model's pipeline: a DiffusionPipeline's output object, or a modular pipeline's batch of
    ``videos`` / ``images`` (``latents`` for output_type "latent"). A modular pipeline is given only the inputs its
    blocks take: what it does not take is left out (Echo's loop walks its own sigmas, not a step count)."""
    if not is_modular(model.pipeline):
        return model.pipeline(prompt=prompt, generator=generator, output_type=output_type, **kwargs)
    accepted = pipeline_inputs(model.pipeline)
    kwargs = {name: value for name, value in dict(kwargs, prompt=prompt, generator=generator).items()
              if name in accepted}
    if output_type == "latent":
        return model.pipeline(**kwargs, output="latents")
    return model.pipeline(**kwargs, output_type=output_type, output="videos" if model.family.PATCH.video else "images")


def pipeline_output(family, result):
    """The one sample a harness call generated: ``.frames[0]`` of a video pipeline, ``.images[0]`` of an image one,
    or what the family's ``pipeline_output(result)`` says (Cosmos 3's unbatched ``.video``)."""
    if hasattr(family, "pipeline_output"):
        return family.pipeline_output(result)
    return result.frames[0] if family.PATCH.video else result.images[0]


def _generate(model: Model, settings: Settings, sample: Sample, device: torch.device) -> tuple[np.ndarray, dict]:
    """One pipeline call; returns the output as float32 in [0, 1] ((H, W, C) or (F, H, W, C)) and timings."""
    generator = torch.Generator(device="cpu").manual_seed(sample.seed)
    timer = TransformerTimer(model.transformer, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    try:
        result = run_pipeline(model, sample.prompt, generator, "np", **_call_kwargs(model, settings))
        _sync(device)
    finally:
        timer.close()
    wall = time.perf_counter() - start
    output = result[0] if is_modular(model.pipeline) else pipeline_output(model.family, result)
    timings = {
        "wall_s": wall,
        "transformer_s": sum(timer.calls),
        "transformer_call_s": timer.calls,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    return np.asarray(output, dtype=np.float32), timings


# Settings that change a generated output; a cached dense output or a finished preset is reused only
# when all of them match.
OUTPUT_SETTINGS = ("model", "steps", "height", "width", "frames", "device", "dtype", "dense_backend", "control_image",
                   "control_image_sha1", "image", "image_sha1", "control_video", "control_video_sha1", "video",
                   "video_sha1", "call_args", "call_args_sha1")


def _fingerprint(settings: Settings, sample: Sample) -> str:
    fields = {name: getattr(settings, name) for name in OUTPUT_SETTINGS}
    text = json.dumps({**fields, "prompt": sample.prompt, "seed": sample.seed}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _dense_run(model, settings, sample, device, folder: Path) -> tuple[np.ndarray, dict]:
    """The dense output of a sample, from the cache in ``folder`` when a run with the same prompt, seed
    and output settings made it."""
    path = folder / f"{sample.id}-{_fingerprint(settings, sample)}.npz"
    if path.exists():
        with np.load(path) as stored:
            return stored["output"], json.loads(str(stored["timings"]))
    output, timings = _generate(model, settings, sample, device)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, output=output, timings=json.dumps(timings))
    tmp.replace(path)
    return output, timings


def _speedup(dense: dict, sparse: dict) -> dict:
    return {
        "wall": dense["wall_s"] / sparse["wall_s"],
        "transformer": dense["transformer_s"] / sparse["transformer_s"],
    }


def _mean(values):
    numbers = [v for v in values if isinstance(v, (int, float)) and v is not None]
    return float(np.mean(numbers)) if numbers else (values[0] if values else None)


def _preset_name(preset) -> str:
    """A shipped preset's name as it is (``hunyuan-video-1.5-720p`` has no file suffix), a YAML file's stem."""
    if not isinstance(preset, (str, Path)):
        return "custom"
    path = Path(preset)
    return path.stem if path.suffix in (".yaml", ".yml") else path.name


def _ulysses_degree(transformer: torch.nn.Module) -> int:
    context = getattr(getattr(transformer, "_parallel_config", None), "context_parallel_config", None)
    return 1 if context is None else context.ulysses_degree


def _base(settings: Settings, model: Model, device: torch.device, kind: str, lpips=None) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(device),
        "settings": asdict(settings),
        "model": {"name": model.name, "family": model.family.PATCH.family,
                  "transformer": type(model.transformer).__name__, "weights": model.weights,
                  "unscored": getattr(model.family, "UNSCORED", None)},
        "dense_backend": settings.dense_backend or "diffusers default",
        "gna_backend": gna_backend(model, settings, device),
        "ulysses_degree": _ulysses_degree(model.transformer),
        "lpips": None if lpips is None else (lpips if isinstance(lpips, str) else "available"),
    }


def run_entry(model, settings, preset_name: str, config: GNAConfig, samples, device, folder: Path, dense_dir: Path,
              lpips) -> dict:
    """Dense (cached) and GNA runs of every sample with one preset; writes the entry's files and reports."""
    rows = []
    for sample in tqdm(samples, desc=preset_name, leave=False, disable=len(samples) < 2):
        dense, dense_timings = _dense_run(model, settings, sample, device, dense_dir)
        handle = apply(model.pipeline, config)
        try:
            sparse, sparse_timings = _generate(model, settings, sample, device)
            layers = handle.resolved_layers()
        finally:
            handle.remove()
        # Frames: a video's, or the layers of an image family's pipeline (Qwen-Image-Layered), which have no time axis.
        frames, video = dense.ndim == 4, model.family.PATCH.video
        measure = metrics.video_metrics if video else metrics.frames_metrics if frames else metrics.image_metrics
        quality = measure(dense, sparse, lpips)
        if not model.has_quality:
            quality["note"] = "random weights: the numbers check the machinery, not image quality"
        if float(dense.max()) == float(dense.min()):
            limit = getattr(model.family, "DECODE_LIMIT", None)  # what the family's VAE decodes, where it says
            quality["note"] = CONSTANT_OUTPUT + (f" ({limit})" if limit else "")
            warnings.warn(f"gna-diffusers compare: {sample.id}: {quality['note']}", stacklevel=2)
        files = {}
        if frames:
            files["strip"] = media.write_png(folder / f"{sample.id}.png", media.frame_strip(dense, sparse)).name
        else:
            files["side_by_side"] = media.write_png(folder / f"{sample.id}.png", media.side_by_side(dense, sparse)).name
        if video:
            no_mp4 = media.mp4_unavailable()
            if no_mp4 is None:
                files["dense_video"] = media.write_mp4(folder / f"{sample.id}-dense.mp4", media.to_uint8(dense)).name
                files["sparse_video"] = media.write_mp4(folder / f"{sample.id}-gna.mp4", media.to_uint8(sparse)).name
            else:  # the comparison still stands: metrics and the frame strip need no encoder
                warnings.warn(f"gna-diffusers compare: {no_mp4}; the frame strip PNG shows the videos", stacklevel=2)
        rows.append({"sample": sample.id, "prompt": sample.prompt, "seed": sample.seed, "dense": dense_timings,
                     "gna": sparse_timings, "speedup": _speedup(dense_timings, sparse_timings), "metrics": quality,
                     "files": files})
    report = {
        "preset": {"name": preset_name, "config": config.model_dump(mode="json"), "layers": layers},
        "samples": rows,
        "summary": {
            "speedup_wall": _mean([r["speedup"]["wall"] for r in rows]),
            "speedup_transformer": _mean([r["speedup"]["transformer"] for r in rows]),
            **{k: _mean([r["metrics"][k] for r in rows]) for k in rows[0]["metrics"]
               if k not in ("per_frame_psnr", "note")},
        },
    }
    return report


def _finished_entry(report_path: Path, settings: Settings, config: GNAConfig) -> dict | None:
    """The earlier report of this preset if it was made with the same prompts, seeds, output settings
    and preset config; else None (the preset runs again and its report is replaced)."""
    if not report_path.exists():
        return None
    try:
        report = json.loads(report_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    earlier = report.get("settings", {})
    same = all(earlier.get(name) == getattr(settings, name) for name in (*OUTPUT_SETTINGS, "prompts", "seeds"))
    return report if same and report["preset"]["config"] == config.model_dump(mode="json") else None


def _warm_up(model, settings, config, sample, device) -> None:
    """One dense and one GNA generation, untimed: compilation, kernel tuning and caches happen here."""
    _generate(model, settings, sample, device)
    with gna_diffusers.enabled(model.pipeline, config):
        _generate(model, settings, sample, device)


def _check_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError("CUDA is not available on this machine; use --device cpu")
    return device


def _resolve_presets(presets, model: Model, single: bool) -> list[tuple[str, GNAConfig]]:
    """Validate every preset before anything runs: a typo fails fast, not after an hour of dense runs.
    No presets: compare uses the family's default preset (or the one the family names for the loaded pipeline's
    class: Echo's, Anima's, a refiner's), sweep every shipped preset of the family plus dense-check."""
    if not presets:
        family = model.family.PATCH.family
        pipeline = type(model.pipeline).__name__ if model.pipeline is not None else None  # None: random weights
        default = getattr(model.family, "PIPELINE_PRESETS", {}).get(pipeline, model.family.DEFAULT_PRESET)
        presets = [default] if single else [
            name for name in gna_diffusers.list_presets() if gna_diffusers.load_preset(name).family in (family, "any")
        ]
    resolved = []
    for preset in presets:
        config = resolve_preset(preset)
        if config.family not in (model.family.PATCH.family, "any"):
            raise HarnessError(
                f"preset {_preset_name(preset)!r} is for family {config.family!r} but {model.name} is "
                f"{model.family.PATCH.family!r}"
            )
        resolved.append((_preset_name(preset), config))
    return resolved


def _apply_tiny_defaults(settings: Settings, model_name: str) -> Settings:
    if model_name in TINY_MODELS:
        # A family whose tiny model needs other sizes (a VAE downsampling 16x, a frame count of the form 6k + 1)
        # says them in TINY_SIZE.
        for name, value in {**TINY_DEFAULTS, **getattr(TINY_MODELS[model_name], "TINY_SIZE", {})}.items():
            if getattr(settings, name) is None:
                setattr(settings, name, value)
    return settings


def launched_ranks() -> tuple[int, int]:
    """(rank, world size) of a ``torchrun`` launch, or (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _distribute(settings: Settings) -> tempfile.TemporaryDirectory | None:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group, take this rank's GPU, and send every rank
    but 0 to a scratch output folder (all ranks generate together; rank 0 writes the report). Returns the
    scratch folder to clean up, or None."""
    rank, world = launched_ranks()
    if world == 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available() and settings.device.startswith("cuda"):
        settings.device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        torch.cuda.set_device(settings.device)
    if rank == 0:
        return None
    scratch = tempfile.TemporaryDirectory(prefix=f"gna-rank{rank}-")
    settings.output = scratch.name
    return scratch


def _parallelize(model: Model) -> None:
    """Shard attention over the launched ranks with diffusers' Ulysses context parallelism (with the
    family's own plan where diffusers ships none, e.g. HunyuanVideo)."""
    _, world = launched_ranks()
    if world > 1:
        from diffusers import ContextParallelConfig

        plan = model.family.PATCH.parallel_plan
        cp_plan = plan(model.transformer, world) if plan and model.transformer._cp_plan is None else None
        model.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world), cp_plan=cp_plan)


def sweep(settings: Settings, presets, *, single: bool = False) -> dict:
    """Run every preset against the shared dense runs; ``single`` (compare) writes the entry at the top.
    Under ``torchrun`` every rank runs the generations with the transformer sharded (Ulysses) and rank 0
    writes the reports."""
    settings = _read_input_files(_apply_tiny_defaults(settings, settings.model))
    scratch = _distribute(settings)
    try:
        device = _check_device(settings.device)
        if settings.random_weights:
            return random_weights_sweep(settings, presets, device, single=single)
        return _pipeline_sweep(settings, presets, device, single=single)
    finally:
        if scratch is not None:
            scratch.cleanup()


def _compile_if_needed(model: Model, device: torch.device) -> None:
    """Stock attention that fits only compiled (Wan Animate 2's flex BlockMask) has the transformer's blocks compiled
    on a GPU, as diffusers tells its users: dense and GNA are then both timed compiled."""
    if device.type == "cuda" and getattr(model.family, "COMPILED_TO_RUN", None):
        model.transformer.compile_repeated_blocks()


def _pipeline_sweep(settings: Settings, presets, device: torch.device, *, single: bool) -> dict:
    output = Path(settings.output)
    model = load_pipeline(settings.model, device, settings.torch_dtype)
    _parallelize(model)
    _compile_if_needed(model, device)
    entries = _resolve_presets(presets, model, single)
    with _dense_backend(model, settings):
        return _pipeline_entries(settings, model, entries, output, device, single)


def _pipeline_entries(settings: Settings, model: Model, entries, output: Path, device: torch.device,
                      single: bool) -> dict:
    samples = [Sample(i, prompt, seed) for i, prompt in enumerate(settings.prompts) for seed in settings.seeds]
    lpips = metrics.lpips_scorer(settings.lpips_weights)
    model.pipeline.set_progress_bar_config(leave=False, disable=model.tiny)  # tiny runs take a second
    if settings.warmup:
        _warm_up(model, settings, entries[0][1], samples[0], device)
    summary_rows = []
    for name, config in tqdm(entries, desc="presets", disable=single):
        folder = output if single else output / name
        report_path = folder / "report.json"
        earlier = _finished_entry(report_path, settings, config) if not single else None
        if earlier is not None:
            summary_rows.append({"preset": name, "status": "done (earlier run)", **earlier["summary"]})
            continue
        try:
            entry = run_entry(model, settings, name, config, samples, device, folder, output / "dense", lpips)
        except torch.cuda.OutOfMemoryError:
            if single:
                raise HarnessError("CUDA out of memory: lower --height / --width / --frames, or use a larger "
                                   "GPU") from None
            summary_rows.append({"preset": name, "status": "failed", "error": "CUDA out of memory"})
            continue
        except (RuntimeError, ValueError) as error:
            if single:
                raise
            summary_rows.append({"preset": name, "status": "failed", "error": f"{type(error).__name__}: {error}"})
            continue
        report = {**_base(settings, model, device, "compare", lpips), **entry}
        atomic_write_json(report_path, report)
        write_markdown(folder / "report.md", entry_markdown(report))
        summary_rows.append({"preset": name, "status": "done", **entry["summary"]})
    if single:
        return report
    return _write_summary(settings, model, device, output, summary_rows, lpips)


def _write_summary(settings, model, device, output: Path, rows: list[dict], lpips) -> dict:
    from .report import quality_vs_speed_plot

    summary = {**_base(settings, model, device, "sweep", lpips), "presets": rows}
    atomic_write_json(output / "summary.json", summary)
    plot = quality_vs_speed_plot(rows, output / "quality_vs_speed.png")
    write_markdown(output / "summary.md", summary_markdown(summary, plot))
    return summary


# diffusers' native SDPA backends -> torch's SDPA kernel, for the families whose processors call
# F.scaled_dot_product_attention themselves, which diffusers' backend setting does not reach.
_SDPA_KERNELS = {"_native_cudnn": "CUDNN_ATTENTION", "_native_flash": "FLASH_ATTENTION",
                 "_native_efficient": "EFFICIENT_ATTENTION", "_native_math": "MATH"}


def _dense_backend(model: Model, settings: Settings) -> contextlib.AbstractContextManager:
    """Pin ``settings.dense_backend`` for the dense attention of the runs inside: diffusers' backend setting, and,
    for a family whose processors call torch's SDPA directly (CogVideoX, Mochi, ...), torch's SDPA kernel."""
    if not settings.dense_backend:
        return contextlib.nullcontext()
    model.transformer.set_attention_backend(settings.dense_backend)
    if not model.family.PATCH.calls_sdpa or settings.dense_backend == "native":
        return contextlib.nullcontext()
    kernel = _SDPA_KERNELS.get(settings.dense_backend)
    if kernel is None:
        warnings.warn(f"gna-diffusers: --dense-backend {settings.dense_backend} does not reach "
                      f"{model.family.PATCH.family}'s attention, which calls torch's SDPA itself; torch picks its SDPA "
                      f"kernel (one of {', '.join(_SDPA_KERNELS)} would pin it)", stacklevel=3)
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, kernel))


def random_weights_sweep(settings: Settings, presets, device: torch.device, *, single: bool) -> dict:
    """Speed only: transformer steps of a random-weight model at the requested size, dense vs each preset."""
    model = random_transformer(settings.model, device, settings.torch_dtype)
    _parallelize(model)
    _compile_if_needed(model, device)
    entries = _resolve_presets(presets, model, single)
    with _dense_backend(model, settings):
        return _random_weights_entries(settings, model, entries, device, single)


def _random_weights_entries(settings: Settings, model: Model, entries, device: torch.device, single: bool) -> dict:
    family = model.family
    height, width = settings.height or 1024, settings.width or 1024
    grid = model.latent_grid(height, width, settings.frames if family.PATCH.video else None)
    # A family whose variants pad their prompts differently says per model name (HunyuanImage's refiner: 256).
    text = 8 if model.tiny else getattr(family, "text_tokens", lambda name: family.TEXT_TOKENS)(model.name)
    inputs = family.transformer_inputs(model.transformer, grid, text=text, device=device, dtype=settings.torch_dtype)
    def time_steps(count: int) -> list[float]:
        timer = TransformerTimer(model.transformer, device)
        try:
            with torch.no_grad():
                for _ in range(count):
                    model.transformer(**inputs)
        finally:
            timer.close()
        return timer.calls

    def peak_gib() -> float | None:
        return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    warmup = 1 if settings.warmup else 0
    time_steps(warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dense_steps = time_steps(settings.repeats)
    dense_ms = statistics.median(dense_steps) * 1e3
    dense_peak = peak_gib()
    rows = []
    for name, config in entries:
        per_step = config.model_copy(update={"dense_steps": 0})  # every timed call is a sparse step
        with gna_diffusers.enabled(model.transformer, per_step) as handle:
            time_steps(warmup)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sparse_ms = statistics.median(time_steps(settings.repeats)) * 1e3
            sparse_peak = peak_gib()
            layers = handle.resolved_layers()
        schedule_steps = settings.steps or family.DEFAULT_STEPS
        warm = dense_step_count(config, schedule_steps)
        estimate = schedule_steps * dense_ms / (warm * dense_ms + (schedule_steps - warm) * sparse_ms)
        rows.append({"preset": name, "status": "done", "config": config.model_dump(mode="json"), "layers": layers,
                     "dense_step_ms": dense_ms, "gna_step_ms": sparse_ms, "speedup_transformer": dense_ms / sparse_ms,
                     "peak_memory_gib": {"dense": dense_peak, "gna": sparse_peak},
                     "end_to_end_estimate": {"steps": schedule_steps, "dense_warmup_steps": warm,
                                             "speedup": estimate},
                     "psnr": "n/a: random weights", "ssim": "n/a: random weights"})
    report = {**_base(settings, model, device, "random-weights"), "grid": list(grid), "text_tokens": text,
              "timed_steps": settings.repeats, "dense_step_ms_all": [t * 1e3 for t in dense_steps], "presets": rows}
    output = Path(settings.output)
    atomic_write_json(output / ("report.json" if single else "summary.json"), report)
    from .report import random_weights_markdown

    write_markdown(output / ("report.md" if single else "summary.md"), random_weights_markdown(report))
    return report
