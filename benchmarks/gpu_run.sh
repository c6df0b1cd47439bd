#!/usr/bin/env bash
# The prepared GPU check for minipeft's CuPy backend (see benchmarks/README-gpu.md).
# Run from the repository root on a machine with an NVIDIA GPU:
#     bash benchmarks/gpu_run.sh                 # logs and results in $OUT (default benchmarks/results/gpu)
#     STEPS="a b" bash benchmarks/gpu_run.sh     # only some steps (a install, b device tests, c whole suite, d benchmark)
#     WHEELS=/path/to/wheels bash benchmarks/gpu_run.sh   # offline: pip --no-index --find-links
# Typical time on one GPU: install ~1 min, (b) ~1 min, (c) ~2-4 min, (d) ~2 min.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
STEPS=${STEPS-a b c d}
mkdir -p "$OUT"
status=0
say() { echo "== $*" | tee -a "$OUT/summary.txt"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }

say "machine: $(nproc) CPU cores"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$OUT/summary.txt"

if want a; then
    extras="dev,gpu"
    if $PY -c "import cupy" > /dev/null 2>&1; then  # an image that ships CuPy (e.g. cupy-cuda13x): keep it
        extras="dev"
    fi
    say "(a) install .[$extras]"
    pip_args=()
    # offline (no registry reachable): the missing wheels (autograd, mlxtend) in $WHEELS
    [ -n "${WHEELS:-}" ] && pip_args=(--no-index --find-links "$WHEELS" --no-build-isolation)
    if ! $PY -m pip install -q "${pip_args[@]}" -e ".[$extras]" > "$OUT/install.log" 2>&1; then
        tail -20 "$OUT/install.log" | tee -a "$OUT/summary.txt"; say "install failed"; exit 1
    fi
fi
if ! MINIPEFT_BACKEND=cupy $PY -c "import minipeft, cupy; print('backend', minipeft.backend.backend_name(), \
'cupy', cupy.__version__)" 2>&1 | tail -3 | tee -a "$OUT/summary.txt"; then
    say "the CuPy backend cannot start (the reason is above)"; exit 1
fi

if want b; then  # fails the run if a device result differs from NumPy's
    say "(b) device tests on CuPy: backbone, fit, io and every method vs NumPy (tests/test_device.py)"
    MINIPEFT_BACKEND=cupy timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_device.py \
        > "$OUT/test_device_cupy.log" 2>&1 || status=1
    tail -3 "$OUT/test_device_cupy.log" | tee -a "$OUT/summary.txt"
fi

if want c; then  # informational: tests that compare device results with host NumPy by implicit
    #             conversion (np.testing on a CuPy array) fail by construction; see README-gpu.md
    say "(c) the whole suite with MINIPEFT_BACKEND=cupy (informational)"
    MINIPEFT_BACKEND=cupy timeout 400 $PY -m pytest -q -p no:cacheprovider -rfE > "$OUT/suite_cupy.log" 2>&1
    grep -E "^(FAILED|ERROR) " "$OUT/suite_cupy.log" | sed 's/ - .*//' | cut -d: -f1 | sort | uniq -c \
        > "$OUT/suite_cupy_failures_by_file.txt"
    tail -1 "$OUT/suite_cupy.log" | tee -a "$OUT/summary.txt"
fi

if want d; then
    say "(d) benchmark: one training step, GPU vs CPU, d in {128, 512}, B = 64, float32"
    timeout 400 $PY benchmarks/gpu_bench.py --d 128 512 --out "$OUT" > "$OUT/bench.log" 2>&1 || status=1
    tail -8 "$OUT/bench.log" | tee -a "$OUT/summary.txt"
fi

say "done (status $status); files in $OUT"
exit $status
