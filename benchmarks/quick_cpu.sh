#!/usr/bin/env bash
# The quick preset's measured run (BENCHMARKS.md, "Training presets"): `resnetlab train` with its
# defaults, timed from a cold data cache, so finding, verifying and caching the data is inside the time.
# Usage: benchmarks/quick_cpu.sh [OUT_DIR [TRAIN FLAGS...]]   (default /tmp/resnetlab-quick; e.g. --seed 1)
set -euo pipefail
out=${1:-/tmp/resnetlab-quick}
shift || true
rm -rf "$out" && mkdir -p "$out"
export XDG_CACHE_HOME="$out/cache"  # a cold cache: nothing verified or decompressed yet
start=$(date +%s.%N)
/usr/bin/time -v resnetlab train --out "$out/run" "$@" > "$out/stdout.txt" 2> "$out/time-v.txt"
end=$(date +%s.%N)
echo "wall_seconds $(python3 -c "print(round($end - $start, 1))")" | tee -a "$out/stdout.txt"
grep -E "Elapsed|Maximum resident" "$out/time-v.txt"
