"""The project's performance table on one H100. All cases take longer than one 10-minute device call (an
estimate: never run yet), so run it in parts (benchmarks/device_call.sh does, on the workplace's lent GPU: its
`first` part, the bars' cases, fits one session's 15 device minutes);
results are written after every case, and the README table merges the parts measured on the same GPU and
day, with the kernel rows of a kernel_bench run of that day when the parts skip the kernels:

    python benchmarks/kernel_bench.py                                  # the kernels, every paper shape
    python benchmarks/gpu_suite.py --models 'flux.1-dev,hunyuanvideo 7' --no-kernels
    python benchmarks/gpu_suite.py --models 'wan 2.1,ti2v,qwen-image 1328,1.5,chroma' --no-kernels

    python benchmarks/gpu_suite.py                  # GPU: kernels + full-size transformers, updates the README
    python benchmarks/gpu_suite.py --tiny           # CPU: the same code at tiny sizes (tests run this)
    python benchmarks/gpu_suite.py --update-readme  # regenerate the README section from the newest results

1. Kernels (benchmarks/kernel_bench.py): dense cuDNN / flash SDPA, compiled FlexAttention with the same
   mask, and the triton backend on the GNA paper's FLUX-4K and HunyuanVideo shapes with text keys.
2. Full-size transformers with random weights (the harness's --random-weights mode; speed does not depend
   on weight values), bf16, batch 1: FLUX.1-dev at 4096x4096 (256x256 + 512 text tokens), HunyuanVideo at
   768x1280x117 (30x48x80 + 256 text) and 720x1280x129 (33x45x80 + 256 text), Wan 2.1 14B at 720x1280x81
   (21x45x80, no text in its self-attention), Wan 2.2 TI2V-5B at 704x1280x121, Qwen-Image at 1328x1328
   (83x83 + 256 text), HunyuanVideo 1.5 at 720x1280x121 (31x45x80) and Chroma1-HD at 2048x2048. For each:
   the median time of one transformer step dense (cuDNN SDPA pinned) and with the shipped preset, the per-step speedup,
   peak memory, and the end-to-end estimate for the preset's schedule (dense warm-up steps + sparse
   steps, transformer time), next to the GNA paper's B200 figures.
3. Writes benchmarks/results/<gpu>-<date>[-<models>].json and .md, and regenerates the README's performance
   section from the newest results, merged with the other parts of the same GPU and day. A model case that fails
   (out of memory, say) is recorded with its error and listed under the table until a part measures it; the
   part's other cases still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tabulate import tabulate

import kernel_bench
from gna_diffusers.files import atomic_write_json, atomic_write_text, device_slug
from gna_diffusers.harness.runner import Settings, sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
MARKERS = ("<!-- performance:start -->", "<!-- performance:end -->")


@dataclass(frozen=True)
class ModelCase:
    name: str
    model: str
    preset: str
    height: int
    width: int
    frames: int | None
    steps: int  # the schedule of the end-to-end estimate
    paper_b200: float | None  # GNA paper, end to end on B200
    targets: tuple[float, float] | None  # our H100 bars: per sparse step, end to end


MODEL_CASES = [
    ModelCase("FLUX.1-dev 4096x4096", "black-forest-labs/FLUX.1-dev", "flux-4k", 4096, 4096, None, 28, 1.45,
              (2.3, 1.6)),
    ModelCase("HunyuanVideo 768x1280x117", "hunyuanvideo-community/HunyuanVideo", "hunyuan-video-720p", 768, 1280,
              117, 50, 1.63, (3.3, 1.9)),
    ModelCase("HunyuanVideo 720x1280x129", "hunyuanvideo-community/HunyuanVideo", "hunyuan-video-720p-129f", 720,
              1280, 129, 50, None, None),
    ModelCase("Wan 2.1 14B 720x1280x81", "Wan-AI/Wan2.1-T2V-14B-Diffusers", "wan-720p", 720, 1280, 81, 50, None, None),
    ModelCase("Wan 2.2 TI2V-5B 704x1280x121", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", "wan-720p", 704, 1280, 121, 50, None,
              None),
    ModelCase("Qwen-Image 1328x1328", "Qwen/Qwen-Image", "qwen-image", 1328, 1328, None, 50, None, None),
    ModelCase("HunyuanVideo 1.5 720x1280x121", "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v",
              "hunyuan-video-1.5-720p", 720, 1280, 121, 50, None, None),
    ModelCase("Chroma1-HD 2048x2048", "lodestones/Chroma1-HD", "chroma-2k", 2048, 2048, None, 35, None, None),
    ModelCase("SkyReels-V2 14B 720x1280x97", "Skywork/SkyReels-V2-T2V-14B-720P-Diffusers", "skyreels-v2-720p", 720,
              1280, 97, 50, None, None),
    ModelCase("Z-Image-Turbo 2048x2048", "Tongyi-MAI/Z-Image-Turbo", "z-image-2k", 2048, 2048, None, 9, None, None),
    # No hub id yet: the name only picks the family; the shape is diffusers' Flux3Transformer2DModel defaults.
    ModelCase("FLUX.3 2048x2048", "FLUX.3", "flux3-2k", 2048, 2048, None, 50, None, None),
    # OmniGen v1 (3.8B, Phi-3 mini's shape) at 1024x1024: 64x64 after 64 prompt tokens and the time token; head_dim 96.
    ModelCase("OmniGen v1 1024x1024", "Shitao/OmniGen-v1-diffusers", "omnigen-1k", 1024, 1024, None, 50, None, None),
    # LTX-2 19B (video + audio streams; GNA on the video self-attention): its full-resolution stage.
    ModelCase("LTX-2 19B 1088x1920x121", "Lightricks/LTX-2", "ltx2-1080p", 1088, 1920, 121, 30, None, None),
    # LTX-Video 13B (its 0.9.7 / 0.9.8 shape) at its preset's grid.
    ModelCase("LTX-Video 13B 704x1216x161", "Lightricks/LTX-Video-0.9.7-dev", "ltx-video-704p", 704, 1216, 161,
              50, None, None),
    # Wan 2.2 Animate 14B: one 77-frame segment (its reference frame is context).
    ModelCase("Wan 2.2 Animate 14B 720x1280x77", "Wan-AI/Wan2.2-Animate-14B-Diffusers", "wan-animate-720p", 720,
              1280, 77, 20, None, None),
    # Wan Animate 2 (no hub id known offline: the name picks the family; diffusers' class defaults, Wan 14B's shape):
    # one 81-frame segment at the modular pipeline's default 800x640, its generation pass; blocks compiled (flex).
    ModelCase("Wan Animate 2 14B 800x640x81", "Wan-Animate-2", "wan-animate2-800x640", 800, 640, 81, 40, None, None),
    ModelCase("Kandinsky 5 Pro 19B 768x1280x121", "kandinskylab/Kandinsky-5.0-T2V-Pro-sft-5s-Diffusers",
              "kandinsky5-768p", 768, 1280, 121, 50, None, None),
    # Qwen-Image 2.1 at 4 MP (the shape is diffusers' class defaults): the grid's queries against the prompt.
    ModelCase("Qwen-Image 2.1 2048x2048", "Qwen/Qwen-Image-2.1", "qwen-image-2.1-2k", 2048, 2048, None, 40, None,
              None),
    # Cosmos-Predict2.5 2B at its pipeline's default size (the video's self-attention; no padding-mask channel).
    ModelCase("Cosmos-Predict2.5 2B 704x1280x93", "nvidia/Cosmos-Predict2.5-2B", "cosmos-720p", 704, 1280, 93, 35,
              None, None),
    # CogVideoX 1.5 5B at its recommended size: 21 latent frames padded to 22, 2x2x2 patches (11x48x85 + 226 text).
    ModelCase("CogVideoX 1.5 5B 768x1360x81", "THUDM/CogVideoX1.5-5B", "cogvideox-1.5-768p", 768, 1360, 81, 50,
              None, None),
    # Mochi 1 preview (10B) at its 848x480, 163 frames (28x30x53; a prompt's valid tokens only).
    ModelCase("Mochi 1 10B 480x848x163", "genmo/mochi-1-preview", "mochi-480p", 480, 848, 163, 64, None, None),
    # Allegro (2.8B) at its 1280x720, 88 frames (22x45x80; the self-attention holds no text).
    ModelCase("Allegro 2.8B 720x1280x88", "rhymes-ai/Allegro", "allegro-720p", 720, 1280, 88, 100, None, None),
    # EasyAnimate V5.1 12B at 1024x1024, 49 frames (13x64x64 + its 256 prompt tokens).
    ModelCase("EasyAnimate V5.1 12B 1024x1024x49", "alibaba-pai/EasyAnimateV5.1-12b-zh-diffusers", "easyanimate-1024",
              1024, 1024, 49, 50, None, None),
    # Ideogram 4 at its default 2048x2048 (the prompt-conditioned transformer; diffusers' class defaults, 9.3B).
    ModelCase("Ideogram 4 2048x2048", "ideogram-ai/ideogram-v4", "ideogram4-2k", 2048, 2048, None, 48, None, None),
    # Krea 2 at 2048x2048 (diffusers' class defaults, 12.8B; no hub id known: the name only picks the family).
    ModelCase("Krea 2 2048x2048", "Krea-2", "krea2-2k", 2048, 2048, None, 28, None, None),
    # Ovis-Image 7B at 2048x2048 (FLUX's architecture; diffusers' class defaults).
    ModelCase("Ovis-Image 7B 2048x2048", "AIDC-AI/Ovis-Image-7B", "ovis-image-2k", 2048, 2048, None, 50, None, None),
    # CogView4-6B at 2048x2048, the largest size its positional table covers (128x128 + the GLM-4 prompt).
    ModelCase("CogView4 6B 2048x2048", "THUDM/CogView4-6B", "cogview4-2k", 2048, 2048, None, 50, None, None),
    # AuraFlow v0.3 (6.8B) at 1536x1536, the whole of its 96x96 positional table (+ 8 registers and 256 prompt
    # tokens); head_dim 256.
    ModelCase("AuraFlow v0.3 1536x1536", "fal/AuraFlow-v0.3", "auraflow-1536", 1536, 1536, None, 50, None, None),
    # CogView3-Plus-3B at 2048x2048, the largest size its positional table covers (128x128 + 224 T5 tokens); head_dim
    # 40.
    ModelCase("CogView3-Plus 3B 2048x2048", "THUDM/CogView3-Plus-3B", "cogview3plus-2k", 2048, 2048, None, 50, None,
              None),
    # HunyuanImage 2.1 (17B) at its native 2048x2048: a 64x64 grid (32x VAE) against up to 1,128 prompt tokens; its
    # refiner (15B) at the same size: 128x128 (16x VAE) and 256 prompt tokens, 4 steps.
    ModelCase("HunyuanImage 2.1 2048x2048", "hunyuanvideo-community/HunyuanImage-2.1-Diffusers", "hunyuan-image-2k",
              2048, 2048, None, 50, None, None),
    ModelCase("HunyuanImage 2.1 Refiner 2048x2048", "hunyuanvideo-community/HunyuanImage-2.1-Refiner-Diffusers",
              "hunyuan-image-refiner-2k", 2048, 2048, None, 4, None, None),
    # SD3.5 Large (8.1B) at 2048x2048, inside its positional table: 128x128 + 77 CLIP and 256 T5 tokens.
    ModelCase("SD3.5 Large 2048x2048", "stabilityai/stable-diffusion-3.5-large", "sd3-2k", 2048, 2048, None, 28,
              None, None),
    # PixArt-Sigma's 2K model (0.6B) at 2048x2048: 128x128, no text in the self-attention; head_dim 72.
    ModelCase("PixArt-Sigma 2K 2048x2048", "PixArt-alpha/PixArt-Sigma-XL-2-2K-MS", "pixart-2k", 2048, 2048, None, 20,
              None, None),
    # HiDream-I1 Full (17B, mixture of experts) at 1024x1024, the area its pipeline scales every request to.
    ModelCase("HiDream-I1 1024x1024", "HiDream-ai/HiDream-I1-Full", "hidream-1k", 1024, 1024, None, 50, None, None),
    # Hunyuan-DiT v1.2 (1.5B) at 1024x1024: 64x64, no text in the self-attention; head_dim 88.
    ModelCase("Hunyuan-DiT v1.2 1024x1024", "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers", "hunyuan-dit-1k", 1024, 1024,
              None, 50, None, None),
    # Lumina-Image 2.0 (2.6B) at 2048x2048: 128x128 after a typical caption (128 tokens); 8 key/value heads repeated
    # to 24 by its processor before attention; head_dim 96.
    ModelCase("Lumina-Image 2.0 2048x2048", "Alpha-VLLM/Lumina-Image-2.0", "lumina2-2k", 2048, 2048, None, 30, None,
              None),
    # Lumina-Next-SFT at 2048x2048 (diffusers' class defaults with 8 key/value heads, 2.3B): 128x128, no text in the
    # self-attention; head_dim 72.
    ModelCase("Lumina-Next 2048x2048", "Alpha-VLLM/Lumina-Next-SFT-diffusers", "lumina-next-2k", 2048, 2048, None, 30,
              None, None),
    # ERNIE-Image at 2048x2048 (diffusers' class defaults, 2.8B): 128x128 + 256 prompt tokens.
    ModelCase("ERNIE-Image 2048x2048", "baidu/ERNIE-Image", "ernie-image-2k", 2048, 2048, None, 50, None, None),
    # Bria Fibo 2.0 at 1024x1024 (diffusers' class defaults, 8.1B): 64x64 after 384 gist tokens (a 1,024-token JSON
    # caption).
    ModelCase("Bria Fibo 2.0 1024x1024", "briaai/Fibo-2.0-dev", "bria-fibo2-1k", 1024, 1024, None, 30, None, None),
    # GLM-Image's diffusion decoder at 2048x2048 (diffusers' class defaults, 2.9B; 64 heads x 40): 128x128 + 16
    # glyph tokens, text-to-image (no condition keys).
    ModelCase("GLM-Image 2048x2048", "zai-org/GLM-Image", "glm-image-2k", 2048, 2048, None, 50, None, None),
    # PRX (the latent 1.3B, diffusers' class defaults; the name is diffusers' example checkpoint, which picks the
    # family) at 1024x1024: 64x64 image queries against 256 + 4,096 keys.
    ModelCase("PRX 1024x1024", "Photoroom/prx-512-t2i-sft", "prx-1k", 1024, 1024, None, 28, None, None),
    # NucleusMoE-Image at 2048x2048 (diffusers' class defaults, 22.7B with its experts): 128x128 image queries against
    # 16,384 + 256 keys.
    ModelCase("NucleusMoE-Image 2048x2048", "NucleusMoE-Image", "nucleusmoe-image-2k", 2048, 2048, None, 50, None,
              None),
    # JoyImage-Edit at 1024x1024 (diffusers' class defaults, 4.6B; text-to-image: no reference frame).
    ModelCase("JoyImage-Edit 1024x1024", "jdopensource/JoyImage-Edit", "joyimage-1k", 1024, 1024, None, 50, None,
              None),
    # Cosmos 3 Omni at its pipeline's default size (diffusers' class defaults, 15.2B; the name is the checkpoint
    # diffusers' docs load, whose config was not checked offline): 48x23x40 video tokens after a 256-token prompt.
    ModelCase("Cosmos 3 Omni 720x1280x189", "nvidia/Cosmos3-Nano", "cosmos3-720p", 720, 1280, 189, 35, None, None),
    # MiniMax-H3 (33.1B: 61.7 GiB of bf16 weights, which leave an H100 about 17 GiB) at its modular pipeline's
    # defaults: 37x24x42 video tokens after a 256-token prompt and 414 audio rows.
    ModelCase("MiniMax-H3 768x1344x124", "MiniMaxAI/MiniMax-H3", "minimax-h3-768p", 768, 1344, 124, 50, None, None),
    # SANA-WM (diffusers' class defaults, 2.66B with its camera branch) at its pipeline's default size: 21x22x40 video
    # tokens; GNA in its 5 softmax blocks (a main and a camera call each), the 15 linear blocks as they are.
    ModelCase("SANA-WM 704x1280x161", "Efficient-Large-Model/SANA-WM_bidirectional", "sana-wm-720p", 704, 1280, 161,
              60, None, None),
    # Kandinsky 6 is left out: diffusers' class defaults (its audio stream as wide as the video's) make 48B,
    # 96 GB of bf16 weights. On an H200: `gna-diffusers compare --random-weights --model
    # kandinskylab/Kandinsky-6.0-Pro-distill-5s-Diffusers --height 480 --width 864 --frames 121`.
    # FLUX.2 [dev] (32B, 64 GB of bf16 weights) is left out: time it on an H200 with
    # `gna-diffusers compare --random-weights --model black-forest-labs/FLUX.2-dev --height 2048 --width 2048`.
]
TINY_MODEL_CASES = [
    ModelCase("tiny FLUX 64x64", "tiny-flux", "flux-4k", 64, 64, None, 28, 1.45, (2.3, 1.6)),
    ModelCase("tiny HunyuanVideo 64x64x9", "tiny-hunyuan-video", "hunyuan-video-720p", 64, 64, 9, 50, 1.63, (3.3, 1.9)),
    ModelCase("tiny Wan 64x64x9", "tiny-wan", "wan-720p", 64, 64, 9, 50, None, None),
    ModelCase("tiny Qwen-Image 64x64", "tiny-qwen-image", "qwen-image", 64, 64, None, 50, None, None),
    ModelCase("tiny HunyuanVideo 1.5 64x64x9", "tiny-hunyuan-video-1.5", "hunyuan-video-1.5-720p", 64, 64, 9, 50,
              None, None),
]
# The paper shapes with their text keys, and Wan's text-free self-attention.
KERNEL_CASES = [case for case in kernel_bench.PAPER_CASES if case.text or case.name.startswith("wan")]


def run_model(case: ModelCase, device: torch.device, tiny: bool) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        report = sweep(
            Settings(model=case.model, random_weights=True, height=case.height, width=case.width, frames=case.frames,
                     steps=case.steps, device=str(device), dtype="float32" if tiny else "bfloat16", output=scratch,
                     dense_backend="_native_cudnn" if device.type == "cuda" else None, repeats=1 if tiny else 3),
            [case.preset],
            single=True,
        )
    (row,) = report["presets"]
    result = {
        "case": case.name, "model": case.model, "preset": case.preset, "grid": report["grid"],
        "text_tokens": report["text_tokens"], "dense_step_ms": row["dense_step_ms"], "gna_step_ms": row["gna_step_ms"],
        "speedup_per_step": row["speedup_transformer"], "end_to_end": row["end_to_end_estimate"],
        "peak_memory_gib": row["peak_memory_gib"], "paper_b200_end_to_end": case.paper_b200,
        "targets": None if case.targets is None else {"per_step": case.targets[0], "end_to_end": case.targets[1]},
    }
    print(f"{case.name}: dense {result['dense_step_ms']:.1f} ms, gna {result['gna_step_ms']:.1f} ms per step, "
          f"{result['speedup_per_step']:.2f}x; end to end {result['end_to_end']['speedup']:.2f}x", flush=True)
    return result


def _mark(value: float | None, bar: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x" + ("" if bar is None else (" (meets)" if value >= bar else f" (below {bar}x)"))


def render_markdown(results: dict) -> str:
    env = results["environment"]
    kernel_rows = [
        [r["case"], *(kernel_bench.fmt_ms(r["ms"][n]) for n in r["ms"]),
         _mark(r["speedup_vs_baseline"]["triton"], None),
         _mark(r["speedup_vs_baseline"]["flex"], None), f"{r['flop_bound']:.2f}x", f"{r['tile_bound']:.2f}x",
         f"{r['triton_vs_flex_max_abs_err']:.1e}"]
        for r in results["kernel"]["rows"]
    ]
    model_rows = []
    for r in results["models"]:
        targets = r["targets"] or {}
        memory = r["peak_memory_gib"]
        model_rows.append([
            r["case"], "x".join(map(str, r["grid"])) + f" + {r['text_tokens']}", r["preset"],
            f"{r['dense_step_ms']:.0f}",
            f"{r['gna_step_ms']:.0f}", _mark(r["speedup_per_step"], targets.get("per_step")),
            f"{r['end_to_end']['dense_warmup_steps']}/{r['end_to_end']['steps']}",
            _mark(r["end_to_end"]["speedup"], targets.get("end_to_end")),
            "n/a" if r["paper_b200_end_to_end"] is None else f"{r['paper_b200_end_to_end']:.2f}x",
            "n/a" if memory["dense"] is None else f"{memory['dense']:.1f} / {memory['gna']:.1f}",
        ])
    kernel_part = []
    if kernel_rows:  # a part run with --no-kernels alone has none
        names = list(results["kernel"]["rows"][0]["ms"])
        baseline = results["kernel"]["rows"][0]["baseline"]
        kernel_part = [
            f"Attention kernels ({results['kernel']['dtype']}, batch 1, {results['kernel']['heads']} heads x "
            f"{results['kernel']['head_dim']}, forward, with text keys except Wan's; speedups vs {baseline} SDPA in "
            f"the same run):",
            "",
            tabulate(kernel_rows, headers=["case", *names, "triton", "flex", "FLOP bound", "tile bound", "max abs err"],
                     tablefmt="github"),
            "",
        ]
    return "\n".join([
        f"Measured on **{env['device']}**, {env['date']}, torch {env['torch']}, triton {env['triton']}, "
        f"gna-diffusers {env['gna_diffusers']} (`benchmarks/results/{results['stem']}.json`"
        f"{' and the other parts of this run' if results.get('merged') else ''}).",
        "",
        *kernel_part,
        f"Transformers with random weights, one step (dense attention: {results['dense_backend']}); end to end = the "
        "preset's schedule (dense warm-up + sparse steps), transformer time:",
        "",
        tabulate(model_rows, headers=["model", "tokens", "preset", "dense ms/step", "gna ms/step", "per step",
                                      "dense steps", "end to end", "GNA paper (B200)", "peak GiB dense / gna"],
                 tablefmt="github"),
        *([""] + [f"Not measured: {f['case']} ({f['error']})." for f in results["failures"]]
          if results.get("failures") else []),
    ])


def newest_results(folder: Path = RESULTS) -> Path | None:
    """The newest suite results file (kernel-only files are skipped)."""
    candidates = []
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("suite") == "gpu":
            candidates.append((data["environment"]["date"], path.name, path))
    return max(candidates)[2] if candidates else None


def merged_results(results_path: Path, folder: Path = RESULTS) -> dict:
    """The results of ``results_path`` plus the model cases and kernel rows of every other suite file in
    ``folder`` from the same GPU and day (the suite run in parts), and the suite's kernel cases from
    kernel_bench files of that GPU and day (a part run with --no-kernels then needs no second kernel run);
    a later file's case replaces an earlier one; a failed case stays listed until some part measures it."""
    base = json.loads(results_path.read_text())
    device, date = base["environment"]["device"], base["environment"]["date"]
    suite_kernels = {case.name for case in KERNEL_CASES + kernel_bench.TINY_CASES}
    models, kernels, failures = {}, {}, {}
    parts = sorted(folder.glob("*.json"), key=lambda path: path.stat().st_mtime)
    for path in [p for p in parts if p.resolve() != results_path.resolve()] + [results_path]:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("suite") not in ("gpu", "kernel") or (
                data["environment"]["device"], data["environment"]["date"]) != (device, date):
            continue
        if data["suite"] == "kernel":
            if (data["dtype"], data["heads"], data["head_dim"]) == (
                    base["kernel"]["dtype"], base["kernel"]["heads"], base["kernel"]["head_dim"]):
                kernels.update((row["case"], row) for row in data["rows"] if row["case"] in suite_kernels)
            continue
        models.update((row["case"], row) for row in data["models"])
        kernels.update((row["case"], row) for row in data["kernel"]["rows"])
        failures.update((failure["case"], failure) for failure in data.get("failures", []))
    merged = len(models) > len(base["models"]) or len(kernels) > len(base["kernel"]["rows"])
    return {**base, "models": list(models.values()), "kernel": {**base["kernel"], "rows": list(kernels.values())},
            "failures": [failure for case, failure in failures.items() if case not in models], "merged": merged}


