#!/usr/bin/env bash
# One call of the GPU work on a lent device (the workplace's device tool: 10 minutes a call, 15 minutes of device
# time a session, each machine start included). Here first: `bash benchmarks/device_wheels.sh`; then each call
# carries .whl and runs one part:
#     run(command="bash benchmarks/device_call.sh first", carry=[".whl"], timeout_s=600)
# A 15-minute session holds one full call and a short second one while the machine is still warm (30 s), e.g.
#     run(command="DEVICE_CALL_SECONDS=150 bash benchmarks/device_call.sh profile", carry=[".whl"], timeout_s=200)
# (DEVICE_CALL_SECONDS: the seconds by which every step of the call has ended; 540 by default):
#   first    the issue's bars in one call: the kernel on the two paper shapes with text keys, full-size
#            FLUX.1-dev 4096x4096 and HunyuanVideo 768x1280x117, then the CUDA-only tests with the time left
#            (each step under its own limit, inside ~9 minutes: a step that fails or runs long costs its own
#            share, not the next step's)
# The other parts, for later sessions (each well inside one call):
#   kernels  the kernel benchmark, every paper shape (tuning compiles ~14 configs per shape)
#   models1  suite: FLUX.1-dev 4096x4096, HunyuanVideo 768x1280x117 and 720x1280x129
#   tests    the CUDA-only tests (tests/test_cuda.py)
#   models2  suite: Wan 2.1 14B, Wan 2.2 TI2V-5B, Qwen-Image, HunyuanVideo 1.5, Chroma1-HD
#   models3  suite: Z-Image-Turbo, SkyReels-V2 14B, FLUX.3, Qwen-Image 2.1 (2048x2048)
#   models4  suite: LTX-2 19B (1088x1920x121), LTX-Video 13B (704x1216x161), Cosmos-Predict2.5 2B (704x1280x93)
#   models5  suite: Wan 2.2 Animate 14B (720x1280, a 77-frame segment), Kandinsky 5 Pro 19B (768x1280x121)
#   models6  suite: CogVideoX 1.5 5B (768x1360x81), Mochi 1 10B (480x848x163), Allegro 2.8B (720x1280x88)
#   models7  suite: EasyAnimate V5.1 12B (1024x1024x49); Ideogram 4, Krea 2, Ovis-Image 7B (2048x2048)
#   models8  suite: CogView4 6B, CogView3-Plus 3B, HunyuanImage 2.1 17B, SD3.5 Large 8B (2048x2048)
#   models9  suite: HunyuanImage 2.1's 15B refiner, PixArt-Sigma 2K (2048x2048), HiDream-I1 17B, Hunyuan-DiT 1.5B
#            (1024x1024)
#   models10 suite: Lumina-Image 2.0, Lumina-Next, ERNIE-Image, GLM-Image (2048x2048), PRX (1024x1024)
#   models11 suite: NucleusMoE-Image (2048x2048), AuraFlow v0.3 (1536x1536), JoyImage-Edit, Bria Fibo 2.0, OmniGen v1
#            (1024x1024)
#   models12 suite: Cosmos 3 Omni (720x1280x189), MiniMax-H3 (768x1344x124), SANA-WM (704x1280x161)
#   models13 suite: Wan Animate 2 (800x640, an 81-frame segment; its blocks compiled, as its flex attention needs)
#   profile  Nsight Compute (full set, with per-instruction stall sampling) of the tuned triton kernel and
#            dense cuDNN on the two paper shapes: ncu-<case>.ncu-rep (open with ncu-ui) and a text summary
# Every step writes its logs and results straight into $OUT, after every case, so a call cut off at its
# limit still brings back what it measured (at most 8 files come back: `first` writes 8, the others 3 to 4).
# Back here:
# copy $OUT's *.json and *.md into benchmarks/results/, then `python benchmarks/gpu_suite.py --update-readme`.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:-}
case "$part" in
    first | kernels | models1 | tests | models2 | models3 | models4 | models5 | models6 | models7 | models8 | models9 | models10 | models11 | models12 | models13 | profile) ;;
    *) echo "usage: device_call.sh first|kernels|models1|tests|models2|models3|models4|models5|models6|models7|models8|models9|models10|models11|models12|models13|profile (got '$part')" >&2; exit 2 ;;
