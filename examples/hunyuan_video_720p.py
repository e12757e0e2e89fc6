"""HunyuanVideo at 768x1280, 117 frames with GNA (the GNA paper's setting: 15 of 50 steps dense).
Needs the HunyuanVideo weights and an 80 GB GPU (with VAE tiling)."""

import torch
from diffusers import HunyuanVideoPipeline
from diffusers.utils import export_to_video

import gna_diffusers

pipe = HunyuanVideoPipeline.from_pretrained("hunyuanvideo-community/HunyuanVideo", dtype=torch.bfloat16)
pipe.vae.enable_tiling()
pipe.to("cuda")
with gna_diffusers.enabled(pipe, "hunyuan-video-720p") as handle:
    print(handle.describe())
    frames = pipe(
        "a cat walks on the grass, realistic", height=768, width=1280, num_frames=117, num_inference_steps=50,
        generator=torch.Generator("cuda").manual_seed(0),
    ).frames[0]
export_to_video(frames, "hunyuan-video-720p-gna.mp4", fps=24)
