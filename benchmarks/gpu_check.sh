#!/usr/bin/env bash
# One prepared run on a lent GPU machine for the speed issue, in priority order, each stage under its own
# time limit so a slow stage cannot cost the ones after it (about 9.5 minutes in all):
#   smoke   the CUDA-only paths on the tiny preset (benchmarks/gpu_smoke.py)
#   bench   `streamer bench`: diffusers vs the eager and compiled frame step, batch 1/16/8/4, 1 and 2 steps
#           (sizes compile one at a time in that order; bench.json is rewritten after every row)
#   file    `streamer file` end to end at 512x512, batch 16 (compiled code comes from bench's cache)
#   memory  10,000 frames at batch 16, GPU and host memory sampled every 1,000
#   nvdec   PyAV's h264_cuvid against CPU decoding
#   sdxl    (only when named in STAGES: a call of its own) `streamer bench --arch sdxl` at 1024x1024
# Results land in $OUT, one file per stage. STAGES="smoke file" runs only those.
#
# The machine has torch, transformers, opencv and numpy but not diffusers, av or pydantic, and no network:
# carry wheels for its Python (3.12) in .whl/ (ignored by git), made here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       diffusers av pydantic pydantic-core annotated-types typing-inspection typing_extensions importlib_metadata
# and pass carry [".whl"] with the command `bash benchmarks/gpu_check.sh`.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    nproc
    python3 -c "import torch, diffusers, av, transformers; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'diffusers', diffusers.__version__, 'av', av.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"

STAGES=${STAGES:-smoke bench file memory nvdec}
stage() {
    local name=$1 limit=$2
    shift 2
    case " $STAGES " in *" $name "*) ;; *) return ;; esac
    echo "== $name (limit ${limit} s, starting at $(( $(date +%s) - T0 )) s)"
    timeout -k 5 "$limit" "$@" >"$OUT/$name.txt" 2>&1
    echo "exit status $?" >>"$OUT/$name.txt"
    grep -v -e Warning -e "^ *warnings\." "$OUT/$name.txt" | tail -n 28
}

stage smoke 75 python3 benchmarks/gpu_smoke.py
stage bench 270 python3 -m streamer bench --device cuda --batch 1,16,8,4 --steps 1,2 --vae taesd \
    --iterations 20 --json "$OUT/bench.json"
stage file 100 python3 benchmarks/bench_file.py --preset sd15-random --device cuda --size 512x512 --batch 16 \
    --smoothing off --repeat 2 --seconds 20
stage memory 95 python3 benchmarks/bench_memory.py --preset sd15-random --device cuda --batch 16 \
    --frames 10000 --every 1000
stage nvdec 20 python3 benchmarks/nvdec_probe.py --seconds 20 --size 512x512
stage sdxl 540 python3 -m streamer bench --device cuda --arch sdxl --batch 1,4 --steps 1,2 --vae taesd \
    --iterations 10 --json "$OUT/bench-sdxl.json"
echo "== done at $(( $(date +%s) - T0 )) s"