esac
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
# shellcheck source=benchmarks/device_setup.sh
source benchmarks/device_setup.sh 2>&1 | tee "$OUT/setup.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >>"$OUT/setup.log" 2>&1
status=0
# Seconds since this script started (bash's SECONDS) by which every step has ended: a call's 600, less the copy back.
deadline=${DEVICE_CALL_SECONDS:-540}
step() {  # step LOG LIMIT COMMAND...: COMMAND under the smaller of LIMIT and the time left, its output in $OUT/LOG
    local log=$1 limit=$2 left=$((deadline - SECONDS))
    shift 2
    ((limit < left)) || limit=$left
    if ((limit < 30)); then
        echo "device_call: no time left for '$*'" | tee -a "$OUT/$log"
        status=1
        return
    fi
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
    local code=${PIPESTATUS[0]}
    ((code == 124)) && echo "device_call: '$*' stopped at its ${limit} s limit" | tee -a "$OUT/$log"
    ((code == 0)) || status=1
}
suite() {  # suite NAMES [LIMIT [LOG]]: model cases without the kernel rows (the README table merges kernel_bench's)
    step "${3:-$part}.log" "${2:-540}" python3 benchmarks/gpu_suite.py --models "$1" --no-kernels --no-readme --output "$OUT"
}
cuda_tests() {  # the compiles of every tuning candidate dominate: spread them over the machine's cores
    step tests.log "$1" python3 -m pytest -q -rs -n 8 tests/test_cuda.py
}
case "$part" in
    first)
        step kernels.log 150 python3 benchmarks/kernel_bench.py --output "$OUT" --cases "flux-4k +text,hunyuan 30x48x80 +text"
        suite "flux.1-dev,768x1280x117" 270 models
        cuda_tests 540
        ;;
    kernels) step kernels.log 540 python3 benchmarks/kernel_bench.py --output "$OUT" ;;
    tests) cuda_tests 540 ;;
    profile)  # clocks left alone (METHOD.md); only the two launches inside kernel_bench's profiler range
        for case in "flux-4k +text" "hunyuan 30x48x80 +text"; do
            name=ncu-${case%% *}
            step profile.log 260 ncu --clock-control none --profile-from-start off --set full -f -o "$OUT/$name" \
                python3 benchmarks/kernel_bench.py --profile --cases "$case"
            ncu --import "$OUT/$name.ncu-rep" --page details >"$OUT/$name.txt" 2>&1
        done
        ;;
    models1) suite "flux.1-dev,hunyuanvideo 7" ;;
    models2) suite "wan 2.1,ti2v,qwen-image 1328,hunyuanvideo 1.5,chroma" ;;
    models3) suite "z-image,skyreels,flux.3,qwen-image 2.1" ;;
    models4) suite "ltx-2,ltx-video,predict2.5" ;;
    models5) suite "2.2 animate,kandinsky" ;;
    models6) suite "cogvideox,mochi,allegro" ;;
    models7) suite "easyanimate,ideogram,krea,ovis" ;;
    models8) suite "cogview4,cogview3,hunyuanimage 2.1 2048,sd3.5" ;;
    models9) suite "refiner,pixart,hidream,hunyuandit" ;;
    models10) suite "lumina,ernie,glm,prx" ;;
    models11) suite "nucleus,auraflow,joyimage,fibo 2,omnigen" ;;
    models12) suite "cosmos 3,minimax,sana-wm" ;;
    models13) suite "animate 2" ;;
esac
exit "$status"
