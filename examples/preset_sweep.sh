#!/usr/bin/env bash
# Sweep the FLUX presets on FLUX.1-dev at 4K: one dense run per prompt and seed, then every preset on the
# same noise. Writes runs/flux-4k-sweep/summary.md with a quality-vs-speed plot; re-running resumes.
set -euo pipefail
cat > /tmp/prompts.txt <<'PROMPTS'
a lighthouse on a rocky cliff at sunrise, ultra detailed
a red fox in fresh snow, close-up, shallow depth of field
PROMPTS
gna-diffusers sweep --model black-forest-labs/FLUX.1-dev --height 4096 --width 4096 \
  --presets flux-4k,flux-4k-conservative,dense-check --prompts /tmp/prompts.txt --seeds 0,1 \
  --output runs/flux-4k-sweep
