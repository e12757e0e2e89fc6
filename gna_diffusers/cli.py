"""The ``gna-diffusers`` command line: one console script with sub-commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from .config import ConfigError, expand_per_dim, load_config
from .presets import list_presets, load_preset, preset_text
from .sim import PAPER_CONFIGS, SimResult, simulate


def int_tuple(text: str) -> tuple[int, ...]:
    """Parse ``"30,48,80"`` (or ``"16"``) into a tuple of ints."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (e.g. 0,1,2), got {text!r}") from None


def bool_tuple(text: str) -> tuple[bool, ...]:
    """Parse ``"1,0,0"`` / ``"true,false"`` into a tuple of bools."""
    table = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    try:
        return tuple(table[part.strip().lower()] for part in text.split(","))
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected comma-separated booleans such as 1,0,0, got {text!r}") from None


def _one_or_all(value: tuple):
    """A one-entry tuple applies to every dimension."""
    return value[0] if len(value) == 1 else value


def _fmt(values: Sequence) -> str:
    return "x".join(str(int(v)) for v in values)


def sim_table(rows: Sequence[tuple[str, SimResult]]) -> str:
    headers = ["config", "grid", "window", "stride", "Q tile", "KV tile", "density", "FLOP bound",
               "tile bound", "full", "partial", "empty", "block-sparse"]
    body = [
        [
            name,
            _fmt(r.spec.grid),
            _fmt(r.spec.window),
            _fmt(r.spec.stride),
            _fmt(r.q_tile),
            _fmt(r.kv_tile),
            f"{r.density:.4f}",
            f"{r.flop_bound:.2f}x",
            f"{r.tile_bound:.2f}x",
            r.full_pairs,
            r.partial_pairs,
            r.empty_pairs,
            "yes" if r.perfectly_block_sparse else "no",
        ]
        for name, r in rows
    ]
    return tabulate(body, headers=headers, tablefmt="github")


def _cmd_sim(args: argparse.Namespace) -> int:
    if args.paper:
        rows = [(c.name, c.simulate()) for c in PAPER_CONFIGS]
    else:
        if args.grid is None or args.window is None:
            raise ValueError("sim needs --grid and --window (or --paper for the published configurations)")
        result = simulate(
            args.grid,
            _one_or_all(args.window),
            _one_or_all(args.stride),
            _one_or_all(args.dilation),
            _one_or_all(args.causal),
            q_tile=_one_or_all(args.q_tile),
            kv_tile=_one_or_all(args.kv_tile),
        )
        rows = [("custom", result)]
    if args.json:
        print(json.dumps([{"config": name, **r.as_dict()} for name, r in rows], indent=2))
    else:
        print(sim_table(rows))
    return 0


PRESET_COLUMNS = ["family", "base grid", "window", "stride", "sparsity", "dense steps", "layer rules"]


def _preset_row(name: str, config) -> list:
    steps = f"{config.dense_steps:.0%}" if isinstance(config.dense_steps, float) else config.dense_steps
    rules = len(config.dense_layers) + len(config.overrides) or "-"
    if config.base_grid is None:  # values as given at any resolution: sparsity depends on the grid
        return [name, config.family, "any", "whole grid" if config.window == -1 else config.window, config.stride,
                "0%" if config.window == -1 else "depends on grid", steps, rules]
    ndim = len(config.base_grid)
    window = [config.base_grid[d] if w == -1 else w for d, w in enumerate(expand_per_dim(config.window, ndim))]
    result = simulate(config.base_grid, window, expand_per_dim(config.stride, ndim),
                      expand_per_dim(config.dilation, ndim))
    return [name, config.family, _fmt(config.base_grid), _fmt(window), _fmt(expand_per_dim(config.stride, ndim)),
            f"{1 - result.density:.1%}", steps, rules]


