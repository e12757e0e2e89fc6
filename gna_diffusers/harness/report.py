"""Reports a person reads: markdown tables for an entry, a sweep summary, and the quality-vs-speed plot."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from gna_diffusers.files import atomic_write_text

from .metrics import PSNR_CAP


def _num(value, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # a skip reason ("skipped: ...", "n/a: ..."): the header gives the reason
        return value.split(":")[0]
    return format(value, spec)


def _header(report: dict) -> str:
    env, model = report["environment"], report["model"]
    lines = [
        f"- model: `{model['name']}` ({model['family']}, {model['transformer']}), weights: {model['weights']}",
        f"- device: {env['device']}; torch {env['torch']}, diffusers {env['diffusers']}, triton {env['triton']}, "
        f"gna-diffusers {env['gna_diffusers']}",
        f"- dense attention backend: {report['dense_backend']}; dtype {report['settings']['dtype']}",
        f"- GNA backend (auto): {report['gna_backend']['auto']}"
        + "".join(f"; {name} cannot run here: {why}" for name, why in report["gna_backend"]["skipped"].items()),
    ]
    if model["weights"] != "pretrained":
        lines.append("- **random weights**: the pictures are noise; speed and the metrics' plumbing are what this "
                     "shows")
    if env["device"].startswith("cpu"):
        lines.append("- **CPU**: GNA runs the reference backend (masked dense attention) here, so the timings are "
                     "no speedups; measure speed on a GPU")
    inputs = (("image", "input image"), ("video", "input video"), ("control_image", "control image"),
              ("control_video", "control video"))
    for key, what in inputs:
        if report["settings"].get(key):
            lines.append(f"- {what}: `{report['settings'][key]}` (the same for every prompt and seed)")
    if report["settings"].get("call_args"):
        arguments = ", ".join(f"`{name}={value!r}`" for name, value in report["settings"]["call_args"].items())
        lines.append(f"- pipeline call arguments: {arguments}")
    if model.get("unscored"):
        lines.append(f"- not scored: {model['unscored']}")
    lpips = report.get("lpips")
    if isinstance(lpips, str):
        lines.append(f"- LPIPS: {lpips}")
    return "\n".join(lines)


def entry_markdown(report: dict) -> str:
    preset = report["preset"]
    rows = []
    for r in report["samples"]:
        m = r["metrics"]
        picture = next(iter(r["files"].values()))
        rows.append([
            r["sample"], r["prompt"][:48], _num(r["dense"]["wall_s"], ".3f"), _num(r["gna"]["wall_s"], ".3f"),
            _num(r["speedup"]["wall"]), _num(r["speedup"]["transformer"]), _num(m["psnr"]), _num(m["ssim"], ".4f"),
            _num(m["lpips"], ".4f"), *([_num(m["temporal_psnr"])] if "temporal_psnr" in m else []),
            f"[{picture}]({picture})",
        ])
    video = "temporal_psnr" in report["samples"][0]["metrics"]
    headers = ["sample", "prompt", "dense s", "gna s", "speedup (end to end)", "speedup (transformer)", "PSNR dB",
               "SSIM", "LPIPS", *(["temporal PSNR dB"] if video else []), "dense / gna / diff"]
    s = report["summary"]
    layers = [layer for layer in preset["layers"] if not layer["dense"]]
    pattern = (f"window {layers[0]['window']}, stride {layers[0]['stride']}" if layers else "all layers dense")
    return "\n".join([
        f"# gna-diffusers compare: `{preset['name']}`",
        "",
        _header(report),
        f"- preset: `{preset['name']}`: {pattern} at grid {layers[0].get('grid', '-') if layers else '-'}; "
        f"dense warm-up {preset['config']['dense_steps']}; {len(layers)} of {len(preset['layers'])} layers sparse",
        "",
        f"**Mean: {_num(s['speedup_wall'])}x end to end, {_num(s['speedup_transformer'])}x transformer; "
        f"PSNR {_num(s['psnr'])} dB, SSIM {_num(s['ssim'], '.4f')}**",
        "",
        tabulate(rows, headers=headers, tablefmt="github"),
        "",
        "How to read it: each row is one prompt and seed, run dense and with GNA on the same noise and steps. "
        "Speedups divide dense time by GNA time (end to end: the whole pipeline call; transformer: only its "
        f"forward calls). PSNR / SSIM / LPIPS compare the GNA output to the dense one (higher PSNR / SSIM and "
        f"lower LPIPS are closer; identical outputs show {PSNR_CAP:.0f} dB). Pictures: dense | GNA | difference x8.",
        "",
    ])


def summary_markdown(summary: dict, plot: str | None) -> str:
    rows = [
        [r["preset"], r["status"], _num(r.get("speedup_wall")), _num(r.get("speedup_transformer")),
         _num(r.get("psnr")), _num(r.get("ssim"), ".4f"), _num(r.get("lpips"), ".4f"), r.get("error", "")]
        for r in summary["presets"]
    ]
    headers = ["preset", "status", "speedup (end to end)", "speedup (transformer)", "PSNR dB", "SSIM", "LPIPS", "error"]
    return "\n".join([
        "# gna-diffusers sweep", "", _header(summary), "",
        tabulate(rows, headers=headers, tablefmt="github"), "",
        *([f"![quality vs speed]({plot})", ""] if plot else []),
        "Each preset's folder holds its report.md with per-sample numbers and pictures.", "",
    ])


def random_weights_markdown(report: dict) -> str:
    rows = [
        [r["preset"], _num(r["dense_step_ms"], ".1f"), _num(r["gna_step_ms"], ".1f"), _num(r["speedup_transformer"]),
         f"{r['end_to_end_estimate']['dense_warmup_steps']} of {r['end_to_end_estimate']['steps']}",
         _num(r["end_to_end_estimate"]["speedup"])]
        for r in report["presets"]
    ]
    headers = ["preset", "dense step ms", "gna step ms", "speedup per step", "dense warm-up", "end-to-end estimate"]
    return "\n".join([
        "# gna-diffusers speed (random weights)", "", _header(report),
        f"- latent grid {'x'.join(map(str, report['grid']))} + {report['text_tokens']} text tokens; median of "
        f"{report['timed_steps']} transformer steps per mode; quality: n/a (random weights)", "",
        tabulate(rows, headers=headers, tablefmt="github"), "",
        "End-to-end estimate: steps x dense / (warm-up x dense + rest x gna), transformer time only.", "",
    ])


def write_markdown(path: str | Path, text: str) -> Path:
    return atomic_write_text(path, text)


def quality_vs_speed_plot(rows: list[dict], path: Path) -> str | None:
    """Speedup vs PSNR and vs SSIM, one point per finished preset; returns the file name, None if no point."""
    points = [r for r in rows if r.get("status", "").startswith("done") and isinstance(r.get("psnr"), (int, float))]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for axis, key, label in ((axes[0], "psnr", "PSNR vs dense (dB)"), (axes[1], "ssim", "SSIM vs dense")):
        for row in points:
            axis.scatter(row["speedup_wall"], row[key])
            axis.annotate(row["preset"], (row["speedup_wall"], row[key]), textcoords="offset points", xytext=(4, 4),
                          fontsize=8)
        axis.set_xlabel("speedup, end to end (x)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    figure.suptitle("quality vs speed, one point per preset")
    tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)
    return path.name
