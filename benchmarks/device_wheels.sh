#!/usr/bin/env bash
# Run on the development machine (it reaches PyPI) before a GPU call: fetches, into .whl/ (git-ignored),
# the cp312 wheels that the lent GPU's image lacks. The call then carries them: `carry: [".whl"]`, and its
# command starts with `source benchmarks/device_setup.sh`. About 10 MB; the carry limit is 64 MiB.
# imageio-ffmpeg (68 MB) stays behind: compare then writes frame strips and says that no MP4 was written.
set -euo pipefail
cd "$(dirname "$0")/.."
# One version of each (two stop the install there). setuptools + wheel build our editable install.
WHEELS=(
    diffusers==0.42.1 importlib-metadata==8.7.0
    pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
    setuptools==80.9.0 wheel==0.45.1
)
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
du -sh .whl
