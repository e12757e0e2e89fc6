"""GNA kernel benchmark: dense SDPA (cuDNN, flash) vs compiled FlexAttention vs our Triton kernel.

    python benchmarks/kernel_bench.py                 # the paper shapes, on CUDA (bf16, 24 heads x 128)
    python benchmarks/kernel_bench.py --tiny          # small shapes that run on CPU (the test suite does)
    ncu --profile-from-start off ... python benchmarks/kernel_bench.py --profile --cases flux-4k   # one launch each

Writes ``benchmarks/results/kernel-<device>-<date>.json`` and ``.md``. Times are medians of repeated
CUDA-event timings after warm-up (wall clock on CPU). Effective TFLOP/s counts only attended pairs
(neighborhood + valid text keys: 4 * B * H * D FLOPs per pair); speedups are against the dense baseline
of the same run (cuDNN SDPA on CUDA, math SDPA on CPU). FLOP and tile bounds come from the simulator,
the tile bound for the tiles the Triton backend chose. The max abs error compares Triton to flex.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from dataclasses import dataclass
from math import prod
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch.nn.attention import SDPBackend, sdpa_kernel

from gna_diffusers import gna_attention, simulate
from gna_diffusers.backends import triton_gna
from gna_diffusers.files import atomic_write_json, atomic_write_text, device_slug
from gna_diffusers.harness.runner import environment as harness_environment
from gna_diffusers.spec import GNASpec

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Case:
    name: str
    grid: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    text: int = 0


PAPER_CASES = [  # the bars' cases first (with text keys, and Wan's): a device call cut short keeps those
    Case("flux-4k +text", (256, 256), (80, 80), (16, 16), 512),
    Case("hunyuan 30x48x80 +text", (30, 48, 80), (18, 24, 24), (16, 8, 8), 256),
    # 720x1280x129 frames: 45 rows is no multiple of 8; window (18,24,24) leaves 91.3% of pairs out.
    Case("hunyuan 33x45x80 +text", (33, 45, 80), (18, 24, 24), (16, 8, 8), 256),
    # Wan 2.1 / 2.2 at 1280x720x81 (preset wan-720p): self-attention over video tokens only, no text.
    Case("wan 21x45x80", (21, 45, 80), (12, 24, 24), (4, 8, 8)),
    Case("flux-4k stride 1 +text", (256, 256), (80, 80), (1, 1), 512),
    Case("hunyuan 30x48x80 stride 1 +text", (30, 48, 80), (18, 24, 24), (1, 1, 1), 256),
    Case("flux-4k", (256, 256), (80, 80), (16, 16)),
    Case("hunyuan 30x48x80", (30, 48, 80), (18, 24, 24), (16, 8, 8)),
    Case("flux-4k stride 1", (256, 256), (80, 80), (1, 1)),
    Case("hunyuan 30x48x80 stride 1", (30, 48, 80), (18, 24, 24), (1, 1, 1)),
]
# The bars' shapes (the paper configurations with text, and Wan's): the first four above; --floors uses them.
BAR_CASES = PAPER_CASES[:4]
TINY_CASES = [
    Case("tiny 2-D", (8, 16), (4, 8), (4, 4)),
    Case("tiny 2-D stride 1 +text", (8, 16), (4, 8), (1, 1), 8),
    Case("tiny 3-D +text", (4, 6, 8), (2, 4, 4), (2, 2, 4), 8),
]


def median_ms(fn, device: torch.device, warmup: int, reps: int, budget_ms: float = 2000.0) -> float:
    """Median of up to ``reps`` timed calls after ``warmup`` untimed ones (CUDA events on a GPU, the wall
    clock on CPU), fewer (at least 5) when they would take longer than ``budget_ms``: a dense paper-shape
    call takes ~0.3 s, and its spread is far below a percent, so a device call can time every case."""

    def timed() -> float:
        if device.type != "cuda":
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    for _ in range(warmup):
        fn()
    times = [timed()]
    count = max(min(reps, 5), min(reps, int(budget_ms / max(times[0], 1e-3))))
    times += [timed() for _ in range(count - 1)]
    return statistics.median(times)


def dense_baselines(device: torch.device) -> dict[str, SDPBackend]:
    if device.type == "cuda":
        return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
    return {"math": SDPBackend.MATH}


def case_inputs(case: Case, device, dtype, heads, head_dim) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Random (1, N, H, D) q, k, v of the case's grid and its text keys as gna_attention's extras."""
    n = prod(case.grid)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, n, heads, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(3))
    extras = {}
    if case.text:
        extras = {
            "extra_k": torch.randn(1, case.text, heads, head_dim, device=device, dtype=dtype, generator=gen),
            "extra_v": torch.randn(1, case.text, heads, head_dim, device=device, dtype=dtype, generator=gen),
        }
    return q, k, v, extras


