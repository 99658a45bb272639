#!/usr/bin/env bash
# Builds the xskproxy image (deploy/Containerfile) with podman, without any container registry:
# the two base images (build tools; runtime libraries) are Debian 12 root filesystems made by
# debootstrap from this machine's apt mirror and imported with `podman import`; the Python
# packages are wheels downloaded here with pip. The build itself needs no network, and bakes a
# warm numba cache into the image (deploy/image/warm_numba_cache.py).
#
# Cached between runs under $XSKPROXY_IMAGE_CACHE (default /var/cache/xskproxy-image), never in
# the repository: the debootstrap tarballs (keyed on suite, mirrors and package list; REFRESH_BASE=1
# makes them anew, e.g. for security updates) and the wheelhouse (keyed on the pinned list).
# The image is built from the committed tree (git archive HEAD), not from uncommitted edits.
#
# Usage: scripts/build_image.sh [IMAGE]   (default xskproxy:dev; root, Debian 12)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

IMAGE=${1:-${IMAGE:-xskproxy:dev}}
CACHE=${XSKPROXY_IMAGE_CACHE:-/var/cache/xskproxy-image}
SUITE=bookworm
RUNTIME_PACKAGES=(python3 libxdp1 libbpf1 libelf1 zlib1g ca-certificates iproute2)
BUILD_PACKAGES=(python3 python3-dev python3-venv gcc libc6-dev make cmake pkg-config clang llvm
  libbpf-dev libxdp-dev libelf-dev zlib1g-dev ca-certificates)

say() { echo "build_image: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and rootful podman)"

# -- tools ------------------------------------------------------------------------------------
missing=()
for tool in podman:podman debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# -- the apt mirrors this machine is configured with -----------------------------------------
apt_uris() {
  cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n'
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break } }'
}
MIRROR=${MIRROR:-$(apt_uris | grep -v -- '-security' | grep -m1 '/debian/\?$' || true)}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(apt_uris | grep -m1 -- '-security' || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
MIRROR=${MIRROR%/}
SECURITY_MIRROR=${SECURITY_MIRROR%/}

mkdir -p "$CACHE/rootfs" "$CACHE/debs"

# Hybrid cgroups (v1 controllers, a v2 hierarchy beside them), as on this lab machine: crun
# refuses them, runc runs, with rlimits no higher than a root without CAP_SYS_RESOURCE may set
# (tests/e2e/test_container_smoke.py makes the same choice).
PODMAN=(podman)
BUILD_OPTS=()
if [ -d /sys/fs/cgroup/unified ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
  command -v runc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null
  PODMAN=(podman --runtime runc)
  BUILD_OPTS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=32768:32768)
fi

# base_image NAME PACKAGES...: a podman image localhost/xskproxy-base:NAME-<key> made from a
# debootstrap tarball, itself cached. Prints the image name.
base_image() {
  local name=$1; shift
  local key
  key=$(printf '%s\n' "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "$@" | sha256sum | cut -c1-12)
  local image="localhost/xskproxy-base:$name-$key" tarball="$CACHE/rootfs/$name-$key.tar"
  if [ "${REFRESH_BASE:-0}" = 1 ]; then
    rm -f "$tarball"
    podman image rm -f "$image" >/dev/null 2>&1 || true
  fi
  if podman image exists "$image"; then
    echo "$image"; return
  fi
  if [ ! -s "$tarball" ]; then
    local root="$CACHE/rootfs/$name-$key.tmp"
    rm -rf "$root"
    say "debootstrap $SUITE ($name: $*) from $MIRROR"
    local include
    include=$(IFS=,; echo "$*")
    debootstrap --variant=minbase --include="$include" --cache-dir="$CACHE/debs" \
      "$SUITE" "$root" "$MIRROR" >"$CACHE/rootfs/$name-$key.log" 2>&1 \
      || die "debootstrap failed: see $CACHE/rootfs/$name-$key.log"
    cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    say "security and point-release updates ($name)"
    mount -t proc proc "$root/proc"
    if ! { chroot "$root" apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
           chroot "$root" apt-get -y -qq -o Dpkg::Options::=--force-confold dist-upgrade; } \
           >>"$CACHE/rootfs/$name-$key.log" 2>&1; then
      umount "$root/proc"
      die "apt-get dist-upgrade in the $name rootfs failed: see $CACHE/rootfs/$name-$key.log"
    fi
    umount "$root/proc"
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/* "$root"/tmp/*
    tar --numeric-owner --xattrs -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  say "podman import $tarball"
  podman import --quiet --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
  echo "$image"
}

# -- wheels, pinned to what .venv (the tested set) holds --------------------------------------
[ -x .venv/bin/pip ] || die ".venv is missing: run scripts/bootstrap.sh first"
mkdir -p "$CACHE/wheels"
constraints="$CACHE/wheels/constraints.txt"
.venv/bin/pip freeze --exclude-editable 2>/dev/null | grep -v '^-e\| @ ' >"$constraints.new"
wheel_key=$(cat deploy/requirements-image.txt "$constraints.new" | sha256sum | cut -c1-12)
WHEELS="$CACHE/wheels/$wheel_key"
mv "$constraints.new" "$CACHE/wheels/constraints-$wheel_key.txt"
if [ ! -f "$WHEELS/.complete" ]; then
  say "pip download (runtime wheels for CPython 3.11 on glibc 2.36)"
  rm -rf "$WHEELS"
  .venv/bin/pip download -q -d "$WHEELS" -r deploy/requirements-image.txt \
    -c "$CACHE/wheels/constraints-$wheel_key.txt" --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    2> >(grep -v "is ignored: it is neither" >&2) || die "pip download failed"
  touch "$WHEELS/.complete"
fi

# -- build context: the committed tree, the wheels --------------------------------------------
BUILD_BASE=$(base_image build "${BUILD_PACKAGES[@]}")
RUNTIME_BASE=$(base_image runtime "${RUNTIME_PACKAGES[@]}")
context=$(mktemp -d "$CACHE/context.XXXXXX")
trap 'rm -rf "$context"' EXIT
git archive HEAD | tar -x -C "$context"
mkdir -p "$context/.wheels"
cp "$WHEELS"/*.whl "$context/.wheels/"
cp "$CACHE/wheels/constraints-$wheel_key.txt" "$context/.wheels/constraints.txt"
revision=$(git rev-parse HEAD)
dirty=$(git status --porcelain --untracked-files=no -- dataplane control lab native deploy | head -1)
[ -z "$dirty" ] || say "note: uncommitted changes are not in the image (it is built from HEAD $revision)"

say "podman build $IMAGE (bases $BUILD_BASE, $RUNTIME_BASE)"
started=$(date +%s)
"${PODMAN[@]}" build --pull=never "${BUILD_OPTS[@]}" -f deploy/Containerfile -t "$IMAGE" \
  --build-arg BUILD_BASE="$BUILD_BASE" --build-arg RUNTIME_BASE="$RUNTIME_BASE" \
  --label org.opencontainers.image.revision="$revision" \
  --label org.opencontainers.image.source="xskproxy" \
  "$context"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE from $revision in $(( $(date +%s) - started )) s (podman build), $(( size / 1048576 )) MiB"
