"""FLUX.1-dev at 4096x4096 with GNA (the GNA paper's setting). Needs the FLUX.1-dev weights and a large
GPU (an H100 80 GB runs it in bf16; enable CPU offload on smaller cards)."""

import torch
from diffusers import FluxPipeline

import gna_diffusers

pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", dtype=torch.bfloat16).to("cuda")
handle = gna_diffusers.apply(pipe, "flux-4k")  # window 80x80, stride 16x16, first 9 of 28 steps dense
print(handle.describe())
image = pipe(
    "a lighthouse on a cliff at dawn, ultra detailed", height=4096, width=4096, num_inference_steps=28,
    generator=torch.Generator("cuda").manual_seed(0),
).images[0]
image.save("flux-4k-gna.png")
gna_diffusers.remove(pipe)  # back to the stock model
