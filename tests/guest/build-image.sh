#!/bin/bash
# Build (or reuse) the cached Debian 12 guest image used by ferry's QEMU tests.
#
# Output: the cache dir path, as the LAST line of stdout. Progress goes to stderr.
# Cache:  ${FERRY_CACHE:-/var/cache/ferry-ci}/guest/<key>/ where <key> is the
#         sha256 of this script + the OLD/NEW kernel ABIs + the package list.
#         A dir with a `complete` marker is reused as is.
# Needs root to build (mmdebstrap --mode=root, chroot); reusing a cache does not.
#
# Environment:
#   FERRY_CACHE            cache root (default /var/cache/ferry-ci)
#   FERRY_DEBIAN_MIRROR    override the bookworm mirror (default: the host's apt sources)
#   FERRY_SECURITY_MIRROR  override the bookworm-security mirror (default: the host's apt sources)
#   FERRY_KEEP_OLD_IMAGES  if 1, do not delete other keys' cache dirs
set -euo pipefail
shopt -s nullglob

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
CACHE_ROOT=${FERRY_CACHE:-/var/cache/ferry-ci}
GUEST_ROOT=$CACHE_ROOT/guest
T0=$SECONDS

log() { printf '[build-image %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Packages of the lab image (vm-lab.md, step 1) plus sudo. Kernels are added separately.
PACKAGES=(systemd-sysv udev dbus libpam-systemd openssh-server criu kexec-tools iptables
  procps lsof iproute2 ifupdown netbase kmod initramfs-tools less psmisc sudo)

is_root() { [ "$(id -u)" = 0 ]; }

# ---------------------------------------------------------------------------
# Host tools: install what is missing (CI runs on a fresh Debian 12 as root).
# ---------------------------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update (host)"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
    APT_UPDATED=1
  fi
}

