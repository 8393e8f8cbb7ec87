#!/usr/bin/env bash
# One prepared run on a lent GPU machine for the speed issues, in priority order, each stage under its own
# time limit so a slow stage cannot cost the ones after it. The default STAGES fit in about 9 minutes on an
# H200 (most of it compiling: about a minute per whole-step graph, batch size and step count, the first time;
# later stages find bench's graphs in the inductor cache):
#   smoke   the CUDA-only paths on the tiny preset (benchmarks/gpu_smoke.py): whole-step graph = eager with
#           smoothing's skips and cuts, the worker thread's own graphs, submit-ahead, file job
#   bench   `streamer bench`, fp16, SD 1.5 size at 512, TAESD, 1 step: diffusers, the eager step and the
#           whole-step graph at batch 1, 16, 8, smoothing off and on (bench.json, rewritten after every row)
#   memory  10,000 frames at batch 16 (smoothing on), GPU and host memory sampled every 1,000
#   serve   `streamer serve` end to end (sd15-random, 512x512, submit-ahead) with 1, 4, 8 aiortc sessions at
#           30 fps: fps per session, p95 capture-to-return latency, frames per model call (serve.json)
# Named in STAGES only (each a few minutes: a second device session):
#   steps2  batch 1, 16 at 2 steps (whole graph), and batch 4
#   modes   the three-graph and no-graph modes at batch 1, 16 (1 step) against the whole graph
#   bf16    the bench stage in bfloat16
#   sdpa    batch 1 and 16, whole graph, with each forced attention kernel (flash, cudnn, efficient)
#   layout  channels_last on the UNet only / the VAE only / off, batch 1 and 16
#   file    `streamer file` end to end at 512x512, batch 16
#   nvdec   PyAV's h264_cuvid against CPU decoding
#   sdxl    `streamer bench --arch sdxl` at 1024x1024, batch 1, whole graph, 1 step
# Results land in $OUT, one file per stage. STAGES="smoke bench" runs only those.
#
# GPU_CHECK_SMALL=1 shrinks every stage to the tiny preset at 64x64 on the CPU, compiling nothing unless
# COMPILE=on, so the script itself is checked on any machine: GPU_CHECK_SMALL=1 OUT=/tmp/out bash $0
#
# The machine has torch, transformers, opencv and numpy but not diffusers, av or pydantic, and no network:
# carry wheels for its Python (3.12) in .whl/ (ignored by git), made here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       diffusers av pydantic pydantic-core annotated-types typing-inspection typing_extensions \
#       importlib_metadata aiortc aioice aiohttp ...   (aiortc and aiohttp with their dependencies, for serve)
# and pass carry [".whl"] with the command `bash benchmarks/gpu_check.sh`.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
SMALL=${GPU_CHECK_SMALL:-}
if [ -n "$SMALL" ]; then
    DEVICE=cpu; ARCH=tiny; RES=64; PRESET=tiny; ITER=2; FRAMES=40; EVERY=20; SECONDS_PER_RUN=6; CLIP=2; REPEAT=1
    SIZE=64; COMPILE=${COMPILE:-off}; BATCHES=1,2; BIG=2; SDXL_ARCH=tiny-sdxl; SDXL_RES=64
    GRAPH=whole; PY=${PY:-python3}; KERNELS=math; LIMIT_SCALE=${LIMIT_SCALE:-4}
else
    DEVICE=cuda; ARCH=sd15; RES=512; PRESET=sd15-random; ITER=20; FRAMES=10000; EVERY=1000; SECONDS_PER_RUN=10; CLIP=20; REPEAT=2
    SIZE=512; COMPILE=${COMPILE:-on}; BATCHES=1,16,8; BIG=16; SDXL_ARCH=sdxl; SDXL_RES=1024
    GRAPH=auto; PY=${PY:-python3}; KERNELS="flash cudnn efficient"
    if ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl 2>&1 | tail -3
        export PYTHONPATH=/tmp/site:$PWD
    fi
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
    nproc
    $PY -c "import torch, diffusers, av, transformers; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'diffusers', diffusers.__version__, 'av', av.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"

