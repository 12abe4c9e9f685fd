#!/usr/bin/env bash
# GitHub artifacts benchmark: ferry's `github` backend uploading and
# downloading one bundle through the protocol fake over loopback, the fake
# in its own process so `/usr/bin/time -v` measures the backend alone.
#
#   bench/github.sh [SIZE_MIB] [RUNS]       (defaults: 256 MiB, 3 runs)
#
# Modes: `blocks` (8 MiB blocks, 4 in flight: the default settings),
# `blocks-1` (8 MiB blocks, one at a time), `single` (one Put Blob of the
# whole file), `get` (REST listing, 302, blob download, digest check).
# The table shows the median wall time, throughput and peak RSS.
set -euo pipefail

SIZE_MIB=${1:-256}
RUNS=${2:-3}
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "bench/github.sh: install the time package" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ferry-github-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cargo build --release -q -p ferry-tests --example github_bench
BIN=target/release/examples/github_bench

# A bundle-like file: gzip magic, then incompressible bytes.
{ printf '\x1f\x8b\x08\x00'; head -c $((SIZE_MIB * 1048576 - 4)) /dev/urandom; } >"$WORK/bundle.tar.gz"
cat "$WORK/bundle.tar.gz" >/dev/null

coproc SERVER { exec "$BIN" serve; }
while read -r line <&"${SERVER[0]}"; do
    [ "$line" = READY ] && break
    export "${line?}"
done

run() { # mode run
    local mode=$1 r=$2 key="bench-$1-$2.tar.gz"
    case $mode in
    blocks) BENCH_BLOCK_KIB=8192 BENCH_CONCURRENCY=4 /usr/bin/time -v -o "$WORK/time.$mode.$r" "$BIN" put "$key" "$WORK/bundle.tar.gz" ;;
    blocks-1) BENCH_BLOCK_KIB=8192 BENCH_CONCURRENCY=1 /usr/bin/time -v -o "$WORK/time.$mode.$r" "$BIN" put "$key" "$WORK/bundle.tar.gz" ;;
    single) BENCH_BLOCK_KIB=$((SIZE_MIB * 1024)) /usr/bin/time -v -o "$WORK/time.$mode.$r" "$BIN" put "$key" "$WORK/bundle.tar.gz" ;;
    get)
        rm -f "$WORK/got.tar.gz"
        /usr/bin/time -v -o "$WORK/time.$mode.$r" "$BIN" get "bench-blocks-$r.tar.gz" "$WORK/got.tar.gz"
        cmp "$WORK/bundle.tar.gz" "$WORK/got.tar.gz"
        ;;
    esac
}

MODES=(blocks blocks-1 single get)
for r in $(seq 1 "$RUNS"); do
    for m in "${MODES[@]}"; do
        run "$m" "$r" >"$WORK/out.$m.$r"
    done
done
exec {SERVER[1]}>&-
wait "$SERVER_PID" || true

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
secs() { # "h:mm:ss" or "m:ss.cc" -> seconds
    awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }'
}
printf '%-9s %9s %9s %12s\n' mode "wall s" "MiB/s" "peak RSS"
for m in "${MODES[@]}"; do
    wall=$(for r in $(seq 1 "$RUNS"); do grep 'Elapsed (wall' "$WORK/time.$m.$r" | awk '{print $NF}' | secs; done | median)
    rss=$(for r in $(seq 1 "$RUNS"); do grep 'Maximum resident' "$WORK/time.$m.$r" | awk '{print $NF}'; done | median)
    printf '%-9s %9.2f %9.0f %9d MiB\n' "$m" "$wall" "$(echo "$SIZE_MIB / $wall" | bc -l)" $((rss / 1024))
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
