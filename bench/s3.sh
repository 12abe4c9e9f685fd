#!/usr/bin/env bash
# S3 upload benchmark: ferry's `s3` backend against Debian's rclone
# (`rclone copyto`) putting the same random file into the same local
# s3s-fs 0.14.1, in the same run.
#
#   bench/s3.sh [SIZE_MIB] [RUNS]        (defaults: 512 MiB, 3 runs)
#
# Environment: BENCH_DIR (work directory, default a new /tmp/ferry-s3-bench.*,
# removed at the end unless given), FERRY_S3S_FS (the s3s-fs binary; default
# the lab's cache, installed there when missing and running as root).
#
# Tools, run interleaved so that load from other processes hits them alike:
#   ferry         uploaders/examples/s3_bench with the default ship.s3
#                 settings (16 MiB parts, 4 in flight, SHA-256 of the whole
#                 file first, signed payloads + x-amz-checksum-sha256)
#   rclone        rclone copyto with its defaults (5 MiB chunks, 4 in
#                 flight, MD5 of the whole file first)
#   rclone-16M    rclone copyto --s3-chunk-size 16Mi (ferry's part size)
# Each run stores a new key; the stored file is compared with the source.
# Reported: median wall time, the throughput it gives, median CPU time of
# the client (user + sys) and of the server during that upload, and the
# client's largest peak RSS (/usr/bin/time -v).
set -euo pipefail

SIZE_MIB=${1:-512}
RUNS=${2:-3}
cd "$(dirname "$0")/.."

BENCH_NAME=bench/s3.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh
need rclone rclone
need /usr/bin/time time

S3S=${FERRY_S3S_FS:-/var/cache/ferry-ci/tools/s3s-fs-0.14.1/bin/s3s-fs}
if ! [ -x "$S3S" ]; then
    if [ "$(id -u)" != 0 ] || [ -n "${FERRY_S3S_FS:-}" ]; then
        echo "bench/s3.sh: no s3s-fs at $S3S; run sudo ./lab test once, or: cargo install s3s-fs@0.14.1 --features binary --locked --root /var/cache/ferry-ci/tools/s3s-fs-0.14.1" >&2
        exit 1
    fi
    cargo install s3s-fs@0.14.1 --features binary --locked --root /var/cache/ferry-ci/tools/s3s-fs-0.14.1
fi

if [ -n "${BENCH_DIR:-}" ]; then
    WORK=$BENCH_DIR
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d /tmp/ferry-s3-bench.XXXXXX)
fi
S3S_PID=
cleanup() {
    if [ -n "$S3S_PID" ]; then kill "$S3S_PID" 2>/dev/null || true; fi
    if [ -z "${BENCH_DIR:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

cargo build --release -q -p ferry-uploaders --example s3_bench
BIN=target/release/examples/s3_bench

FILE=$WORK/bundle.bin
head -c $((SIZE_MIB * 1048576)) /dev/urandom >"$FILE"
SRC_SHA=$(sha256sum "$FILE" | cut -d' ' -f1)

AK=AKIAFERRYBENCH000001
SK=ferry-bench-secret-key-0123456789abcdefgh
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATA=$WORK/s3s
mkdir -p "$DATA/bench"
"$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$AK" --secret-key "$SK" "$DATA" >"$WORK/s3s.log" 2>&1 &
S3S_PID=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

cat >"$WORK/rclone.conf" <<EOF
[s3sfs]
type = s3
provider = Other
access_key_id = $AK
secret_access_key = $SK
endpoint = http://127.0.0.1:$PORT
region = us-east-1
force_path_style = true
EOF

TOOLS=(ferry rclone rclone-16M)
command_of() { # tool run -> the command, in CMD, storing key KEY
    KEY="$1-$2.bin"
    case $1 in
    ferry) CMD=(env AWS_ACCESS_KEY_ID="$AK" AWS_SECRET_ACCESS_KEY="$SK" "$BIN" --endpoint "http://127.0.0.1:$PORT" --bucket bench "$KEY" "$FILE") ;;
    rclone) CMD=(env -u AWS_CA_BUNDLE RCLONE_CONFIG="$WORK/rclone.conf" rclone copyto "$FILE" "s3sfs:bench/$KEY") ;;
    rclone-16M) CMD=(env -u AWS_CA_BUNDLE RCLONE_CONFIG="$WORK/rclone.conf" rclone copyto --s3-chunk-size 16Mi "$FILE" "s3sfs:bench/$KEY") ;;
    esac
}
server_cpu() { awk '{print ($14 + $15) / 100}' "/proc/$S3S_PID/stat"; } # utime + stime, USER_HZ 100

cat "$FILE" >/dev/null # into the page cache
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq 1 "$RUNS"); do
    for t in "${TOOLS[@]}"; do
        command_of "$t" "$r"
        sync
        before=$(server_cpu)
        /usr/bin/time -v -o "$WORK/time.$t.$r" "${CMD[@]}" >"$WORK/out.$t.$r" 2>&1 || {
            echo "$t failed:" >&2
            cat "$WORK/out.$t.$r" >&2
            exit 1
        }
        after=$(server_cpu)
        echo "$before $after" | awk '{print $2 - $1}' >"$WORK/server.$t.$r"
        got=$(sha256sum "$DATA/bench/$KEY" | cut -d' ' -f1)
        if [ "$got" != "$SRC_SHA" ]; then
            echo "$t stored different bytes under $KEY" >&2
            exit 1
        fi
        rm -f "$DATA/bench/$KEY" "$DATA"/.bucket-* 2>/dev/null || true
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)


declare -A WALL
echo
echo "input: $SIZE_MIB MiB of random bytes, $RUNS runs each, interleaved, to s3s-fs 0.14.1 on 127.0.0.1"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "rclone: $(rclone version 2>/dev/null | head -1); load average before: $LOAD_BEFORE, after: $LOAD_AFTER"
echo
echo "| tool | median wall s | MiB/s | median client CPU s | median server CPU s | peak RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|"
for t in "${TOOLS[@]}"; do
    W=$(for r in $(seq 1 "$RUNS"); do wall "$WORK/time.$t.$r"; done | median)
    C=$(for r in $(seq 1 "$RUNS"); do cpu "$WORK/time.$t.$r"; done | median)
    S=$(for r in $(seq 1 "$RUNS"); do cat "$WORK/server.$t.$r"; done | median)
    R=$(for r in $(seq 1 "$RUNS"); do rss "$WORK/time.$t.$r"; done | sort -n | tail -1)
    WALL[$t]=$W
    awk -v t="$t" -v w="$W" -v c="$C" -v s="$S" -v r="$R" -v m="$SIZE_MIB" 'BEGIN {
        printf "| %s | %.2f | %.1f | %.2f | %.2f | %.1f |\n", t, w, m/w, c, s, r/1024 }'
done
awk -v f="${WALL[ferry]}" -v a="${WALL[rclone]}" -v b="${WALL[rclone-16M]}" 'BEGIN {
    printf "\nferry is %.2fx the throughput of rclone copyto (defaults) and %.2fx with 16 MiB chunks (median wall time)\n", a/f, b/f }'
echo "command: bench/s3.sh $SIZE_MIB $RUNS"
