#!/usr/bin/env bash
# Apply meshsec's chart to a real Kubernetes API server and check the RBAC matrix.
#
# Starts etcd and kube-apiserver on 127.0.0.1 only (random ports, a temporary directory, removed on
# exit), installs the chart with Helm's own engine (helm-python-sdk, the API server's capabilities),
# server-side dry-runs every kustomize overlay, checks that every object was stored, then asks the
# server with `kubectl auth can-i --as=...` what each meshsec ServiceAccount may and may not do.
#
# kube-apiserver 1.20.2 is built once from Debian's `kubernetes` source package with Debian's Go into
# $MESHSEC_K8S_CACHE (default /var/cache/meshsec-k8s; minutes on 2 cores); its vendored reflect2
# 1.0.1 crashes with Go 1.19 and is replaced by Debian's 1.0.2.  kubectl 1.20.2 is Debian's
# kubernetes-client package, unpacked there too.
#
# Usage: deploy/test-cluster.sh [--build-only] [--keep] [--pods]
#   --build-only  build/fetch the binaries and exit
#   --keep        leave the API server running (prints KUBECONFIG); stop it with the printed kill
#   --pods        then run the chart's pods for real: kubelet, kube-controller-manager and
#                 kube-scheduler (same source package), Debian's containerd, runc and
#                 containernetworking-plugins, the image from deploy/build-image.sh imported with
#                 `ctr -n k8s.io images import`; shows etcd, controller and agent pods Ready and the
#                 agent's TUN device.  Everything runs in its own network namespace (198.18.100.1,
#                 no route out) and mount namespace: see deploy/test-cluster-pods.sh.
# Needs root and Debian packages: golang-go dpkg-dev rsync jq golang-github-modern-go-reflect2-dev
# etcd-server openssl (installed when missing), plus the repo's dev extras (helm-python-sdk);
# --pods also containerd runc containernetworking-plugins dnsmasq-base.
# Exit codes: 0 all checks passed, 1 a check failed, 2 usage.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${MESHSEC_K8S_CACHE:-/var/cache/meshsec-k8s}"
K8S_VERSION="1.20.2"
SRC_PKG="kubernetes"
BUILD_ONLY=0 KEEP=0 PODS=0
IN_NODE="${MESHSEC_NODE_NETNS:-}"  # set when this script runs again inside the node's namespaces
for arg in "$@"; do
    case "$arg" in
        --build-only) BUILD_ONLY=1 ;;
        --keep) KEEP=1 ;;
        --pods) PODS=1 ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "test-cluster: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[test-cluster %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
