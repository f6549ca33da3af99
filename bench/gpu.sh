#!/usr/bin/env bash
# The GPU benchmark in one command (issue #24): one transfer at the paper's settings on random-weight full-size
# SD 1.5 (512 px) and SDXL (1024 px) UNets, CUDA, float16; prints wall time and peak memory per phase.
#
#   bash bench/gpu.sh                  # both models (arguments go to bench/bench_gpu.py, e.g. --models sd15)
#
# Needs torch with CUDA and diffusers. Where diffusers is missing (the lent H200 image has none) and the
# repository root holds a .whl folder of wheels, they are installed into /tmp/site first; make that folder here
# with: pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 importlib_metadata==10.2.0
# The report also goes to $OUT/bench_gpu.txt when OUT is set (the device tool's output folder).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import diffusers" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "bench/gpu.sh: diffusers is not installed and there is no .whl folder of wheels (see this file's header)" >&2
    exit 2
  fi
fi
export PYTHONUNBUFFERED=1
python3 bench/bench_gpu.py "$@" | tee ${OUT:+"$OUT/bench_gpu.txt"}
