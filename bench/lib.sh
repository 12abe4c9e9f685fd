# Shared by the bench/*.sh drivers: installing what they need, and reading
# `/usr/bin/time -v` reports. Source it; BENCH_NAME names the caller in
# messages.

# need PROGRAM PACKAGE: install PACKAGE with apt-get when PROGRAM is missing.
need() {
    if ! command -v "$1" >/dev/null 2>&1 && ! [ -x "$1" ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "${BENCH_NAME:-bench}: $1 is missing; install the $2 package" >&2
            exit 1
        fi
        echo "installing $2 (for $1)" >&2
        apt-get install -y -qq "$2" >/dev/null 2>&1 || {
            apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
        }
    fi
}

# The median of the numbers on stdin.
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# From a `time -v` report: wall seconds ("h:mm:ss" or "m:ss.cc"), CPU
# seconds (user + sys), peak RSS in KiB.
wall() { awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,p,":"); s=0; for(i=1;i<=n;i++) s=s*60+p[i]; print s}' "$1"; }
cpu() { awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {print u+s}' "$1"; }
rss() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }
