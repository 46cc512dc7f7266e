#!/usr/bin/env bash
# Build the meshsec container image without any container registry:
#   1. a wheelhouse of meshsec and its dependencies (pip, from PyPI or an existing --wheelhouse),
#   2. a Debian bookworm rootfs made with debootstrap (Debian's packages: python3, etcd-server),
#      imported with `podman import` as localhost/meshsec-base:bookworm,
#   3. `podman build` of deploy/Containerfile on top, installing only from the wheelhouse,
#   4. a smoke run of the image (no network) and `podman save` to an archive for containerd/kind.
#
# Usage: deploy/build-image.sh [--tag TAG] [--out DIR] [--cache DIR] [--wheelhouse DIR] [--rebuild-base]
# Needs root and Debian packages: debootstrap podman runc.  Exit 0 on success.
# Set MESHSEC_STORAGE_DRIVER=vfs where overlayfs is not available for podman's storage.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)"
TAG="localhost/meshsec:${VERSION}"
OUT="${MESHSEC_IMAGE_OUT:-/var/cache/meshsec-image}"
CACHE="${MESHSEC_IMAGE_CACHE:-/var/cache/meshsec-image/cache}"
WHEELHOUSE=""
REBUILD_BASE=0
BASE="localhost/meshsec-base:bookworm"
MIRROR="${MESHSEC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_PACKAGES="python3,python3-venv,etcd-server,ca-certificates,tzdata"

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --cache) CACHE="$2"; shift 2 ;;
        --wheelhouse) WHEELHOUSE="$2"; shift 2 ;;
        --rebuild-base) REBUILD_BASE=1; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "build-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[build-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { echo "build-image: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and podman need it)"
for tool in debootstrap podman runc; do
    command -v "$tool" >/dev/null || die "$tool missing: apt-get install debootstrap podman runc"
done

mkdir -p "$OUT" "$CACHE"
WORK="$(mktemp -d /tmp/meshsec-image.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# podman as root on this kind of host: runc, cgroupfs, a file event log, and explicit ulimits well
# below this sandbox's hard limits (podman's defaults, and even values equal to the hard limits, fail
# with "error setting rlimit type 7/6: operation not permitted").  They apply to build steps and the
# smoke runs only; Kubernetes sets its own for pods.
lower() { if [ "$1" = unlimited ] || [ "$1" -gt "$2" ]; then echo "$2"; else echo "$(($1 / 2))"; fi; }
NOFILE="$(lower "$(ulimit -Hn)" 8192)" NPROC="$(lower "$(ulimit -Hu)" 8192)"
cat >"$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"
PODMAN=(podman)
if [ -n "${MESHSEC_STORAGE_DRIVER:-}" ]; then
    PODMAN+=(--storage-driver "$MESHSEC_STORAGE_DRIVER")
fi

# 1. Wheelhouse: meshsec and every runtime dependency as wheels for CPython 3.11 (bookworm's).
if [ -z "$WHEELHOUSE" ]; then
    WHEELHOUSE="$CACHE/wheelhouse"
    log "wheelhouse: pip wheel meshsec into $WHEELHOUSE"
    rm -f "$WHEELHOUSE"/meshsec-*.whl
    python3 -m pip wheel -q --disable-pip-version-check --wheel-dir "$WHEELHOUSE" "$ROOT" 2>&1 \
        | grep -v -e "Running pip as the 'root' user" -e "is ignored: it is neither a file" || true
fi
ls "$WHEELHOUSE"/meshsec-*.whl >/dev/null 2>&1 || die "no meshsec wheel in $WHEELHOUSE"
mkdir -p "$WORK/context"
cp -r "$WHEELHOUSE" "$WORK/context/wheelhouse"

