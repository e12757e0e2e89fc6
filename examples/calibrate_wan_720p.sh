#!/usr/bin/env bash
# Choose Wan 2.1 720p windows from the model's own attention, then measure the calibrated preset against
# dense and the shipped one. Needs the Wan weights and an 80 GB GPU.
set -euo pipefail
model=Wan-AI/Wan2.1-T2V-14B-Diffusers
size=(--height 720 --width 1280 --frames 81)
printf '%s\n' "a red fox running through snow" "a city street at night in the rain" > /tmp/calibration-prompts.txt
gna-diffusers calibrate --model "$model" "${size[@]}" --prompts /tmp/calibration-prompts.txt \
    --target-recall 0.95 --output runs/calibrate/wan-720p-calibrated.yaml
gna-diffusers sweep --model "$model" "${size[@]}" --presets runs/calibrate/wan-720p-calibrated.yaml,wan-720p \
    --output runs/wan-calibrated