STAGES=${STAGES:-smoke bench memory serve}
stage() {
    local name=$1 limit=$(( $2 * ${LIMIT_SCALE:-1} ))
    shift 2
    case " $STAGES " in *" $name "*) ;; *) return ;; esac
    echo "== $name (limit ${limit} s, starting at $(( $(date +%s) - T0 )) s)"
    timeout -k 5 "$limit" "$@" >"$OUT/$name.txt" 2>&1
    echo "exit status $?" >>"$OUT/$name.txt"
    grep -v -e Warning -e "^ *warnings\." -e "^DEBUG" "$OUT/$name.txt" | tail -n 24
}
BENCH=($PY -m streamer bench --device $DEVICE --arch $ARCH --resolution $RES --vae taesd --compile $COMPILE
       --iterations $ITER)

stage smoke 75 $PY benchmarks/gpu_smoke.py --device $DEVICE
stage bench 250 "${BENCH[@]}" --batch $BATCHES --steps 1 --graph $GRAPH --smoothing off,on --json "$OUT/bench.json"
stage memory 75 $PY benchmarks/bench_memory.py --preset $PRESET --device $DEVICE --batch $BIG --frames $FRAMES \
    --every $EVERY --size ${SIZE}x${SIZE}
# serve compiles batch 1 and 8 (bench's cache); 4 sessions pad up to 8.
printf 'preset: %s\ncompile_batch_sizes: [1, 8]\n' "$PRESET" >"$OUT/serve-setup.yaml"
stage serve 130 $PY benchmarks/bench_serve.py --preset $PRESET --device $DEVICE --sessions 1,4,8 \
    --seconds $SECONDS_PER_RUN --settle 3 --size $SIZE --submit-ahead --json "$OUT/serve.json" \
    --serve-arg=--config --serve-arg="$OUT/serve-setup.yaml" --serve-arg=--compile --serve-arg=$COMPILE
stage steps2 300 "${BENCH[@]}" --batch 1,$BIG --steps 2 --graph $GRAPH --no-eager --json "$OUT/bench-steps2.json"
stage modes 300 "${BENCH[@]}" --batch 1,$BIG --steps 1 --graph seams,off --no-eager --json "$OUT/bench-modes.json"
stage bf16 300 "${BENCH[@]}" --dtype bfloat16 --batch 1,$BIG --steps 1 --graph $GRAPH --json "$OUT/bench-bf16.json"
for kernel in $KERNELS; do
    stage sdpa 200 "${BENCH[@]}" --batch 1,$BIG --steps 1 --graph $GRAPH --no-eager \
        --attention $kernel --json "$OUT/bench-sdpa-$kernel.json"
    [ -f "$OUT/sdpa.txt" ] && mv "$OUT/sdpa.txt" "$OUT/sdpa-$kernel.txt"
done
for layout in unet vae off; do
    stage layout 200 "${BENCH[@]}" --batch 1,$BIG --steps 1 --graph $GRAPH --no-eager --channels-last $layout \
        --json "$OUT/bench-layout-$layout.json"
    [ -f "$OUT/layout.txt" ] && mv "$OUT/layout.txt" "$OUT/layout-$layout.txt"
done
stage file 100 $PY benchmarks/bench_file.py --preset $PRESET --device $DEVICE --size ${SIZE}x${SIZE} --batch $BIG \
    --smoothing off --repeat $REPEAT --seconds $CLIP
stage nvdec 20 $PY benchmarks/nvdec_probe.py --seconds 20 --size ${SIZE}x${SIZE}
stage sdxl 540 $PY -m streamer bench --device $DEVICE --arch $SDXL_ARCH --resolution $SDXL_RES --batch 1 --steps 1 \
    --vae taesd --compile $COMPILE --graph $GRAPH --iterations 10 --json "$OUT/bench-sdxl.json"
echo "== done at $(( $(date +%s) - T0 )) s"
