"""LTX-Video 13B (0.9.7 dev) at 1216x704, 161 frames, from two keyframes (the first and a later frame) with
GNA (15 of 50 steps dense). The later keyframe's tokens go in front of the video's in the sequence:
gna-diffusers places them as context, which every video token attends to. Needs the LTX-Video 0.9.7 weights
and an 80 GB GPU (or model CPU offload, as here)."""

import torch
from diffusers import LTXConditionPipeline
from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition
from diffusers.utils import export_to_video, load_image

import gna_diffusers

pipe = LTXConditionPipeline.from_pretrained("Lightricks/LTX-Video-0.9.7-dev", dtype=torch.bfloat16)
pipe.enable_model_cpu_offload()
first, last = load_image("first.png"), load_image("last.png")  # your keyframes
conditions = [LTXVideoCondition(image=first, frame_index=0), LTXVideoCondition(image=last, frame_index=160)]
with gna_diffusers.enabled(pipe, "ltx-video-704p") as handle:
    print(handle.describe())
    frames = pipe(
        conditions=conditions, prompt="a cat walks on the grass, realistic", height=704, width=1216, num_frames=161,
        num_inference_steps=50, generator=torch.Generator("cuda").manual_seed(0),
    ).frames[0]
export_to_video(frames, "ltx-video-704p-gna.mp4", fps=24)
