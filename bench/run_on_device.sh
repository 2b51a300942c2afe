#!/usr/bin/env bash
# The accelerator benchmark on a bare GPU host, in one command from the checkout's root:
#
#     bash bench/run_on_device.sh [bench_accelerator.py flags]
#
# Installs the device kit's wheels (`make device-kit` put them in bench/kit/wheels)
# into a private folder with pip --no-index, puts that folder and the checkout on
# PYTHONPATH, and runs bench/bench_accelerator.py unbuffered under a time-out, its
# log and results in $OUT (else ./runs/accelerator). The benchmark rewrites its results
# after every part, so whatever stops it leaves the finished ones.
#
# Environment: OUT (the output folder), PYTHON (default python3), DUOJAX_KIT (default
# bench/kit), BENCH_TIMEOUT (seconds, default 480; then SIGTERM, and SIGKILL BENCH_KILL_AFTER
# seconds later, default 20), DUOJAX_JAX_CACHE (JAX's compilation cache).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/accelerator}
kit=${DUOJAX_KIT:-bench/kit}
python=${PYTHON:-python3}
site=${TMPDIR:-/tmp}/duojax_kit_site
mkdir -p "$out"
log="$out/bench_accelerator.log"
start=$(date +%s)
{
  echo "run_on_device.sh: $(date -u +%FT%TZ) on $(hostname), $($python -V 2>&1)"
  command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
} >"$log" 2>&1
wheels=("$kit"/wheels/*.whl)
if [[ -e ${wheels[0]} ]]; then
  if ! $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --disable-pip-version-check --target "$site" "${wheels[@]}" >>"$log" 2>&1; then
    echo "error: the device kit did not install (see $log)" | tee -a "$log" >&2
    exit 1
  fi
  echo "kit: ${#wheels[@]} wheels installed in $(($(date +%s) - start)) s" | tee -a "$log"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "kit: no wheels in $kit/wheels: the installed packages are used" | tee -a "$log"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout --foreground -k "${BENCH_KILL_AFTER:-20}" "${BENCH_TIMEOUT:-480}" $python bench/bench_accelerator.py --out "$out" "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
echo "run_on_device.sh: exit $status after $(($(date +%s) - start)) s" | tee -a "$log"
exit "$status"
