"""``gna-diffusers calibrate``: run the calibration generations, write the preset, its report and plot."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from gna_diffusers.calibrate import Calibration, calibrate, overall_speedup
from gna_diffusers.config import parse_config
from gna_diffusers.files import atomic_write_text

from .models import load_pipeline
from .runner import (
    Settings,
    _apply_tiny_defaults,
    _call_kwargs,
    _check_device,
    _read_input_files,
    run_pipeline,
)


def _header(calibration: Calibration, settings: Settings, video: bool, seconds: float, budget: float | None) -> str:
    """The preset's comment header: what was measured, on what, and each layer's outcome."""
    grid = "x".join(map(str, calibration.grid))
    lines = [
        f"Calibrated by `gna-diffusers calibrate` on {settings.model} (family {calibration.family}), latent grid "
        f"{grid} ({settings.height}x{settings.width} px{f', {settings.frames} frames' if video else ''}),",
        f"{len(settings.prompts)} prompt(s) x {len(settings.seeds)} seed(s), {calibration.total_steps} steps, target "
        f"recall {calibration.target} (softmax mass kept per query, context keys included), {seconds:.0f} s.",
        f"Dense warm-up: {calibration.warmup_steps} of {calibration.total_steps} steps. Attention speedup of all "
        f"layers (simulated): {overall_speedup(calibration.choices):.2f}x"
        f"{f' (budget {budget}x)' if budget else ''}. Per layer: pattern, measured recall, simulated tile "
        f"bound (speedup of that layer's attention):",
    ]
    for choice in calibration.choices:
        name = f"{choice.layer[0]}.{choice.layer[1]}"
        if choice.pattern is None:
            best = max(choice.recall_by_candidate.values())
            lines.append(f"  {name}: dense (best candidate recall {best:.3f})")
        else:
            p = choice.pattern
            lines.append(f"  {name}: window {'x'.join(map(str, p.window))} stride {'x'.join(map(str, p.stride))}, "
                         f"recall {choice.recall:.3f}, {p.tile_bound:.2f}x")
    return "".join(f"# {line}\n" for line in lines)


def write_report(calibration: Calibration, preset_path: Path) -> tuple[Path, Path]:
    """``<preset>.md`` (the per-layer table) and ``<preset>-recall.png`` (recall vs window, one line per layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    patterns = sorted(calibration.log.patterns, key=lambda p: p.density)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for choice in calibration.choices:
        axis.plot([p.density for p in patterns], [choice.recall_by_candidate[p.window] for p in patterns],
                  marker="o", linewidth=1, label=f"{choice.layer[0]}.{choice.layer[1]}")
    axis.axhline(calibration.target, color="black", linestyle="--", linewidth=1, label="target")
    axis.set_xlabel("window density (fraction of query-key pairs kept)")
    axis.set_ylabel("recall (softmax mass kept)")
    axis.set_title(f"{calibration.family}: recall per layer, grid {'x'.join(map(str, calibration.grid))}")
    if len(calibration.choices) <= 12:
        axis.legend(fontsize=7)
    figure.tight_layout()
    plot_path = preset_path.with_name(preset_path.stem + "-recall.png")
    figure.savefig(plot_path, dpi=120)
    plt.close(figure)

    header = "| layer | choice | recall | tile bound | " + " | ".join(
        "x".join(map(str, p.window)) for p in patterns) + " |"
    rows = [header, "|" + "---|" * (4 + len(patterns))]
    for choice in calibration.choices:
        p = choice.pattern
        rows.append(
            f"| {choice.layer[0]}.{choice.layer[1]} | "
            f"{'dense' if p is None else 'x'.join(map(str, p.window)) + ' / ' + 'x'.join(map(str, p.stride))} | "
            f"{choice.recall:.3f} | {'-' if p is None else f'{p.tile_bound:.2f}x'} | "
            + " | ".join(f"{choice.recall_by_candidate[q.window]:.3f}" for q in patterns) + " |"
        )
    text = "\n".join([
        f"# Calibration: {preset_path.name}",
        "",
        f"Target recall {calibration.target}; dense warm-up {calibration.warmup_steps} of {calibration.total_steps} "
        f"steps. Columns after the tile bound: mean recall of each candidate window (stride chosen for the kernel's "
        f"tiles). Plot: `{plot_path.name}`.",
        "",
        *rows,
        "",
    ])
    report_path = atomic_write_text(preset_path.with_suffix(".md"), text)
    return report_path, plot_path


def run_calibration(settings: Settings, target_recall: float, queries: int, preset_path: Path,
                    budget: float | None = None) -> Calibration:
    """Dense generations of ``settings.prompts`` x ``settings.seeds`` with the probe; writes the preset YAML
    (validated before it is written), its markdown report and recall plot."""
    settings = _read_input_files(_apply_tiny_defaults(settings, settings.model))
    device = _check_device(settings.device)
    model = load_pipeline(settings.model, device, settings.torch_dtype)
    model.pipeline.set_progress_bar_config(leave=False, disable=model.tiny)
    kwargs = _call_kwargs(model, settings)
    steps = kwargs.get("num_inference_steps") or model.family.DEFAULT_STEPS
    kwargs["num_inference_steps"] = steps

    def generate() -> None:
        for prompt in settings.prompts:
            for seed in settings.seeds:
                run_pipeline(model, prompt, torch.Generator("cpu").manual_seed(seed), "latent", **kwargs)

    start = time.perf_counter()
    calibration = calibrate(model.pipeline, generate, steps, target_recall=target_recall, budget=budget,
                            queries=queries)
    data = calibration.config_dict(f"calibrated on {settings.model} at grid {'x'.join(map(str, calibration.grid))}")
    seconds = time.perf_counter() - start
    text = _header(calibration, settings, model.family.PATCH.video, seconds, budget) + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=None)
    parse_config(yaml.safe_load(text), str(preset_path))  # what we write must load as a preset
    atomic_write_text(preset_path, text)
    write_report(calibration, preset_path)
    return calibration