ensure_tools() {
  local -a need=()
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  command -v gpg >/dev/null || need+=(gpg) # mmdebstrap uses it to pick signed-by keyrings
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  command -v qemu-img >/dev/null || need+=(qemu-utils)
  command -v apt-ftparchive >/dev/null || need+=(apt-utils)
  command -v ssh-keygen >/dev/null || need+=(openssh-client)
  command -v dpkg-deb >/dev/null || need+=(dpkg)
  command -v flock >/dev/null || need+=(util-linux)
  if [ ${#need[@]} -gt 0 ]; then
    is_root || die "missing host tools (${need[*]}) and not root to install them"
    apt_update_once
    log "installing host tools: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >&2
  fi
}

# ---------------------------------------------------------------------------
# Kernel ABIs: the two newest linux-image-6.1.0-NN-cloud-amd64 known to apt.
# ---------------------------------------------------------------------------
lists_present() {
  local f
  for f in /var/lib/apt/lists/*_Packages*; do return 0; done
  return 1
}

pick_kernels() {
  if ! lists_present; then
    is_root || die "apt lists are missing and not root to run apt-get update"
    apt_update_once
  fi
  local abis
  abis=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' \
    | sed -n 's/^linux-image-\(6\.1\.0-[0-9]*-cloud-amd64\) .*/\1/p' | sort -uV | tail -n 2)
  if [ "$(printf '%s\n' "$abis" | grep -c .)" -lt 2 ] && [ "$APT_UPDATED" = 0 ] && is_root; then
    apt_update_once
    abis=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' \
      | sed -n 's/^linux-image-\(6\.1\.0-[0-9]*-cloud-amd64\) .*/\1/p' | sort -uV | tail -n 2)
  fi
  [ "$(printf '%s\n' "$abis" | grep -c .)" -eq 2 ] \
    || die "need two linux-image-6.1.0-NN-cloud-amd64 packages in apt-cache, found: '${abis//$'\n'/ }'"
  OLD_KERNEL=$(printf '%s\n' "$abis" | head -n 1)
  NEW_KERNEL=$(printf '%s\n' "$abis" | tail -n 1)
}

# ---------------------------------------------------------------------------
# Mirrors: the URIs the host's apt uses for bookworm and bookworm-security.
# ---------------------------------------------------------------------------
# Prints "<uri> <suite>" pairs from deb822 *.sources and one-line *.list files.
host_apt_sources() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    awk '
      function flush() { if (types ~ /(^| )deb( |$)/) { n = split(uris, u, " "); m = split(suites, s, " ");
                           for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print u[i], s[j] }
                         types = ""; uris = ""; suites = "" }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]*#/ { next }
      tolower($1) == "types:"  { $1 = ""; types = $0 }
      tolower($1) == "uris:"   { $1 = ""; uris = $0 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      END { flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [opts] uri suite components...
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 { print $2, $3 }'
  done
}

pick_mirrors() {
  local srcs
  srcs=$(host_apt_sources | sort -u)
  DEBIAN_MIRROR=${FERRY_DEBIAN_MIRROR:-$(printf '%s\n' "$srcs" | awk '$2 == "bookworm" { print $1; exit }')}
  SECURITY_MIRROR=${FERRY_SECURITY_MIRROR:-$(printf '%s\n' "$srcs" | awk '$2 == "bookworm-security" { print $1; exit }')}
  DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
  SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
}

# ---------------------------------------------------------------------------
# Cache key and fast path.
# ---------------------------------------------------------------------------
compute_key() {
  KEY=$( { cat "$SCRIPT_PATH"; printf 'OLD=%s\nNEW=%s\nPACKAGES=%s\n' "$OLD_KERNEL" "$NEW_KERNEL" "${PACKAGES[*]}"; } \
    | sha256sum | cut -c1-16)
  DEST=$GUEST_ROOT/$KEY
}

cached_exit() {
  if [ -f "$DEST/complete" ]; then
    log "cached image $DEST (old=$OLD_KERNEL new=$NEW_KERNEL)${1:+ $1}"
    printf '%s\n' "$DEST"
    exit 0
  fi
}

ensure_tools
pick_kernels
compute_key
cached_exit

is_root || die "building the guest image needs root (mmdebstrap --mode=root)"
mkdir -p "$GUEST_ROOT"

# One builder at a time; the others wait and then take the fast path.
exec 9>"$GUEST_ROOT/.lock"
if ! flock -n 9; then
  log "another build holds $GUEST_ROOT/.lock, waiting"
  flock 9
fi
cached_exit "(built by a concurrent run)"

# A build is due anyway: refresh the host's lists first, so the ABIs we pick are
# still in the archive (old ones rotate out), then look at the cache again.
if [ "$APT_UPDATED" = 0 ]; then
  apt_update_once
  pick_kernels
  compute_key
  cached_exit "(after apt-get update)"
fi

pick_mirrors
log "building key=$KEY old=$OLD_KERNEL new=$NEW_KERNEL"
log "mirrors: $DEBIAN_MIRROR (bookworm) $SECURITY_MIRROR (bookworm-security)"

# Leftovers of interrupted builds (we hold the lock, so nobody else is building).
for d in "$GUEST_ROOT"/.tmp-*; do
  log "removing stale build dir $d"
  rm -rf --one-file-system "$d"
done

WORK=$GUEST_ROOT/.tmp-$KEY-$$
mkdir -p "$WORK"
cleanup() {
  local rc=$?
  if [ -d "$WORK" ]; then
    rm -rf --one-file-system "$WORK"
  fi
  [ "$rc" = 0 ] || log "build failed (exit $rc)"
}
trap cleanup EXIT

ROOTFS=$WORK/rootfs
REPO=$WORK/repo
PKGS=$WORK/pkgs
mkdir -p "$REPO" "$PKGS"

# ---------------------------------------------------------------------------
# The fake meta-package ferry-lab-kernel: v1 -> OLD (in the image), v2 -> NEW (in the repo).
# ---------------------------------------------------------------------------
make_meta() { # version abi outdir
  local d=$WORK/meta-$1
  mkdir -p "$d/DEBIAN"
  cat >"$d/DEBIAN/control" <<EOF
Package: ferry-lab-kernel
Version: $1
Architecture: all
Maintainer: ferry CI <ci@ferry.invalid>
Section: kernel
Priority: optional
Depends: linux-image-$2
Description: ferry lab kernel pin
 Depends on the kernel the ferry test guest should run. Version 1 is installed
 in the image; version 2, in the guest's local repo, pulls in the newer kernel.
EOF
  dpkg-deb --root-owner-group -Zgzip --build "$d" "$3/ferry-lab-kernel_$1_all.deb" >&2
}
make_meta 1 "$OLD_KERNEL" "$PKGS"
make_meta 2 "$NEW_KERNEL" "$REPO"

# ---------------------------------------------------------------------------
# SSH key for root.
# ---------------------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -C ferry-ci -f "$WORK/id_ed25519"

# ---------------------------------------------------------------------------
# The rootfs.
# ---------------------------------------------------------------------------
INCLUDE=$(IFS=,; echo "${PACKAGES[*]},linux-image-$OLD_KERNEL")
export FERRY_WORK=$WORK FERRY_PKGS=$PKGS FERRY_REPO=$REPO FERRY_NEW_KERNEL=$NEW_KERNEL

log "mmdebstrap (this is the long part)"
# shellcheck disable=SC2016 # the hooks are expanded by mmdebstrap's shell, with $1 = rootfs
mmdebstrap --mode=root --variant=minbase \
  --include="$INCLUDE" \
  --customize-hook='cp "$FERRY_PKGS"/ferry-lab-kernel_1_all.deb "$1/tmp/" && chroot "$1" dpkg -i /tmp/ferry-lab-kernel_1_all.deb && rm "$1/tmp/ferry-lab-kernel_1_all.deb"' \
  --customize-hook='chroot "$1" apt-get clean && chroot "$1" apt-get -qq -y --no-install-recommends --download-only install "linux-image-$FERRY_NEW_KERNEL" >&2 && cp "$1"/var/cache/apt/archives/*.deb "$FERRY_REPO/" && chroot "$1" apt-get clean' \
  --customize-hook='chroot "$1" apt-get -qq -y --download-only --reinstall install sudo >&2 && cp "$1"/var/cache/apt/archives/sudo_*.deb "$FERRY_PKGS/" && chroot "$1" apt-get clean' \
  --customize-hook='sed -i "s/^LOAD_KEXEC=.*/LOAD_KEXEC=false/" "$1/etc/default/kexec" && grep -q "^LOAD_KEXEC=false" "$1/etc/default/kexec"' \
  --customize-hook=': > "$1/etc/resolv.conf"' \
  --customize-hook='sed -i "s/^MODULES=.*/MODULES=dep/" "$1/etc/initramfs-tools/initramfs.conf" && grep -q "^MODULES=dep" "$1/etc/initramfs-tools/initramfs.conf"' \
  --customize-hook='echo ferry-guest > "$1/etc/hostname"' \
  --customize-hook='printf "%s\n" "127.0.0.1 localhost" "127.0.1.1 ferry-guest" "10.0.2.15 ferry-guest.lab ferry-guest" "10.0.2.2 ferry-host.lab ferry-host" "10.0.2.100 ferry-telemetry.lab ferry-telemetry" "::1 localhost ip6-localhost ip6-loopback" > "$1/etc/hosts"' \
  --customize-hook='printf "%s\n" "auto lo" "iface lo inet loopback" "" "auto eth0" "iface eth0 inet static" "    address 10.0.2.15/24" "    gateway 10.0.2.2" > "$1/etc/network/interfaces"' \
  --customize-hook='mkdir -p "$1/srv/ferry-repo" && printf "%s\n" "/dev/vda / ext4 rw,errors=remount-ro 0 0" "LABEL=ferryrepo /srv/ferry-repo ext4 ro,nofail 0 0" > "$1/etc/fstab"' \
  --customize-hook='printf "%s\n" "deb [trusted=yes] file:/srv/ferry-repo ./" > "$1/etc/apt/sources.list" && rm -f "$1"/etc/apt/sources.list.d/*' \
  --customize-hook='install -d -m 0700 "$1/root/.ssh" && install -m 0600 "$FERRY_WORK/id_ed25519.pub" "$1/root/.ssh/authorized_keys"' \
  --customize-hook='echo root:root | chroot "$1" chpasswd' \
  --customize-hook='printf "%s\n" "PermitRootLogin prohibit-password" "PubkeyAuthentication yes" "UseDNS no" > "$1/etc/ssh/sshd_config.d/ferry.conf"' \
  --customize-hook='chroot "$1" install -d -m 2755 -g systemd-journal /var/log/journal' \
  --customize-hook='cp "$1/boot/vmlinuz-'"$OLD_KERNEL"'" "$FERRY_WORK/vmlinuz-'"$OLD_KERNEL"'" && cp "$1/boot/initrd.img-'"$OLD_KERNEL"'" "$FERRY_WORK/initrd.img-'"$OLD_KERNEL"'"' \
  bookworm "$ROOTFS" \
  "deb $DEBIAN_MIRROR bookworm main" \
  "deb $SECURITY_MIRROR bookworm-security main" >&2
log "mmdebstrap done"

chmod 0644 "$WORK/vmlinuz-$OLD_KERNEL" "$WORK/initrd.img-$OLD_KERNEL"
NEW_DEBS=("$REPO"/linux-image-"$NEW_KERNEL"_*.deb)
[ ${#NEW_DEBS[@]} -ge 1 ] || die "linux-image-$NEW_KERNEL was not downloaded into the repo"

# ---------------------------------------------------------------------------
# A newer sudo for the repo: the image's own package, version bumped, so the
# upgrade really replaces /usr/bin/sudo while `sudo ferry upgrade` runs it
# (dpkg leaves the old set-uid copy mode 0600: the lost exec bit ferry must
# give back). Files, modes and owners stay exactly as packaged.
# ---------------------------------------------------------------------------
repack_bumped() { # deb outdir suffix
  local d=$WORK/repack ver
  rm -rf "$d"
  dpkg-deb -R "$1" "$d"
  ver=$(sed -n 's/^Version: //p' "$d/DEBIAN/control")
  sed -i "s/^Version: .*/Version: $ver$3/" "$d/DEBIAN/control"
  dpkg-deb -Zgzip --build "$d" "$2/" >&2
  rm -rf "$d"
}
# (nullglob is on: an unmatched glob is an empty array, never a literal.)
SUDO_DEBS=("$PKGS"/sudo_*.deb)
[ ${#SUDO_DEBS[@]} -eq 1 ] || die "expected one downloaded sudo package, found ${#SUDO_DEBS[@]}"
repack_bumped "${SUDO_DEBS[0]}" "$REPO" "+ferry1"
BUMPED=("$REPO"/sudo_*+ferry1_*.deb)
[ ${#BUMPED[@]} -eq 1 ] || die "the bumped sudo is missing from the repo"

# ---------------------------------------------------------------------------
# The guest's local apt repo (flat), on its own ext4 image labelled ferryrepo.
# ---------------------------------------------------------------------------
log "indexing the local repo: $(cd "$REPO" && echo *.deb)"
(
  cd "$REPO"
  apt-ftparchive packages . >Packages
  gzip -9nk Packages
  apt-ftparchive -o APT::FTPArchive::Release::Origin=ferry-ci \
    -o APT::FTPArchive::Release::Label=ferry-ci release . >Release
)
REPO_MB=$(( $(du -sm "$REPO" | cut -f1) * 2 + 32 ))
truncate -s "${REPO_MB}M" "$WORK/repo.img"
mkfs.ext4 -q -F -L ferryrepo -E root_owner=0:0 -d "$REPO" "$WORK/repo.img" >&2
rm -rf "$REPO"

# ---------------------------------------------------------------------------
# The root disk: raw ext4, no partitions, 3 GiB sparse.
# ---------------------------------------------------------------------------
log "mkfs.ext4 -d rootfs -> base.raw"
truncate -s 3G "$WORK/base.raw"
mkfs.ext4 -q -F -L ferryroot -d "$ROOTFS" "$WORK/base.raw" >&2
rm -rf --one-file-system "$ROOTFS" "$PKGS" "$WORK"/meta-*

cat >"$WORK/info.env" <<EOF
KEY=$KEY
OLD_KERNEL=$OLD_KERNEL
NEW_KERNEL=$NEW_KERNEL
BASE_RAW=$DEST/base.raw
REPO_IMG=$DEST/repo.img
VMLINUZ=$DEST/vmlinuz-$OLD_KERNEL
INITRD=$DEST/initrd.img-$OLD_KERNEL
SSH_KEY=$DEST/id_ed25519
DEBIAN_MIRROR=$DEBIAN_MIRROR
SECURITY_MIRROR=$SECURITY_MIRROR
BUILT_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
BUILD_SECONDS=$((SECONDS - T0))
EOF
touch "$WORK/complete"
sync -f "$WORK/base.raw" 2>/dev/null || sync

rm -rf --one-file-system "$DEST"
mv -T "$WORK" "$DEST"
log "image ready in $DEST ($(du -sh --apparent-size "$DEST/base.raw" | cut -f1) apparent, $(du -sh "$DEST/base.raw" | cut -f1) used)"

# Other keys' images are stale now: free the disk.
if [ "${FERRY_KEEP_OLD_IMAGES:-0}" != 1 ]; then
  for d in "$GUEST_ROOT"/*/; do
    d=${d%/}
    [ "$d" = "$DEST" ] && continue
    # Test processes hold a shared lock on `complete` while they use an image.
    if [ -f "$d/complete" ] && ! flock -n -x "$d/complete" true; then
      log "keeping old image $d: in use"
      continue
    fi
    log "removing old image $d"
    rm -rf --one-file-system "$d"
  done
fi

log "done in $((SECONDS - T0)) s"
printf '%s\n' "$DEST"
