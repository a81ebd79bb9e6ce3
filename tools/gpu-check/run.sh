#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU from the repository root (README.md here).
#   tools/gpu-check/run.sh [TIME_LIMIT_S] [BINARY, or BINARY.gz]
# Writes gpu-check.md (the report), gpu-check.log and device.txt into $OUT (default: gpu-check-out).
set -u
limit=${1:-420}
bin=${2:-target/release/examples/gpu_check}
out=${OUT:-gpu-check-out}
mkdir -p "$out"
# A gzipped binary (what is carried to a device machine) is unpacked first.
if [[ "$bin" == *.gz ]]; then
  gunzip -c "$bin" >/tmp/gpu_check && chmod +x /tmp/gpu_check && bin=/tmp/gpu_check
fi

# libnvrtc for cubecl's kernel compiler: the CUDA toolkit's, else the one in Python's nvidia wheels.
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, s) for p in nvidia.__path__ for s in ("cu13/lib", "cuda_nvrtc/lib")))' 2>/dev/null); do
  if ls "$dir"/libnvrtc.so* >/dev/null 2>&1; then
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
done

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm --format=csv
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  ls -l "$bin"
} >"$out/device.txt" 2>&1
cat "$out/device.txt"

"$bin" --backend cuda --time-limit "$limit" --report "$out/gpu-check.md" --overwrite 2>&1 | tee "$out/gpu-check.log"
status=${PIPESTATUS[0]}
echo "gpu_check exit status: $status" | tee -a "$out/gpu-check.log"
exit "$status"
