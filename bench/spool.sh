#!/usr/bin/env bash
# Spool write + drain: 1,000 small bundles, then one 1 GiB bundle, to the
# `dir` backend, on a real disk (every fsync is paid), each run under
# /usr/bin/time -v for the peak RSS.
#   bench/spool.sh [RUNS]      BENCH_DIR=… (default /var/tmp) keeps nothing
#   BACKEND=dir (default). The S3 backend is not on this branch yet: when it
#   lands, add an `s3)` case below that points spool_bench at it (endpoint
#   and bucket from the environment) — the measured path is the same drain.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
backend=${BACKEND:-dir}
case "$backend" in
dir) ;;
s3)
    echo "bench/spool.sh: the s3 backend is not built yet; this is the hook for it" >&2
    exit 2
    ;;
*)
    echo "bench/spool.sh: unknown BACKEND=$backend (dir)" >&2
    exit 2
    ;;
esac
cargo build --release --locked -q -p ferry-uploaders --example spool_bench
bin=target/release/examples/spool_bench
base=${BENCH_DIR:-/var/tmp}
one() {
    local d
    d=$(mktemp -d "$base/spool-bench.XXXXXX")
    /usr/bin/time -v "$bin" "$@" "$d" 2>"$d.time" | tr '\n' ' '
    echo "peak_rss_kib=$(awk -F': ' '/Maximum resident/ {print $2}' "$d.time")"
    rm -rf "$d" "$d.time"
}
for i in $(seq "$runs"); do
    echo "small run $i: $(one small 1000 20000)"
done
for i in $(seq "$runs"); do
    echo "big run $i: $(one big 1024)"
done