# 2. Base: a minimal bookworm rootfs from Debian's packages, cached as a tarball.
ROOTFS_TAR="$CACHE/bookworm-rootfs.tar"
if [ "$REBUILD_BASE" -eq 1 ] || [ ! -s "$ROOTFS_TAR" ]; then
    log "debootstrap bookworm (minbase + $BASE_PACKAGES)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$WORK/rootfs" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    # Trim what a container never uses.
    chroot "$WORK/rootfs" apt-get clean
    rm -rf "$WORK/rootfs"/var/lib/apt/lists/* "$WORK/rootfs"/usr/share/doc/* "$WORK/rootfs"/usr/share/man/* \
        "$WORK/rootfs"/var/cache/debconf/*-old "$WORK/rootfs"/var/log/*.log
    tar --numeric-owner -C "$WORK/rootfs" -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$WORK/rootfs"
    REBUILD_BASE=1
fi
if [ "$REBUILD_BASE" -eq 1 ] || ! "${PODMAN[@]}" image exists "$BASE"; then
    log "podman import $BASE"
    "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$BASE" >/dev/null
fi

# 3. The image.
log "podman build $TAG"
"${PODMAN[@]}" build --network=none --pull=never --build-arg "BASE=$BASE" --build-arg "VERSION=$VERSION" \
    -f "$ROOT/deploy/Containerfile" -t "$TAG" "$WORK/context"

# 4. Smoke test: every entry point starts; the etcd the StatefulSet runs is there.
log "smoke test"
"${PODMAN[@]}" run --rm --network=none "$TAG" meshsec-controller --help >/dev/null
"${PODMAN[@]}" run --rm --network=none "$TAG" meshsec-agent --help >/dev/null
"${PODMAN[@]}" run --rm --network=none "$TAG" meshctl --help >/dev/null
"${PODMAN[@]}" run --rm --network=none "$TAG" etcd --version | head -1
[ "$("${PODMAN[@]}" run --rm --network=none "$TAG" id -u)" = 10001 ] || die "image does not default to uid 10001"
# The controller as the chart runs it: uid 10001, read-only root, the KEK copied from a group-readable
# Secret-like file, `init` then `serve` against etcd, and a clean stop on SIGTERM.
cat >"$WORK/smoke-controller.sh" <<'SMOKE'
set -e
etcd --data-dir /tmp/etcd --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --log-level error --logger zap >/tmp/etcd.log 2>&1 &
python3 -c 'import secrets; print(secrets.token_hex(32))' >/tmp/kek && chmod 0440 /tmp/kek
install -m 0600 /tmp/kek "$MESHSEC_STATE_DIR/kek"
meshsec-controller init >/dev/null
meshsec-controller serve 2>/tmp/serve.log &
pid=$!
for _ in $(seq 1 100); do grep -q "serving on" /tmp/serve.log && break; sleep 0.2; done
kill -TERM "$pid"; wait "$pid"
grep -q "serving on 0.0.0.0:7443, enrollment on 0.0.0.0:7444" /tmp/serve.log || { cat /tmp/serve.log; exit 1; }
echo "controller: init, serve and SIGTERM ok"
SMOKE
"${PODMAN[@]}" run --rm --network=none --read-only --tmpfs /tmp --tmpfs /var/lib/meshsec/controller:mode=0700,U \
    -v "$WORK/smoke-controller.sh:/smoke.sh:ro" -e MESHSEC_ETCD=127.0.0.1:2379 \
    -e MESHSEC_STATE_DIR=/var/lib/meshsec/controller -e MESHSEC_SOCKET= -e MESHSEC_ENROLL_SOCKET= \
    -e MESHSEC_LISTEN=0.0.0.0:7443 -e MESHSEC_ENROLL_LISTEN=0.0.0.0:7444 "$TAG" sh /smoke.sh \
    || die "controller smoke test failed"

ARCHIVE="$OUT/meshsec_${VERSION}.tar"
"${PODMAN[@]}" save --format docker-archive -o "$ARCHIVE.tmp" "$TAG"
mv "$ARCHIVE.tmp" "$ARCHIVE"
log "built $TAG ($("${PODMAN[@]}" image inspect --format '{{.Size}}' "$TAG") bytes); archive $ARCHIVE"
echo "$TAG"