def update_readme(readme: Path = README, results_path: Path | None = None, folder: Path = RESULTS) -> Path:
    """Replace the text between the README's performance markers with a table from ``results_path`` (default:
    the newest results in ``folder``) merged with the other parts of its run, or a "pending" line when there
    are none."""
    results_path = results_path or newest_results(folder)
    if results_path is None:
        body = "No GPU results are committed yet: the H100 figures are pending (run `python benchmarks/gpu_suite.py`)."
    else:
        body = render_markdown(merged_results(results_path, results_path.parent))
    text = readme.read_text()
    start, end = MARKERS
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no performance markers {start} ... {end}")
    new = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)
    return atomic_write_text(readme, new)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes that run on CPU (a check of the suite)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path,
                        help="results folder (default benchmarks/results; --tiny: runs/bench-tiny)")
    parser.add_argument("--update-readme", action="store_true", help="only regenerate the README section")
    parser.add_argument("--no-readme", action="store_true", help="do not touch the README after a GPU run")
    parser.add_argument("--models", help="comma-separated parts of model case names or hub names to run (default: "
                        "all), e.g. flux,wan or 'hunyuanvideo 7'; the results file is then named after them")
    parser.add_argument("--no-kernels", action="store_true", help="skip the kernel benchmark (a later part of a run)")
    args = parser.parse_args(argv)
    if args.update_readme:
        print(f"updated {update_readme()}")
        return 0
    device = torch.device(args.device)
    if not args.tiny and device.type != "cuda":
        parser.error("the full suite needs a CUDA GPU; use --tiny on CPU")
    output = args.output or (ROOT / "runs" / "bench-tiny" if args.tiny else RESULTS)
    kernel_cases = kernel_bench.TINY_CASES if args.tiny else KERNEL_CASES
    dtype = torch.float32 if args.tiny else torch.bfloat16
    heads, head_dim = (2, 32) if args.tiny else (24, 128)
    env = kernel_bench.environment(device)
    cases = TINY_MODEL_CASES if args.tiny else MODEL_CASES
    stem = f"{device_slug(env['device'].split(' (')[0])}-{env['date']}"
    if args.models:
        wanted = [name.strip().lower() for name in args.models.split(",")]
        cases = [case for case in cases if any(name in f"{case.name} {case.model}".lower() for name in wanted)]
        if not cases:
            parser.error(f"--models {args.models}: no model case matches; cases: "
                         f"{', '.join(f'{c.name} ({c.model})' for c in MODEL_CASES)}")
        stem += "-" + device_slug(" ".join(wanted))
    results = {"schema": 1, "suite": "gpu", "stem": stem, "environment": env,
               "dense_backend": ("cuDNN SDPA (diffusers _native_cudnn)" if device.type == "cuda"
                                 else "diffusers default"),
               "kernel": {"dtype": str(dtype).removeprefix("torch."), "heads": heads, "head_dim": head_dim, "rows": []},
               "models": []}

    def write() -> Path:  # after every case: a run cut short keeps what it measured
        title = f"# gna-diffusers GPU suite: {env['device']}"
        atomic_write_text(output / f"{stem}.md", f"{title}\n\n{render_markdown(results)}\n")
        return atomic_write_json(output / f"{stem}.json", results)

    for case in [] if args.no_kernels else kernel_cases:
        results["kernel"]["rows"].append(kernel_bench.run_case(
            case, device, dtype, heads, head_dim, warmup=1 if args.tiny else 10, reps=1 if args.tiny else 30))
        json_path = write()
    for case in cases:
        try:
            results["models"].append(run_model(case, device, args.tiny))
        except Exception as error:  # e.g. out of memory: recorded, and the part's other cases still run
            first_line = (str(error).splitlines() or [""])[0]
            why = f"{type(error).__name__}: {first_line}"
            results.setdefault("failures", []).append({"case": case.name, "error": why})
            print(f"{case.name}: failed: {why}", flush=True)
        if device.type == "cuda":  # a failed case's memory (the error and its frames are gone by now)
            torch.cuda.empty_cache()
        json_path = write()
    print(f"wrote {json_path} and .md")
    if not args.tiny and not args.no_readme:
        print(f"updated {update_readme(README, json_path)}")
    return 1 if results.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
