#!/usr/bin/env bash
# Train the MiniWorld's ORG and RETRAIN (mini_object, mini_style, mini_attribute) text-to-image
# models on one GPU, judge them, and lay them out for igmu/miniworld/weights/.
#
#   bash benchmarks/train_miniworld_gpu.sh OUT [more options of train_miniworld_gpu.py]
#
# Needs torch with CUDA, diffusers (0.36-0.39) and transformers 4.57.x importable; run from an
# igmu checkout (the shipped tiny CLIP is read from src/igmu/miniworld/weights/clip).
# Then: cp -r OUT/weights/t2i OUT/weights/retrain src/igmu/miniworld/weights/
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT [--tasks mini_object,...] [--sequential] [--device cpu --steps 4]" >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$1"
shift
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec python "$root/benchmarks/train_miniworld_gpu.py" --out "$out" "$@"