def _cmd_presets(args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = []
        for name in list_presets():
            try:
                rows.append(_preset_row(name, load_preset(name)))
            except ConfigError as error:  # its family is not importable with this diffusers
                rows.append([name, str(error).splitlines()[-1][:80], *[""] * (len(PRESET_COLUMNS) - 1)])
        print(tabulate(rows, headers=["preset", *PRESET_COLUMNS], tablefmt="github"))
    elif args.action == "show":
        if not args.target:
            raise ValueError("presets show needs a preset NAME (see: gna-diffusers presets list)")
        print(preset_text(args.target), end="")
    else:
        if not args.target:
            raise ValueError("presets validate needs a YAML FILE")
        config = load_config(args.target)
        print(f"ok: {args.target} is a valid {config.family} preset")
        print(tabulate([_preset_row(args.target, config)], headers=["file", *PRESET_COLUMNS], tablefmt="github"))
    return 0


def _cmd_families(args: argparse.Namespace) -> int:
    from gna_diffusers.patches import FAMILY_MODULES, PATCHES, SPEED_ONLY_MODULES

    by_family: dict[str, list[str]] = {}
    for name in list_presets():
        try:
            by_family.setdefault(load_preset(name).family, []).append(name)
        except ConfigError:
            continue  # its family is not importable with this diffusers
    rows = [
        [family, patch.transformer_class.__name__ + "".join(f", {c.__name__}" for c in patch.other_transformer_classes),
         ", ".join(patch.blocks), FAMILY_MODULES[family].TINY_NAME if family in FAMILY_MODULES else "none",
         "no: --random-weights" if getattr(SPEED_ONLY_MODULES.get(family), "WEIGHTS_GAP", None) else "yes",
         ", ".join(by_family.get(family, []))]
        for family, patch in PATCHES.items()
    ]
    print(tabulate(rows, headers=["family", "transformer (diffusers)", "block types", "tiny model",
                                  "compare with weights", "presets"], tablefmt="github"))
    return 0


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _cmd_backends(args: argparse.Namespace) -> int:
    import torch

    from .backends import backend_support
    from .harness.runner import environment

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gna-diffusers backends: error: no CUDA device is visible to torch {torch.__version__} (a CPU build, "
              f"or no driver); leave out --device to check the CPU", file=sys.stderr)
        return 2
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    reasons, auto = backend_support(device, getattr(torch, DTYPES[dtype]), args.head_dim)
    rows = [[name, "yes" if why is None else "no", why or ""] for name, why in reasons.items()]
    print(tabulate(rows, headers=["backend", f"runs ({device.type}, {dtype}, head_dim {args.head_dim})", "why not"],
                   tablefmt="github"))
    print(f"auto picks: {auto or 'none: no backend runs such a call'}")
    env = environment(device)  # what compare's reports record
    print(f"{env['device']} | torch {env['torch']} | triton {env['triton'] or 'not importable'} | diffusers "
          f"{env['diffusers']} | gna-diffusers {env['gna_diffusers']}")
    return 0


def call_arg(text: str) -> tuple[str, object]:
    """Parse ``NAME=VALUE`` (VALUE read as YAML: a number, a list, a string; ``@PATH``, a file the harness reads)
    into (name, value)."""
    import yaml

    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with a pipeline argument's name, got {text!r}")
    if value.startswith("@"):
        return name, value
    try:
        return name, yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"{name}: VALUE is not YAML ({error.problem})") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _prompts(args: argparse.Namespace) -> list[str] | None:
    prompts = list(args.prompt or [])
    if args.prompts:
        try:
            lines = open(args.prompts).read().splitlines()
        except OSError as error:
            raise ValueError(f"cannot read --prompts file {args.prompts}: {error.strerror}") from None
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not prompts:
            raise ValueError(f"--prompts file {args.prompts} holds no prompt (one per line)")
    return prompts or None


def _settings(args: argparse.Namespace, **extra):
    """The harness settings of the model flags (``_add_model_flags``), plus ``extra`` fields."""
    import torch

    from .harness.runner import Settings

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = Settings(
        model=args.model, seeds=list(args.seeds), steps=args.steps, height=args.height, width=args.width,
        frames=args.frames, device=device, dtype=args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"),
        control_image=None if args.control_image is None else str(args.control_image),
        image=None if args.image is None else str(args.image),
        control_video=None if args.control_video is None else str(args.control_video),
        video=None if args.video is None else str(args.video), call_args=dict(args.call_arg or ()), **extra,
    )
    prompts = _prompts(args)
    if prompts:
        settings.prompts = prompts
    return settings


