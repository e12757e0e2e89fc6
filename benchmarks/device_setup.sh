# Source this first in every command on a lent GPU (the machine starts bare each time), with `.whl` carried:
#     source benchmarks/device_setup.sh && python benchmarks/kernel_bench.py
# (fetch the wheels here first: bash benchmarks/device_wheels.sh). Installs the carried wheels and this
# checkout (editable, no dependencies: the image has torch, triton, transformers, accelerate and the rest)
# into the image's Python, then prints what the GPU run will be using.
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "device_setup: no wheels in .whl/: run 'bash benchmarks/device_wheels.sh' here and carry .whl" >&2
    return 1 2>/dev/null || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade .whl/*.whl &&
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e . || {
    echo "device_setup: install failed (see above)" >&2
    return 1 2>/dev/null || exit 1
}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 - <<'PY'
import diffusers, torch, triton
import gna_diffusers.patches  # the package layout maps patches/ into gna_diffusers
print(f"device_setup: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} "
      f"| diffusers {diffusers.__version__} | gna_diffusers from {gna_diffusers.__file__}")
from gna_diffusers.cli import main

main(["backends"])  # which GNA backend the run will take (triton expected), and why any other cannot run
PY