# bash skips EXIT traps when a signal kills it: turn SIGTERM/SIGINT into an exit so cleanup runs.
trap 'exit 143' TERM
trap 'exit 130' INT
die() { echo "test-cluster: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (it installs Debian packages)"

# --- binaries --------------------------------------------------------------------------------------
APISERVER="$CACHE/bin/kube-apiserver"
KUBECTL="$CACHE/bin/kubectl"

need_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

enable_deb_src() {
    # apt-get source needs deb-src lines; add bookworm's main once, from the same Debian archive.
    if ! grep -rqs "^Types:.*deb-src" /etc/apt/sources.list.d/ && ! grep -qs "^deb-src" /etc/apt/sources.list; then
        cat >/etc/apt/sources.list.d/meshsec-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    apt-get -o DPkg::Lock::Timeout=600 update -qq
}

build_apiserver() {
    need_apt golang-go dpkg-dev rsync jq golang-github-modern-go-reflect2-dev
    mkdir -p "$CACHE/bin" "$CACHE/dl"
    if ! ls "$CACHE"/dl/${SRC_PKG}_*.dsc >/dev/null 2>&1; then
        enable_deb_src
        log "apt-get source $SRC_PKG (Debian's $K8S_VERSION)"
        (cd "$CACHE/dl" && apt-get source -qq --download-only "$SRC_PKG" >/dev/null 2>&1)
    fi
    local src="$CACHE/src"
    rm -rf "$src"
    dpkg-source -x --no-check "$CACHE"/dl/${SRC_PKG}_*.dsc "$src" >/dev/null
    # reflect2 1.0.1 (vendored) reads Go runtime internals that changed: the server crashes at start.
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    cp -rL /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
    rm -f "$src/vendor/github.com/modern-go/reflect2/go.mod"
    mkdir -p "$src/.go/src/k8s.io" "$CACHE/home"
    ln -sfn ../../.. "$src/.go/src/k8s.io/kubernetes"
    log "building $* $K8S_VERSION with $(go version | cut -d' ' -f3) (minutes each)"
    (cd "$src" && env GOPATH="$src/.go" CGO_ENABLED=0 HOME="$CACHE/home" GOCACHE="$CACHE/gocache" \
        KUBE_GIT_VERSION="v$K8S_VERSION" KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 \
        nice -n 10 make WHAT="$*" >"$CACHE/build.log" 2>&1) \
        || { tail -30 "$CACHE/build.log" >&2; die "$* build failed (log: $CACHE/build.log)"; }
    local what
    for what in "$@"; do install -m 0755 "$src/_output/bin/$(basename "$what")" "$CACHE/bin/"; done
    rm -rf "$src"
}

fetch_kubectl() {
    # Debian's binary package; its /usr/bin/kubectl may clash with another kubectl, so unpack it here.
    mkdir -p "$CACHE/bin" "$CACHE/dl"
    (cd "$CACHE/dl" && apt-get download -qq kubernetes-client >/dev/null 2>&1) \
        || die "apt-get download kubernetes-client failed"
    local deb
    for deb in "$CACHE"/dl/kubernetes-client_*.deb; do :; done
    dpkg-deb -x "$deb" "$CACHE/kubernetes-client"
    install -m 0755 "$CACHE/kubernetes-client/usr/bin/kubectl" "$KUBECTL"
    rm -rf "$CACHE/kubernetes-client"
}

if [ ! -x "$APISERVER" ]; then build_apiserver cmd/kube-apiserver; fi
if [ "$PODS" -eq 1 ]; then
    NODE_BINS=()
    for what in cmd/kubelet cmd/kube-controller-manager cmd/kube-scheduler; do
        [ -x "$CACHE/bin/$(basename "$what")" ] || NODE_BINS+=("$what")
    done
    if [ "${#NODE_BINS[@]}" -gt 0 ]; then build_apiserver "${NODE_BINS[@]}"; fi
fi
if [ ! -x "$KUBECTL" ]; then fetch_kubectl; fi
"$APISERVER" --version | grep -q "v$K8S_VERSION" || die "$APISERVER is not $K8S_VERSION"
need_apt etcd-server openssl
systemctl disable --now etcd >/dev/null 2>&1 || true
python3 -c "import helm_python, kubernetes_validate" 2>/dev/null \
    || die "helm-python-sdk missing: pip install -e '.[dev]'"
[ "$BUILD_ONLY" -eq 1 ] && { log "binaries ready in $CACHE/bin"; exit 0; }
if [ "$PODS" -eq 1 ]; then
    # shellcheck disable=SC1091  # shellchecked on its own (tests/deploy/test_scripts.py)
    source "$ROOT/deploy/test-cluster-pods.sh"
    if [ -z "$IN_NODE" ]; then
        [ "$KEEP" -eq 0 ] || die "--keep and --pods together are not supported"
        pods_outer "$@"
        exit $?
    fi
fi

# --- a throwaway control plane on 127.0.0.1 --------------------------------------------------------
WORK="$(mktemp -d /tmp/meshsec-cluster.XXXXXX)"
[ -n "$IN_NODE" ] && echo "$WORK" >"/tmp/$IN_NODE.work"  # for the host side's cleanup
PIDS=()
cleanup() {
    local rc=$?
    if [ "$KEEP" -eq 1 ] && [ "$rc" -eq 0 ]; then
        echo "KUBECONFIG=$WORK/admin.kubeconfig; stop with: kill ${PIDS[*]}; rm -rf $WORK" >&2
        return
    fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

read -r ETCD_CLIENT ETCD_PEER API_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)

log "PKI in $WORK/pki"
PKI="$WORK/pki"
mkdir -p "$PKI"
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=meshsec-test-ca" -keyout "$PKI/ca.key" -out "$PKI/ca.crt"
issue() { # name subject ext
    ossl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr"
    printf '%s\n' "$3" >"$PKI/$1.ext"
    ossl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 1 \
        -extfile "$PKI/$1.ext" -out "$PKI/$1.crt"
}
SANS="IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc"
API_BIND=127.0.0.1 API_ADVERTISE=127.0.0.1 API_EXTRA=()
if [ -n "$IN_NODE" ]; then
    # Inside the node's own network namespace: also reachable on the node IP and as the `kubernetes`
    # Service (pods), and able to reach kubelet for exec and logs.
    SANS="$SANS,IP:$NODE_IP,IP:$API_SERVICE_IP"
    API_BIND=0.0.0.0 API_ADVERTISE="$NODE_IP"
    API_EXTRA=(--kubelet-client-certificate "$PKI/admin.crt" --kubelet-client-key "$PKI/admin.key"
        --kubelet-preferred-address-types InternalIP)
fi
issue apiserver "/CN=kube-apiserver" \
    "subjectAltName=$SANS
extendedKeyUsage=serverAuth"
issue admin "/O=system:masters/CN=meshsec-test-admin" "extendedKeyUsage=clientAuth"
ossl genrsa -out "$PKI/sa.key" 2048
ossl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"

log "etcd on 127.0.0.1:$ETCD_CLIENT"
etcd --name test --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "test=http://127.0.0.1:$ETCD_PEER" --log-level error --logger zap \
    >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)

log "kube-apiserver $K8S_VERSION on 127.0.0.1:$API_PORT"
# The Service range is only a number pool inside the API server here (no pods, no proxy); it still
# uses the project's test range.
"$APISERVER" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT" \
    --bind-address "$API_BIND" --advertise-address "$API_ADVERTISE" --secure-port "$API_PORT" --insecure-port 0 \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
    --service-cluster-ip-range 198.19.0.0/24 \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --profiling=false --logtostderr=false --log-file "$WORK/apiserver.log" \
    "${API_EXTRA[@]}" >"$WORK/apiserver.out" 2>&1 &
