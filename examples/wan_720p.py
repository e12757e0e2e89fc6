"""Wan 2.2 A14B (two experts, both patched) at 1280x720, 81 frames with GNA (15 of 50 steps dense).
Needs the Wan 2.2 weights and an 80 GB GPU; model CPU offload swaps the experts in and out."""

import torch
from diffusers import WanPipeline
from diffusers.utils import export_to_video

import gna_diffusers

pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.2-T2V-A14B-Diffusers", dtype=torch.bfloat16)
pipe.enable_model_cpu_offload()
with gna_diffusers.enabled(pipe, "wan-720p") as handle:
    print(handle.describe())
    frames = pipe(
        "a cat walks on the grass, realistic", height=720, width=1280, num_frames=81, num_inference_steps=50,
        generator=torch.Generator("cuda").manual_seed(0),
    ).frames[0]
export_to_video(frames, "wan-720p-gna.mp4", fps=16)
