#!/usr/bin/env bash
# One run on a lent GPU machine for the speed issue: the frame step side by side with diffusers (eager and
# compiled, batch 1/4/8/16, 1 and 2 steps), `streamer file` end to end at 512x512, and memory over 10,000
# frames. Results go to $OUT.
#
# The GPU machine has torch, transformers, opencv and numpy but not diffusers, av or pydantic, and no
# network: carry wheels for its Python (3.12) in .wheels/, made here with
#   pip download --dest .wheels --only-binary=:all: --python-version 3.12 --no-deps \
#       diffusers av pydantic pydantic-core annotated-types typing-inspection tqdm pyyaml
# and pass `carry: [".wheels"]` to the device tool.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-index .wheels/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 330 python3 -m streamer bench --device cuda --batch 1,4,8,16 --steps 1,2 --iterations 20 \
    --json "$OUT/bench.json" 2>&1 | tail -40
timeout 120 python3 benchmarks/bench_file.py --preset sd15-random --size 512x512 --batch 4 --smoothing off \
    --repeat 1 --seconds 20 2>&1 | tail -4 | tee "$OUT/file.txt"
timeout 120 python3 benchmarks/bench_memory.py --preset sd15-random --device cuda --frames 10000 --every 1000 \
    2>&1 | tail -14 | tee "$OUT/memory.txt"
