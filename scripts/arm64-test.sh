#!/usr/bin/env bash
# Build ipcbind and run its test suite on arm64 (aarch64), emulated by qemu-user,
# inside a Debian arm64 root file system.
#
# Usage: sudo scripts/arm64-test.sh [pytest arguments...]
#
# Needs: root (chroot, mounts, binfmt_misc), Linux on x86-64 or any non-arm64 host,
# network access to a Debian mirror (the first run only), and the host packages
# qemu-user-static and mmdebstrap (on Debian/Ubuntu the script installs them with
# apt-get when they are missing). It registers qemu-aarch64 with binfmt_misc (with
# the F flag, so the emulator works inside the chroot) if it is not registered yet.
#
# The root file system is built once and cached outside the checkout, in
# $IPCBIND_ARM64_CACHE (default /var/cache/ipcbind-arm64); later runs reuse it and
# only copy the checkout in, install it and run pytest. Delete the cache directory
# to start over. Python, cffi, psutil and pytest come from Debian's arm64 packages
# (a virtualenv with --system-site-packages), so no wheel is compiled under emulation;
# only the shim is, by the arm64 gcc, against the arm64 glibc headers.
#
# The tests run in the host kernel (qemu-user translates system calls, it has no
# kernel of its own), so the IPC objects they make are the host kernel's. The run
# gets an IPC namespace of its own, and fails if any object is left in it at the end.
#
# Before the tests it runs scripts/emulator-check.c, which shows in plain C what
# qemu-user gets wrong (see docs/development.md, "arm64 and packaging checks").
#
# Environment: IPCBIND_ARM64_CACHE (cache directory), IPCBIND_ARM64_SUITE (Debian
# suite, default bookworm), IPCBIND_ARM64_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/copy-checkout.sh"
cache=${IPCBIND_ARM64_CACHE:-/var/cache/ipcbind-arm64}
suite=${IPCBIND_ARM64_SUITE:-bookworm}
mirror=${IPCBIND_ARM64_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv,python3-dev,python3-pip,python3-setuptools,python3-wheel
packages+=,python3-cffi,python3-psutil,python3-pytest,python3-hypothesis,gcc,libc6-dev
rootfs=$cache/rootfs-$suite

say() { printf 'arm64-test: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
# A build killed half-way may leave /proc, /sys or /dev mounted in the tree: never
# let rm walk into the host's.
remove_tree() {
    if findmnt -rno TARGET | grep -q "^$1\(/\|\$\)"; then
        die "something is still mounted under $1: unmount it first (umount -R $1)"
    fi
    rm -rf --one-file-system "$1"
}

[ "$(id -u)" -eq 0 ] || die "needs root (chroot, mount, binfmt_misc); run: sudo $0 $*"
[ "$(uname -m)" != aarch64 ] || say "the host is arm64: no emulation, but the same chroot"

# ---- host tools ------------------------------------------------------------------
missing=()
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "install these first: ${missing[*]}"
    say "installing host packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# ---- binfmt_misc: run aarch64 ELF files through qemu, also inside the chroot -------
binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e "$binfmt/register" ]; then
    say "mounting binfmt_misc on $binfmt"
    mount -t binfmt_misc binfmt_misc "$binfmt"
fi
if [ "$(uname -m)" != aarch64 ]; then
    if [ ! -e "$binfmt/qemu-aarch64" ] && command -v update-binfmts >/dev/null; then
        say "enabling qemu-aarch64 in binfmt_misc (update-binfmts)"
        update-binfmts --enable qemu-aarch64 || true
    fi
    if [ ! -e "$binfmt/qemu-aarch64" ]; then
        say "registering qemu-aarch64 with binfmt_misc"
        # Magic and mask select little-endian 64-bit ELF files for machine 183 (aarch64);
        # F opens the interpreter now, so it need not exist inside the chroot.
        magic='\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
        mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
        printf ':qemu-aarch64:M::%s:%s:/usr/bin/qemu-aarch64-static:F\n' "$magic" "$mask" \
            > "$binfmt/register"
    fi
    grep -qx enabled "$binfmt/qemu-aarch64" || echo 1 > "$binfmt/qemu-aarch64"
    grep -q '^flags: .*F' "$binfmt/qemu-aarch64" \
        || die "qemu-aarch64 is registered without the F flag, so the chroot cannot find" \
               "the emulator: remove it (echo -1 > $binfmt/qemu-aarch64) and rerun"
fi

# ---- the root file system (cached) -----------------------------------------------
mkdir -p "$cache"
# One run at a time: they share the root file system and its /build.
exec 9> "$cache/lock"
flock -n 9 || { say "waiting for another run to finish"; flock 9; }
stamp="suite=$suite mirror=$mirror packages=$packages"
if [ "$(cat "$rootfs/.ipcbind-stamp" 2>/dev/null)" != "$stamp" ]; then
    say "building the Debian $suite arm64 root file system in $rootfs (once; about 10 minutes)"
    remove_tree "$rootfs.new"
    start=$SECONDS
    mmdebstrap --quiet --arch=arm64 --variant=apt --include="$packages" \
        "$suite" "$rootfs.new" "$mirror"
    printf '%s\n' "$stamp" > "$rootfs.new/.ipcbind-stamp"
    remove_tree "$rootfs"
    mv "$rootfs.new" "$rootfs"
    say "root file system ready in $((SECONDS - start)) s"
else
    say "reusing the root file system in $rootfs"
fi

# ---- copy the checkout in: the files git tracks, as they are in the working tree -
work=$rootfs/build
remove_tree "$work"
mkdir -p "$work/src" "$work/run"
copy_checkout "$here" "$work/src"
# pytest runs in a copy without ipcbind/, so the installed package (with the arm64
# shim) is the one imported, never the checkout's sources.
cp -r "$work/src/." "$work/run/"
rm -rf "$work/run/ipcbind"

# The tests mark qemu-user's known faults (tests/conftest.py) by this variable.
emulator=qemu-user
[ "$(uname -m)" != aarch64 ] || emulator=
printf 'export IPCBIND_EMULATOR=%s\n' "$emulator" > "$work/env.sh"
cat > "$work/inside.sh" <<'EOF'
set -eu
. /build/env.sh
export HOME=/root LC_ALL=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
echo "arm64-test: inside: $(uname -m), $(python3 --version), gcc $(gcc -dumpfullversion)," \
    "$(ldd --version | head -1)"
python3 -m venv --system-site-packages /build/venv
t0=$(date +%s)
# Build requirements (setuptools, wheel, cffi) and the test tools come from Debian's
# packages, so pip neither downloads nor compiles anything under emulation but the
# shim itself. Debian's mypy is older than the test extra asks for: the typing test,
# which is the same on every architecture, skips.
/build/venv/bin/pip install -q --no-build-isolation --no-deps '/build/src'
echo "arm64-test: inside: installed in $(( $(date +%s) - t0 )) s"
cd /build/run
/build/venv/bin/python - <<'PY'
import platform
from ipcbind.syscalls import ffi
print(f"arm64-test: inside: struct layouts as cffi sees them ({platform.machine()}):")
for struct in ("struct ipc_perm", "struct msqid_ds", "struct semid_ds", "struct sembuf"):
    fields = ", ".join(f"{name}@{ffi.offsetof(struct, name)}:{ffi.sizeof(f.type)}"
                       for name, f in ffi.typeof(struct).fields)
    print(f"  {struct} size {ffi.sizeof(struct)}: {fields}")
PY
# What the emulator gets wrong, seen from plain C: read it before blaming ipcbind.
gcc -O1 -o /tmp/emulator-check /build/src/scripts/emulator-check.c && /tmp/emulator-check
t0=$(date +%s)
set +e
/build/venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
echo "arm64-test: inside: pytest took $(( $(date +%s) - t0 )) s, exit status $rc"
exit $rc
EOF

# A private mount namespace, so the mounts vanish with it even if this script is
# killed, and a private IPC namespace, so that the check below sees exactly the
# objects this run made (the machine may be running other suites at the same time).
# The namespace would free leftovers when it ends: look before it does.
unshare --mount --ipc --propagation private -- sh -uc '
    root=$1; shift
    mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" \
        && mount --rbind /sys "$root/sys" && mount -t tmpfs tmpfs "$root/tmp" || exit 1
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot "$root" /bin/sh /build/inside.sh "$@"
    rc=$?
    left=$(cat /proc/sysvipc/msg /proc/sysvipc/sem | awk "\$2 ~ /^[0-9]+\$/" | wc -l)
    if [ "$left" -ne 0 ]; then
        echo "arm64-test: the run left $left IPC object(s) behind:" >&2
        cat /proc/sysvipc/msg /proc/sysvipc/sem >&2
        [ "$rc" -ne 0 ] || rc=1
    else
        echo "arm64-test: no IPC object left behind" >&2
    fi
    exit $rc
' sh "$rootfs" "$@"