def dense_inputs(q, k, v, extras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, H, N, D) query and grid + text keys and values for dense SDPA."""
    keys = torch.cat([k, extras["extra_k"]], 1) if extras else k
    values = torch.cat([v, extras["extra_v"]], 1) if extras else v
    return tuple(t.transpose(1, 2) for t in (q, keys, values))


def profile_case(case: Case, device, dtype, heads, head_dim) -> triton_gna.KernelConfig:
    """Tune, then run the triton kernel and the dense baseline once each inside the CUDA profiler's capture
    range (``ncu --profile-from-start off`` profiles just those two launches). Returns the tuned config."""
    q, k, v, extras = case_inputs(case, device, dtype, heads, head_dim)
    pattern = dict(grid=case.grid, window=case.window, stride=case.stride)
    gna_attention(q, k, v, **pattern, **extras, backend="triton")  # tuning launches stay outside the range
    qh, kh, vh = dense_inputs(q, k, v, extras)
    baseline = next(iter(dense_baselines(device).values()))
    capture = device.type == "cuda"
    if capture:
        torch.cuda.synchronize(device)
        torch.cuda.profiler.start()
    gna_attention(q, k, v, **pattern, **extras, backend="triton")
    with sdpa_kernel(baseline):
        F.scaled_dot_product_attention(qh, kh, vh)
    if capture:
        torch.cuda.synchronize(device)
        torch.cuda.profiler.stop()
    return triton_gna.choose_config(q, k, v, extras.get("extra_k"), extras.get("extra_v"), None,
                                    GNASpec.create(**pattern), head_dim**-0.5)


def run_case(case: Case, device, dtype, heads, head_dim, warmup, reps) -> dict:
    n = prod(case.grid)
    q, k, v, extras = case_inputs(case, device, dtype, heads, head_dim)
    pattern = dict(grid=case.grid, window=case.window, stride=case.stride)
    spec = GNASpec.create(**pattern)
    config = triton_gna.choose_config(
        q, k, v, extras.get("extra_k"), extras.get("extra_v"), None, spec, head_dim**-0.5
    )
    ndim = len(case.grid)
    sim = simulate(**pattern, q_tile=config.q_tile[-ndim:], kv_tile=config.kv_tile[-ndim:])
    pairs = sim.density * n * n + n * case.text
    sparse_flops = 4 * heads * head_dim * pairs
    dense_flops = 4 * heads * head_dim * n * (n + case.text)

    row: dict = {"case": case.name, "grid": list(case.grid), "window": list(case.window),
                 "stride": list(case.stride), "text_tokens": case.text, "flop_bound": sim.flop_bound,
                 "tile_bound": sim.tile_bound, "triton_tiles": [list(config.q_tile), list(config.kv_tile)],
                 "triton_launch": {"num_warps": config.num_warps, "num_stages": config.num_stages, "tma": config.tma},
                 "ms": {}}
    qh, kh, vh = dense_inputs(q, k, v, extras)
    for name, backend in dense_baselines(device).items():
        try:
            with sdpa_kernel(backend):
                row["ms"][name] = median_ms(lambda: F.scaled_dot_product_attention(qh, kh, vh), device, warmup, reps)
        except RuntimeError as error:  # the pinned kernel does not support this GPU / shape
            row["ms"][name] = None
            row.setdefault("unavailable", {})[name] = str(error).splitlines()[0]
    outputs = {}
    for name in ("flex", "triton"):
        row["ms"][name] = median_ms(
            lambda name=name: outputs.__setitem__(name, gna_attention(q, k, v, **pattern, **extras, backend=name)),
            device, warmup, reps,
        )
    baseline = "cudnn" if device.type == "cuda" else "math"
    base_ms = row["ms"][baseline]
    row["baseline"] = baseline
    row["speedup_vs_baseline"] = {
        name: (base_ms / ms if base_ms and ms else None) for name, ms in row["ms"].items()
    }
    row["effective_tflops"] = {
        name: ((dense_flops if name in dense_baselines(device) else sparse_flops) / (ms * 1e-3) / 1e12 if ms else None)
        for name, ms in row["ms"].items()
    }
    row["triton_vs_flex_max_abs_err"] = (outputs["triton"].float() - outputs["flex"].float()).abs().max().item()
    return row


def floors_markdown(heads: int = 24, head_dim: int = 128, tflops: float = 800.0, tbps: float = 3.0) -> str:
    """The compute and memory floors of the paper cases with text (and Wan's), bf16, batch 1, at ``tflops``
    and ``tbps`` (the H100 ceilings measured on this workplace's device: KINDS.md), from the simulator."""
    rows = []
    for case in BAR_CASES:
        n = prod(case.grid)
        pairs = simulate(case.grid, case.window, case.stride).density * n * n + n * case.text
        flops, dense = 4 * heads * head_dim * pairs, 4 * heads * head_dim * n * (n + case.text)
        moved = (4 * n + 2 * case.text) * heads * head_dim * 2  # q, k, v, out of the grid; text k, v
        rows.append([case.name, f"{n} + {case.text}", f"{flops / 1e12:.2f}", f"{flops / tflops / 1e9:.2f} ms",
                     f"{moved / 1e9:.2f} GB", f"{moved / tbps / 1e9:.2f} ms", f"{dense / 1e12:.1f}",
                     f"{dense / tflops / 1e9:.1f} ms", f"{dense / flops:.2f}x"])
    return tabulate(rows, headers=["case", "tokens", "GNA TFLOP", "compute floor", "bytes", "memory floor",
                                   "dense TFLOP", "dense floor", "FLOP bound"], tablefmt="github")


def environment(device: torch.device) -> dict:
    """The harness's environment record plus the date (results files are named by device and date)."""
    return {**harness_environment(device), "date": dt.date.today().isoformat()}


def markdown(env: dict, rows: list[dict], dtype: str, heads: int, head_dim: int) -> str:
    names = list(rows[0]["ms"])
    headers = ["case", "text", *[f"{n} ms" for n in names], "triton TFLOP/s",
               f"triton x vs {rows[0]['baseline']}", "flex x", "FLOP bound", "tile bound", "triton tiles (Q / KV)",
               "max abs err"]

    def fmt(x, spec=".2f"):
        return "n/a" if x is None else format(x, spec)

    body = [
        [r["case"], r["text_tokens"], *[fmt(r["ms"][n], ".3f") for n in names],
         fmt(r["effective_tflops"]["triton"], ".1f"),
         fmt(r["speedup_vs_baseline"]["triton"]), fmt(r["speedup_vs_baseline"]["flex"]), f"{r['flop_bound']:.2f}",
         f"{r['tile_bound']:.2f}", " / ".join("x".join(map(str, t)) for t in r["triton_tiles"])
         + (" TMA" if r["triton_launch"].get("tma") else ""),
         f"{r['triton_vs_flex_max_abs_err']:.2e}"]
        for r in rows
    ]
    return (
        f"# GNA kernel benchmark: {env['device']}\n\n"
        f"{env['date']}, torch {env['torch']}, triton {env['triton']}, {dtype}, batch 1, {heads} heads x {head_dim}, "
        f"forward. Median ms; speedups against {rows[0]['baseline']} SDPA in the same run; TFLOP/s counts attended "
        f"pairs only.\n\n" + tabulate(body, headers=headers, tablefmt="github") + "\n"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="small shapes in fp32 that run on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for the JSON and markdown")
    parser.add_argument("--reps", type=int, default=None, help="most timed repetitions per measurement")
    parser.add_argument("--floors", action="store_true", help="print the paper cases' compute and memory floors "
                        "(no GPU needed) and exit")
    parser.add_argument("--cases", help="comma-separated parts of case names to run (default: all), e.g. +text,wan")
    parser.add_argument("--profile", action="store_true", help="no timing: run each case's tuned triton kernel "
                        "and dense baseline once inside the CUDA profiler range, for ncu --profile-from-start off")
    args = parser.parse_args(argv)
    if args.floors:
        print(floors_markdown())
        return 0
    device = torch.device(args.device)
    if not args.tiny and device.type != "cuda":
        parser.error("the paper shapes need a CUDA GPU; use --tiny on CPU")
    cases = TINY_CASES if args.tiny else PAPER_CASES
    dtype = torch.float32 if args.tiny else torch.bfloat16
    heads, head_dim = (2, 32) if args.tiny else (24, 128)
    reps = args.reps or (2 if args.tiny else 30)
    warmup = 1 if args.tiny else 10
    if args.cases:
        wanted = [name.strip() for name in args.cases.split(",")]
        cases = [case for case in cases if any(name in case.name for name in wanted)]
        if not cases:
            parser.error(f"--cases {args.cases}: no case matches; cases: {', '.join(c.name for c in PAPER_CASES)}")
    if args.profile:
        for case in cases:
            config = profile_case(case, device, dtype, heads, head_dim)
            print(f"{case.name}: profiled triton {config} and {next(iter(dense_baselines(device)))}", flush=True)
        return 0
    env = environment(device)
    stem = f"kernel-{device_slug(env['device'].split(' (')[0])}-{env['date']}"
    report = {"schema": 1, "suite": "kernel", "environment": env, "dtype": str(dtype).removeprefix("torch."),
              "heads": heads, "head_dim": head_dim, "rows": []}
    for case in cases:  # written after every case: a device call cut short keeps what it measured
        report["rows"].append(run_case(case, device, dtype, heads, head_dim, warmup, reps))
        timings = ", ".join(f"{n} {fmt_ms(ms)}" for n, ms in report["rows"][-1]["ms"].items())
        print(f"{case.name}: {timings}", flush=True)
        atomic_write_json(args.output / f"{stem}.json", report)
        atomic_write_text(args.output / f"{stem}.md", markdown(env, report["rows"], report["dtype"], heads, head_dim))
    print(f"wrote {args.output / stem}.json and .md")
    return 0


def fmt_ms(ms: float | None) -> str:
    return "n/a" if ms is None else f"{ms:.3f} ms"


if __name__ == "__main__":
    sys.exit(main())
