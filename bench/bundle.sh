#!/usr/bin/env bash
# Bundling benchmark: ferry's bundle writer against `tar czf` (gzip -6) and
# `tar -I pigz -cf` on the same generated CRIU -v4 log, in the same run,
# plus the starting point: the tar crate over flate2's GzEncoder (zlib-rs,
# level 6, one thread; `bundle_bench --baseline`).
#
#   bench/bundle.sh [SIZE_MIB] [RUNS]        (defaults: 256 MiB, 5 runs)
#
# Environment: BENCH_DIR (work directory, default a new /tmp/ferry-bench.*,
# removed at the end unless given), FERRY_THREADS (default: all cores),
# FERRY_LEVEL (default 6).
#
# The three tools run interleaved (ferry, pigz, tar czf, ferry, …) so that
# load from other processes hits them alike; the table shows the median
# wall time of each, the throughput that gives, the output size against
# `tar czf` (GNU tar runs `gzip` at its default level, 6), the median CPU
# time (user + sys) and the peak RSS (`/usr/bin/time -v`; for the tar
# pipelines that is the largest single process of the pipeline).
set -euo pipefail

SIZE_MIB=${1:-256}
RUNS=${2:-5}
cd "$(dirname "$0")/.."

BENCH_NAME=bench/bundle.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh
need pigz pigz
need /usr/bin/time time
need gzip gzip

if [ -n "${BENCH_DIR:-}" ]; then
    WORK=$BENCH_DIR
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d /tmp/ferry-bench.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
fi

cargo build --release -q -p ferry-uploaders --examples
BIN=target/release/examples
LOG=criu-dump.log
"$BIN/gen_criu_log" "$WORK/$LOG" "$SIZE_MIB" 2>/dev/null
INPUT=$(stat -c %s "$WORK/$LOG")
cat "$WORK/$LOG" >/dev/null # into the page cache

FERRY_ARGS=()
[ -n "${FERRY_THREADS:-}" ] && FERRY_ARGS+=(--threads "$FERRY_THREADS")
[ -n "${FERRY_LEVEL:-}" ] && FERRY_ARGS+=(--level "$FERRY_LEVEL")

TOOLS=(ferry pigz tar-czf flate2-baseline)
command_of() { # tool -> the command, in CMD
    case $1 in
    ferry) CMD=("$BIN/bundle_bench" "${FERRY_ARGS[@]}" "$WORK/ferry.tar.gz" "$WORK/$LOG") ;;
    flate2-baseline) CMD=("$BIN/bundle_bench" --baseline "$WORK/flate2-baseline.tar.gz" "$WORK/$LOG") ;;
    pigz) CMD=(tar -I pigz -cf "$WORK/pigz.tar.gz" -C "$WORK" "$LOG") ;;
    tar-czf) CMD=(tar czf "$WORK/tar-czf.tar.gz" -C "$WORK" "$LOG") ;;
    esac
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq 1 "$RUNS"); do
    for t in "${TOOLS[@]}"; do
        command_of "$t"
        /usr/bin/time -v -o "$WORK/time.$t.$r" "${CMD[@]}" >/dev/null
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# The outputs must be valid for the system tools.
gzip -t "$WORK/ferry.tar.gz"
tar -tzf "$WORK/ferry.tar.gz" >/dev/null


REF=$(stat -c %s "$WORK/tar-czf.tar.gz")
GZ6=$(gzip -6 -c "$WORK/$LOG" | wc -c)
declare -A WALL
echo
echo "input: $INPUT bytes ($SIZE_MIB MiB CRIU -v4 log), $RUNS runs each, interleaved"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
echo "gzip -6 of the bare log: $GZ6 bytes"
echo
echo "| tool | median wall s | MiB/s | output bytes | vs tar czf (gzip -6) | median CPU s | peak RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for t in "${TOOLS[@]}"; do
    W=$(for r in $(seq 1 "$RUNS"); do wall "$WORK/time.$t.$r"; done | median)
    C=$(for r in $(seq 1 "$RUNS"); do cpu "$WORK/time.$t.$r"; done | median)
    R=$(for r in $(seq 1 "$RUNS"); do rss "$WORK/time.$t.$r"; done | sort -n | tail -1)
    S=$(stat -c %s "$WORK/$t.tar.gz")
    WALL[$t]=$W
    awk -v t="$t" -v w="$W" -v c="$C" -v r="$R" -v s="$S" -v ref="$REF" -v inp="$INPUT" 'BEGIN {
        printf "| %s | %.2f | %.1f | %d | %+.2f %% | %.2f | %.1f |\n", t, w, inp/1048576/w, s, (s/ref-1)*100, c, r/1024 }'
done
awk -v f="${WALL[ferry]}" -v p="${WALL[pigz]}" -v g="${WALL[tar-czf]}" 'BEGIN {
    printf "\nferry is %.2fx the speed of tar -I pigz and %.2fx that of tar czf (median wall time)\n", p/f, g/f }'
echo "command: bench/bundle.sh $SIZE_MIB $RUNS${FERRY_THREADS:+ (FERRY_THREADS=$FERRY_THREADS)}${FERRY_LEVEL:+ (FERRY_LEVEL=$FERRY_LEVEL)}"