def _cmd_harness(args: argparse.Namespace) -> int:
    from .harness.runner import launched_ranks, sweep

    settings = _settings(
        args, output=str(args.output or f"runs/{args.command}"), dense_backend=args.dense_backend,
        lpips_weights=args.lpips_weights, random_weights=args.random_weights, repeats=args.repeats,
        warmup=not args.no_warmup,
    )
    presets = [args.preset] if args.command == "compare" and args.preset else (getattr(args, "presets", None) or [])
    result = sweep(settings, presets, single=args.command == "compare")
    if launched_ranks()[0] != 0:
        return 0  # under torchrun, rank 0 writes and reports
    target = Path(settings.output)
    print(f"wrote {target / ('report.md' if args.command == 'compare' else 'summary.md')}")
    if args.command == "compare" and "summary" in result:
        s = result["summary"]
        print(f"{result['preset']['name']}: {s['speedup_wall']:.2f}x end to end, {s['speedup_transformer']:.2f}x "
              f"transformer, PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.4f}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .harness.calibration import run_calibration

    settings = _settings(args)
    if not 0 < args.target_recall < 1:
        raise ValueError(f"--target-recall must be in (0, 1), got {args.target_recall}")
    output = args.output or Path("runs/calibrate") / f"{Path(args.model).name}.yaml"
    if output.suffix not in (".yaml", ".yml"):
        raise ValueError(f"--output names the preset file to write (.yaml), got {output}")
    if args.budget is not None and args.budget < 1:
        raise ValueError(f"--budget is a speedup (>= 1), got {args.budget}")
    calibration = run_calibration(settings, args.target_recall, args.queries, output, args.budget)
    sparse = sum(c.pattern is not None for c in calibration.choices)
    print(f"wrote {output} ({sparse} of {len(calibration.choices)} layers sparse, dense warm-up "
          f"{calibration.warmup_steps} of {calibration.total_steps} steps), {output.with_suffix('.md')} and "
          f"{output.with_name(output.stem + '-recall.png')}")
    return 0


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that pick a model, prompts and the generation size (compare, sweep, calibrate)."""
    parser.add_argument("--model", default="tiny-flux",
                        help="hub id, local pipeline folder, or a built-in tiny model such as tiny-flux, tiny-wan or "
                             "tiny-ltx-video (`gna-diffusers families` lists them; default tiny-flux)")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--prompts", help="a text file with one prompt per line")
    parser.add_argument("--seeds", type=int_tuple, default=(0,), help="comma-separated seeds (default 0)")
    parser.add_argument("--steps", type=positive_int, help="denoising steps (default: the pipeline's)")
    parser.add_argument("--height", type=positive_int, help="output height in pixels")
    parser.add_argument("--width", type=positive_int, help="output width in pixels")
    parser.add_argument("--frames", type=positive_int, help="video frames (HunyuanVideo: 4k + 1)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                        help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--control-image", type=Path,
                        help="the control image of a ControlNet pipeline (e.g. the low-resolution input of an "
                             "upscaler ControlNet), used for every prompt and seed")
    parser.add_argument("--control-video", type=Path,
                        help="the control video of a video ControlNet pipeline (Cosmos Transfer's edge, depth or "
                             "segmentation video; MP4 or GIF), used for every prompt and seed")
    parser.add_argument("--image", type=Path,
                        help="the input image of an image-conditioned pipeline (image-to-video, editing, a refiner), "
                             "used for every prompt and seed")
    parser.add_argument("--video", type=Path,
                        help="the input video of a video-to-video or video editing pipeline (Lucy Edit, SkyReels-V2's "
                             "video-to-video; MP4 or GIF), used for every prompt and seed")
    parser.add_argument("--call-arg", type=call_arg, action="append", metavar="NAME=VALUE",
                        help="one more argument of every pipeline call, VALUE read as YAML, or @PATH for an image or "
                             "video file; repeat for more (e.g. --call-arg guidance_scale=3.5, SANA-WM's camera "
                             "--call-arg action=w-40,jw-40, Wan Animate's --call-arg pose_video=@pose.mp4)")


def _add_harness_flags(parser: argparse.ArgumentParser) -> None:
    _add_model_flags(parser)
    parser.add_argument("--output", type=Path, help="output folder (default runs/<command>)")
    parser.add_argument("--dense-backend", help="pin diffusers' attention backend for the dense paths, e.g. "
                        "native, _native_cudnn, flash")
    parser.add_argument("--lpips-weights", help="TORCH_HOME-style folder with local LPIPS (AlexNet) weights "
                        "(or set GNA_LPIPS_WEIGHTS)")
    parser.add_argument("--random-weights", action="store_true",
                        help="speed only: build the transformer from its real config with random weights and "
                        "time transformer steps (no checkpoint needed)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed steps per mode with --random-weights")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up generation")
    parser.set_defaults(run=_cmd_harness)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gna-diffusers", description="Generalized Neighborhood Attention for diffusers pipelines."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = commands.add_parser(
        "sim",
        help="block-sparsity simulator: density, FLOP / tile bounds, full/partial/empty tile pairs",
        description="Simulate a tiled attention kernel on a GNA pattern. Per-dimension values are "
        "comma-separated (one value applies to every dimension).",
    )
    sim.add_argument("--paper", action="store_true", help="the published paper configurations")
    sim.add_argument("--grid", type=int_tuple, help="token grid, e.g. 30,48,80")
    sim.add_argument("--window", type=int_tuple, help="window per dimension, e.g. 18,24,24")
    sim.add_argument("--stride", type=int_tuple, default=(1,), help="stride per dimension (default 1)")
    sim.add_argument("--dilation", type=int_tuple, default=(1,), help="dilation per dimension (default 1)")
    sim.add_argument("--causal", type=bool_tuple, default=(False,), help="causal flag per dimension (default 0)")
    sim.add_argument("--q-tile", type=int_tuple, default=(1,), help="Q tile box, e.g. 2,8,8 (default 1)")
    sim.add_argument("--kv-tile", type=int_tuple, default=(1,), help="KV tile box, e.g. 2,8,8 (default 1)")
    sim.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sim.set_defaults(run=_cmd_sim)

    presets = commands.add_parser(
        "presets", help="list, show or validate GNA presets",
        description="presets list: the shipped presets; presets show NAME: its YAML; presets validate FILE: "
        "check a YAML preset (one error per problem, naming the key).",
    )
    presets.add_argument("action", choices=("list", "show", "validate"))
    presets.add_argument("target", nargs="?", help="preset NAME (show) or YAML FILE (validate)")
    presets.set_defaults(run=_cmd_presets)

    families = commands.add_parser(
        "families", help="the model families apply() supports: transformer classes, block types, presets",
        description="The model families apply() supports: the diffusers transformer classes it recognises, the "
        "block types a preset's dense_layers and overrides name, the built-in tiny model `compare` runs without "
        "a download, and the shipped presets.",
    )
    families.set_defaults(run=_cmd_families)

    backends = commands.add_parser(
        "backends", help="which GNA backends run on this machine, why the others do not, and what auto picks",
        description="Ask every GNA backend whether it can run a call on this machine (a small 2-D pattern at the "
        "given device, dtype and head size) and say why not where it cannot; also which one backend='auto' takes "
        "and the versions it depends on.",
    )
    backends.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when torch sees a GPU, else cpu")
    backends.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on cuda, fp32 on cpu")
    backends.add_argument("--head-dim", type=positive_int, default=128, help="head size of the probe (default 128)")
    backends.set_defaults(run=_cmd_backends)

    compare = commands.add_parser(
        "compare", help="dense vs one GNA preset on the same prompts and seeds: speed, quality, pictures",
        description="Run the model dense and with a GNA preset on the same prompts, seeds and steps; write "
        "report.json, report.md and side-by-side pictures. Without --model: the built-in tiny FLUX (CPU).",
    )
    compare.add_argument("--preset", help="preset name or YAML file (default: the family's main preset, or its "
                         "preset for the loaded pipeline: Echo's, Anima's, HunyuanImage's refiner's)")
    _add_harness_flags(compare)

    sweep = commands.add_parser(
        "sweep", help="compare several presets; adds a quality-vs-speed plot and a summary",
        description="compare for every preset, sharing the dense runs; re-running skips finished presets.",
    )
    sweep.add_argument("--presets", type=lambda text: [p for p in text.split(",") if p],
                       help="comma-separated presets (default: all shipped presets of the model's family)")
    _add_harness_flags(sweep)

    calibrate = commands.add_parser(
        "calibrate", help="choose per-layer windows from the model's own dense attention; writes a preset",
        description="Run dense generations with a probe on every self-attention layer that measures, for a "
        "sample of queries, the softmax mass (recall) each candidate window keeps; choose per layer the cheapest "
        "candidate reaching --target-recall (layers no candidate satisfies stay dense) and the dense warm-up; "
        "write the preset YAML, a markdown report and a recall plot next to it.",
    )
    _add_model_flags(calibrate)
    calibrate.add_argument("--target-recall", type=float, default=0.95, help="recall every sparse layer must keep "
                           "(default 0.95)")
    calibrate.add_argument("--budget", type=float, help="attention speedup to reach (simulated, all layers together), "
                           "trading recall below the target where needed")
    calibrate.add_argument("--queries", type=positive_int, default=256, help="grid queries sampled per layer and call "
                           "(default 256)")
    calibrate.add_argument("--output", type=Path, help="the preset to write (default runs/calibrate/<model>.yaml)")
    calibrate.set_defaults(run=_cmd_calibrate)
    return parser


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def _quiet_known_notices() -> None:
    """Drop a notice our runs always trigger and that asks nothing of the user: transformers falls back
    to PIL image processors without torchvision (the harness never uses them)."""
    logging.getLogger("transformers.utils.import_utils").addFilter(_DropMessage("requires torchvision (not installed)"))


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_known_notices()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # e.g. `gna-diffusers presets list | head`: the reader left, nothing to report
        sys.stdout = open(os.devnull, "w")
        return 0
    except (ValueError, TypeError) as error:
        # One line: our errors (ConfigError, HarnessError, UnsupportedModelError, the operator's checks) and the
        # libraries' ValueErrors (a size the pipeline refuses). Another library's TypeError is a bug or a version
        # mismatch (an argument its caller does not know): its traceback is what to report, so it goes on.
        if isinstance(error, TypeError) and not type(error).__module__.startswith("gna_diffusers"):
            raise
        print(f"gna-diffusers {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