PIDS+=($!)

export KUBECONFIG="$WORK/admin.kubeconfig"
cat >"$KUBECONFIG" <<KC
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$PKI/admin.crt", client-key: "$PKI/admin.key"}
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
KC
kc() { "$KUBECTL" --request-timeout=20s "$@"; }

for _ in $(seq 1 120); do
    kc get --raw /readyz >/dev/null 2>&1 && break
    kill -0 "${PIDS[1]}" 2>/dev/null || { tail -20 "$WORK/apiserver.log" "$WORK/apiserver.out" >&2; die "kube-apiserver exited"; }
    sleep 0.5
done
kc get --raw /readyz >/dev/null || die "kube-apiserver not ready after 60 s"
# The RBAC bootstrap roles (system:basic-user, ...) land shortly after /readyz.
for _ in $(seq 1 40); do kc get clusterrole system:basic-user >/dev/null 2>&1 && break; sleep 0.5; done
log "API server ready: $(kc version --short 2>/dev/null | tr '\n' ' ')"

FAILED=0
check() { # description, command...
    local what="$1"; shift
    if "$@" >"$WORK/check.out" 2>&1; then
        printf 'ok    %s\n' "$what"
    else
        printf 'FAIL  %s\n' "$what"; sed 's/^/      /' "$WORK/check.out" | head -20; FAILED=1
    fi
}

# --- the chart, installed with Helm's engine -------------------------------------------------------
NS=meshsec
kc create namespace "$NS" >/dev/null
check "helm install meshsec (Helm SDK, server capabilities)" \
    python3 "$ROOT/deploy/render.py" install --kubeconfig "$KUBECONFIG" -n "$NS" \
        --set agent.bootstrapToken.value=test-token-not-secret -o "$WORK/manifest.yaml"
check "every object of the release is stored by the server (14)" \
    bash -c "'$KUBECTL' get -f '$WORK/manifest.yaml' -o name | tee /dev/stderr | grep -c . | grep -qx 14"
check "PodDisruptionBudgets use the server's policy API (policy/v1beta1 on 1.20)" \
    grep -q "^apiVersion: policy/v1beta1" "$WORK/manifest.yaml"
kc -n "$NS" get deploy,ds,sts,svc,pdb,netpol,sa,secret -o wide 2>/dev/null | grep -v "^$" | sed 's/^/      /'

for overlay in "$ROOT"/deploy/kustomize/overlays/*/ "$ROOT/deploy/kustomize/base/"; do
    name="$(basename "$overlay")"
    # kustomize output carries policy/v1 PDBs, which 1.20 does not serve: the chart picks
    # policy/v1beta1 there by itself; the overlays are for >= 1.21, so translate for this old server.
    check "kustomize $name: server-side dry run" bash -c \
        "kubectl kustomize '$overlay' | sed 's#^apiVersion: policy/v1\$#apiVersion: policy/v1beta1#' \
         | '$KUBECTL' apply --dry-run=server -f - >/dev/null"
done

# --- RBAC matrix -----------------------------------------------------------------------------------
can() { # expected(yes|no) subject verb resource [namespace]
    local want="$1" sa="$2" verb="$3" res="$4" ns="${5:-}"
    local args=(auth can-i "$verb" "$res" --as="system:serviceaccount:$NS:$sa")
    [ -n "$ns" ] && args+=(-n "$ns")
    local got
    got="$("$KUBECTL" "${args[@]}" 2>/dev/null || true)"
    if [ "$got" = "$want" ]; then
        printf 'ok    can-i %-3s %-28s %-8s %-22s %s\n' "$want" "$sa" "$verb" "$res" "$ns"
    else
        printf 'FAIL  can-i %-28s %s %s %s: want %s, got %s\n' "$sa" "$verb" "$res" "$ns" "$want" "${got:-error}"
        FAILED=1
    fi
}
can yes meshsec-agent get nodes
can yes meshsec-agent get nodes/some-node
for verb in list watch update patch delete create; do can no meshsec-agent "$verb" nodes; done
can no meshsec-agent get secrets "$NS"
can no meshsec-agent list secrets "$NS"
can no meshsec-agent get pods "$NS"
can no meshsec-agent create pods "$NS"
can no meshsec-agent get configmaps kube-system
can no meshsec-agent create tokenreviews
can no meshsec-agent '*' '*'
for verb in get list watch create; do can no meshsec-controller "$verb" secrets "$NS"; done
can no meshsec-controller get nodes
can no meshsec-controller list pods "$NS"
can no meshsec-controller create leases.coordination.k8s.io "$NS"
can no meshsec-controller '*' '*'
can no default get secrets "$NS"
can no default get nodes

if [ -n "$IN_NODE" ] && [ "$FAILED" -eq 0 ]; then
    pods_phase
fi

if [ "$FAILED" -ne 0 ]; then
    echo "test-cluster: FAILED (logs were in $WORK)" >&2
    exit 1
fi
log "all checks passed against kube-apiserver $K8S_VERSION"
