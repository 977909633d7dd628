#!/usr/bin/env bash
# GPU check: `igmu generate` vs a plain diffusers loop at SD size (fp16 and bf16) and on the
# MiniWorld, then the opt-in GPU tests. Run from the repository root on a machine with a CUDA
# GPU, with igmu's source and diffusers importable, e.g.
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src
#   bash benchmarks/gpu_check.sh
#
# Figures go to $OUT (default /tmp/igmu_gpu_check) as JSON and are printed. Sized for an H200 to
# finish in about two minutes; GPU_TESTS=0 skips the tests.
set -uo pipefail
OUT="${OUT:-/tmp/igmu_gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY="${PYTHON:-python3}"
status=0
start=$(date +%s)
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, \
'cuda', torch.version.cuda, '| diffusers', diffusers.__version__, '| transformers', \
transformers.__version__)"
    echo "cpus $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)"
} 2>&1 | tee "$OUT/machine.txt"

bench() {  # name, then generation_throughput.py arguments
    local name=$1; shift
    echo "== $name"
    timeout 150 "$PY" benchmarks/generation_throughput.py "$@" --json "$OUT/$name.json" \
        > "$OUT/$name.log" 2>&1 || { status=1; echo "FAILED: $name"; tail -20 "$OUT/$name.log"; }
    [ -f "$OUT/$name.json" ] && "$PY" - "$OUT/$name.json" <<'EOF'
import json, sys
f = json.load(open(sys.argv[1]))
print(f"   {f['model']} {f['size']}px {f['steps']} steps batch {f['batch_size']} {f['dtype']}: "
      f"plain {f['plain_images_per_s']} img/s, igmu {f['igmu_images_per_s']} img/s, "
      f"ratio {f['igmu_over_plain']}, identical pixels {f['identical_pixels']}, "
      f"load+fingerprint {f['igmu_load_and_fingerprint_s']} s")
EOF
}

bench sd_fp16 --model sd --device cuda --dtype float16 --images 64 --batch-size 8 --steps 10 \
    --size 512 --repeats 2
bench sd_bf16 --model sd --device cuda --dtype bfloat16 --images 32 --batch-size 8 --steps 10 \
    --size 512 --repeats 1
bench miniworld --model miniworld --device cuda --dtype float32 --images 512 --batch-size 64 \
    --repeats 2

if [ "${GPU_TESTS:-1}" = "1" ]; then
    echo "== pytest -m gpu tests/test_gpu.py"
    timeout 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py \
        > "$OUT/test_gpu.log" 2>&1 || status=1
    tail -3 "$OUT/test_gpu.log"
fi
echo "gpu_check: $(( $(date +%s) - start )) s, status $status, figures in $OUT"
exit $status
