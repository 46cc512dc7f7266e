# shellcheck shell=bash
# `deploy/test-cluster.sh --pods`: one Kubernetes node (kubelet + containerd) running the chart's pods
# from the image deploy/build-image.sh built.  Sourced by test-cluster.sh, not run on its own.
#
# The node is a dedicated network namespace with one interface (node0, 198.18.100.1/24), a bridge for
# pod networks (198.18.128.0/24, Debian's containernetworking-plugins) and no route out, entered
# together with a private mount namespace: everything the node runs (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd, kubelet, a dnsmasq that serves the cluster's
# names, and the pods) lives there, so the agent's TUN device, addresses, routes and UDP 500/4500
# never touch the host's network, and the node's mounts never show in the host's mount table.
# `pods_outer` (host side) creates and removes the namespace; the script re-runs itself inside it,
# where `pods_phase` does the work.  Cleanup on any exit: pods' processes (their cgroups), kubelet,
# containerd, mounts, cgroups, the network namespace.
#
# No kube-proxy and no CoreDNS (neither is packaged by Debian): dnsmasq answers a Service's name with
# its ready endpoints' addresses and a StatefulSet pod's name with its address (refreshed from the
# API every 2 s), and one DNAT rule takes the `kubernetes` Service address to the API server.

NODE_NAME=meshsec-node
NODE_IP=198.18.100.1
POD_CIDR=198.18.128.0/24
POD_GW=198.18.128.1
API_SERVICE_IP=198.19.0.1
PAUSE_IMAGE=localhost/pause:3.2
IMAGE_ARCHIVE="${MESHSEC_IMAGE_ARCHIVE:-/var/cache/meshsec-image/meshsec_0.1.0.tar}"
PAUSE_ARCHIVE="${MESHSEC_PAUSE_ARCHIVE:-/var/cache/meshsec-image/pause_3.2.tar}"

# --- host side -------------------------------------------------------------------------------------
pods_kill_cgroup_tree() { # SIGKILL every process under kubepods in every cgroup hierarchy, remove them
    local h pid
    for h in /sys/fs/cgroup/*/kubepods; do
        [ -d "$h" ] || continue
        for _ in 1 2 3; do
            find "$h" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do
                kill -KILL "$pid" 2>/dev/null || true
            done
            sleep 0.3
        done
    done
    for h in /sys/fs/cgroup/*/kubepods; do
        [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    return 0
}

pods_outer_cleanup() {
    local rc=$? pids=()
    if [ -n "${POD_NETNS:-}" ] && [ -e "/run/netns/$POD_NETNS" ]; then
        # Only processes of the node's namespace: everything in it was started by this script.
        mapfile -t pids < <(ip netns pids "$POD_NETNS" 2>/dev/null || true)
        [ "${#pids[@]}" -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null
        for _ in $(seq 1 20); do
            [ -z "$(ip netns pids "$POD_NETNS" 2>/dev/null)" ] && break
            sleep 0.5
        done
        mapfile -t pids < <(ip netns pids "$POD_NETNS" 2>/dev/null || true)
        [ "${#pids[@]}" -gt 0 ] && kill -KILL "${pids[@]}" 2>/dev/null
        pods_kill_cgroup_tree
        ip netns del "$POD_NETNS" 2>/dev/null || true
        # The node's $WORK, if its own cleanup could not run (killed): its mounts died with it.
        if [ -s "/tmp/$POD_NETNS.work" ]; then
            local node_work
            node_work="$(cat "/tmp/$POD_NETNS.work")"
            case "$node_work" in /tmp/meshsec-cluster.*) rm -rf "$node_work" ;; esac
            rm -f "/tmp/$POD_NETNS.work"
        fi
    fi
    pods_kill_cgroup_tree
    if grep -q "meshsec-cluster\." /proc/mounts; then
        echo "test-cluster: mounts left in the host's table:" >&2
        grep "meshsec-cluster\." /proc/mounts >&2
    fi
    exit "$rc"
}

pods_outer() { # args: the script's own arguments
    local tool
    for tool in containerd containerd-shim-runc-v2 runc ctr dnsmasq unshare nsenter; do
        command -v "$tool" >/dev/null || need_apt containerd runc dnsmasq-base util-linux
    done
    [ -x /usr/lib/cni/bridge ] || need_apt containernetworking-plugins
    for tool in kubelet kube-controller-manager kube-scheduler; do
        [ -x "$CACHE/bin/$tool" ] || die "$CACHE/bin/$tool missing: run deploy/test-cluster.sh --build-only --pods"
    done
    [ -s "$IMAGE_ARCHIVE" ] || die "$IMAGE_ARCHIVE missing: run deploy/build-image.sh first"
    pods_pause_image
    local c
    for c in cpu cpuacct cpuset memory pids; do
        [ -d "/sys/fs/cgroup/$c" ] || die "kubelet (cgroupfs) needs the cgroup v1 hierarchy /sys/fs/cgroup/$c; mounted: $(mount -t cgroup,cgroup2 | awk '{print $3}' | tr '\n' ' ')"
    done
    POD_NETNS="meshsec-k8s-$$"
    trap pods_outer_cleanup EXIT
    ip netns add "$POD_NETNS"
    ip -n "$POD_NETNS" link set lo up
    # A veth pair with both ends inside (this kernel has no dummy driver): node0 carries the node IP.
    ip -n "$POD_NETNS" link add node0 type veth peer name node0-peer
    ip -n "$POD_NETNS" link set node0-peer up
    ip -n "$POD_NETNS" addr add "$NODE_IP/24" dev node0
    ip -n "$POD_NETNS" link set node0 up
    log "node: network namespace $POD_NETNS ($NODE_IP, no route out), private mount namespace"
    local rc=0
    MESHSEC_NODE_NETNS="$POD_NETNS" unshare --mount --propagation private \
        nsenter --net="/run/netns/$POD_NETNS" -- bash "$0" "$@" || rc=$?
    return "$rc"
}

pods_pause_image() { # the pod sandbox image: Kubernetes' own pause.c, static, in a one-file image
    [ -s "$PAUSE_ARCHIVE" ] && return 0
    log "building $PAUSE_IMAGE from the kubernetes source package's build/pause/linux/pause.c"
    local d
    d="$(mktemp -d /tmp/meshsec-pause.XXXXXX)"
    tar -xzf "$CACHE"/dl/"${SRC_PKG}"_*.orig.tar.gz -C "$d" --wildcards '*/build/pause/linux/pause.c' --strip-components 4
    mkdir -p "$d/root"
    gcc -Os -static -DVERSION=v3.2-meshsec -o "$d/root/pause" "$d/pause.c"
    tar --numeric-owner -C "$d/root" -cf "$d/pause.tar" pause
    if ! { podman import --change 'ENTRYPOINT ["/pause"]' "$d/pause.tar" "$PAUSE_IMAGE" \
        && podman save -q --format docker-archive -o "$PAUSE_ARCHIVE.tmp" "$PAUSE_IMAGE"; } >"$d/podman.log" 2>&1; then
        cat "$d/podman.log" >&2
        die "podman import/save of $PAUSE_IMAGE failed"
    fi
    mv "$PAUSE_ARCHIVE.tmp" "$PAUSE_ARCHIVE"
    rm -rf "$d"
}

# --- node side (inside the namespaces) -------------------------------------------------------------
pods_node_cleanup() { # kill the node's processes and pods, unmount, then the caller removes $WORK
    local pid m
    for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    pods_kill_cgroup_tree
    for pid in "${NODE_PIDS[@]}"; do
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    pods_kill_cgroup_tree
    # Mounts under $WORK (secrets, overlay roots) and the pods' netns files, deepest first, then the
    # scratch dirs bound over /var/log and /run/netns.  (They all vanish with this mount namespace
    # anyway; unmounting lets cleanup remove $WORK.)
    awk -v w="$WORK" '$2 ~ "^"w || $2 ~ "^/run/netns/" {print $2}' /proc/self/mounts | sort -r \
        | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    umount -l /run/netns 2>/dev/null || true
    umount -l /var/lib 2>/dev/null || true
    umount -l /var/log 2>/dev/null || true
}

pods_setup_node() { # bind-mount scratch dirs over the host paths kubelet/CNI insist on (private mounts)
    # /var/lib too: the chart's hostPath volumes (the agent's state dir) land in $WORK, not on the host.
    mkdir -p "$WORK/varlog" "$WORK/varlib" "$WORK/run-netns" "$WORK/cni/net.d" "$WORK/cni/ipam"
    mount --bind "$WORK/varlog" /var/log
    mount --bind "$WORK/varlib" /var/lib
    mount --bind "$WORK/run-netns" /run/netns
    ip route show | sed 's/^/      node route: /' >&2
    # The `kubernetes` Service (no kube-proxy): its address to the API server on the node.  The route
    # (test range, on node0) only lets the node's own sockets pick a path before the DNAT.
    ip route add 198.19.0.0/24 dev node0
    iptables -t nat -A OUTPUT -d "$API_SERVICE_IP" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:$API_PORT"
    iptables -t nat -A PREROUTING -d "$API_SERVICE_IP" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:$API_PORT"
    sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.route_localnet=0
    echo "nameserver $NODE_IP" >"$WORK/resolv.conf"
}

pods_containerd() {
    mkdir -p "$WORK/containerd"
    cat >"$WORK/containerd/config.toml" <<CFG
version = 2
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$WORK/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$WORK/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  enable_selinux = false
  # This sandbox lacks CAP_SYS_RESOURCE: kubelet's pod sandboxes ask for oom_score_adj -998, which
  # runc then cannot set ("can't get final child's PID from pipe: EOF").  Clamp to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/bin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/cni/net.d"
CFG
    cat >"$WORK/cni/net.d/10-meshsec-test.conflist" <<CNI
{"cniVersion": "0.4.0", "name": "meshsec-test", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$WORK/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CNI
    log "containerd $(containerd --version | awk '{print $3}') (runc $(runc --version | awk 'NR==1{print $3}'), overlayfs)"
    containerd --config "$WORK/containerd/config.toml" >"$WORK/containerd.log" 2>&1 &
    NODE_PIDS+=($!)
    for _ in $(seq 1 60); do
        ctr --address "$WORK/containerd.sock" version >/dev/null 2>&1 && break
        sleep 0.5
    done
    ctr --address "$WORK/containerd.sock" version >/dev/null 2>&1 || { tail -20 "$WORK/containerd.log" >&2; die "containerd did not start"; }
    local a
    for a in "$PAUSE_ARCHIVE" "$IMAGE_ARCHIVE"; do
        ctr --address "$WORK/containerd.sock" -n k8s.io images import --no-unpack=false "$a" >/dev/null \
            || die "ctr -n k8s.io images import $a failed"
    done
    check "ctr -n k8s.io images import: localhost/meshsec:0.1.0 and $PAUSE_IMAGE" bash -c \
        "ctr --address '$WORK/containerd.sock' -n k8s.io images ls -q | grep -x 'localhost/meshsec:0.1.0' && ctr --address '$WORK/containerd.sock' -n k8s.io images ls -q | grep -x '$PAUSE_IMAGE'"
}

pods_kubeconfig() { # name cert key
    cat >"$WORK/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: u
  user: {client-certificate: "$2", client-key: "$3"}
contexts:
- name: test
  context: {cluster: test, user: u}
current-context: test
KC
}

pods_control_plane() { # kube-controller-manager and kube-scheduler (admin credentials: a test cluster)
    pods_kubeconfig admin-cm "$PKI/admin.crt" "$PKI/admin.key"
    "$CACHE/bin/kube-controller-manager" --kubeconfig "$WORK/admin-cm.kubeconfig" \
        --authentication-kubeconfig "$WORK/admin-cm.kubeconfig" --authorization-kubeconfig "$WORK/admin-cm.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port 0 --port 0 --leader-elect=false \
        --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
        --use-service-account-credentials=false --controllers '*,-cloud-node-lifecycle' \
        --allocate-node-cidrs --cluster-cidr 198.18.128.0/17 --node-cidr-mask-size 24 \
        --service-cluster-ip-range 198.19.0.0/24 \
        --logtostderr=false --log-file "$WORK/kcm.log" >"$WORK/kcm.out" 2>&1 &
    NODE_PIDS+=($!)
    "$CACHE/bin/kube-scheduler" --kubeconfig "$WORK/admin-cm.kubeconfig" \
        --authentication-kubeconfig "$WORK/admin-cm.kubeconfig" --authorization-kubeconfig "$WORK/admin-cm.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port 0 --port 0 --leader-elect=false \
        --logtostderr=false --log-file "$WORK/scheduler.log" >"$WORK/scheduler.out" 2>&1 &
    NODE_PIDS+=($!)
}

pods_kubelet() {
    issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
    pods_kubeconfig kubelet "$PKI/kubelet.crt" "$PKI/kubelet.key"
    mkdir -p "$WORK/kubelet/pki" "$WORK/kubelet/volume-plugins"
    cat >"$WORK/kubelet-config.yaml" <<CFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
clusterDNS: ["$NODE_IP"]
clusterDomain: cluster.local
resolvConf: "$WORK/resolv.conf"
makeIPTablesUtilChains: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
volumePluginDir: "$WORK/kubelet/volume-plugins"
syncFrequency: 10s
fileCheckFrequency: 10s
CFG
    log "kubelet $("$CACHE/bin/kubelet" --version | awk '{print $2}') as node $NODE_NAME (cgroupfs, containerd)"
    "$CACHE/bin/kubelet" --config "$WORK/kubelet-config.yaml" --kubeconfig "$WORK/kubelet.kubeconfig" \
        --container-runtime remote --container-runtime-endpoint "unix://$WORK/containerd.sock" \
        --runtime-request-timeout 5m --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
        --root-dir "$WORK/kubelet" --cert-dir "$WORK/kubelet/pki" \
        --logtostderr=false --log-file "$WORK/kubelet.log" >"$WORK/kubelet.out" 2>&1 &
    NODE_PIDS+=($!)
    local pid=$!
    for _ in $(seq 1 120); do
        kc get node "$NODE_NAME" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { tail -30 "$WORK/kubelet.log" "$WORK/kubelet.out" >&2; die "kubelet exited"; }
        sleep 0.5
    done
    check "kubelet registered node $NODE_NAME and it is Ready" \
        kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s
}

pods_dns() { # dnsmasq: the cluster's names from the API, refreshed every 2 s
    : >"$WORK/cluster.hosts"
    dnsmasq --keep-in-foreground --no-resolv --no-hosts --addn-hosts="$WORK/cluster.hosts" \
        --listen-address="$NODE_IP" --bind-interfaces --local=/#/ --user=root --pid-file="$WORK/dnsmasq.pid" \
        --log-facility="$WORK/dnsmasq.log" &
    NODE_PIDS+=($!)
    local dns_pid=$!
    (
        while kill -0 "$dns_pid" 2>/dev/null; do
            "$KUBECTL" get pods,endpoints -A -o json 2>/dev/null | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
lines = set()
for o in items:
    ns = o["metadata"]["namespace"]
    if o["kind"] == "Pod":
        s, ip = o["spec"], o.get("status", {}).get("podIP")
        if ip and s.get("hostname") and s.get("subdomain"):
            for d in ("svc", "svc.cluster.local"):
                lines.add(f"{ip} {s['"'"'hostname'"'"']}.{s['"'"'subdomain'"'"']}.{ns}.{d}")
    else:
        name = o["metadata"]["name"]
        for sub in o.get("subsets") or []:
            for a in (sub.get("addresses") or []) + (sub.get("notReadyAddresses") or []):
                for d in ("svc", "svc.cluster.local"):
                    lines.add(f"{a['"'"'ip'"'"']} {name}.{ns}.{d}")
print("\n".join(sorted(lines)))
' >"$WORK/cluster.hosts.new" 2>/dev/null || true
            if ! cmp -s "$WORK/cluster.hosts.new" "$WORK/cluster.hosts"; then
                mv "$WORK/cluster.hosts.new" "$WORK/cluster.hosts"
                kill -HUP "$dns_pid" 2>/dev/null || true
            fi
            sleep 2
        done
    ) &
    NODE_PIDS+=($!)
}

pods_wait() { # description, timeout seconds, kubectl wait args...
    local what="$1" t="$2"; shift 2
    check "$what" kc wait --for=condition=Ready --timeout="${t}s" "$@"
}

pods_ready() { # label count timeout: exactly `count` pods with that label, none terminating, all Ready
    local label="$1" want="$2" t="$3" got=""
    for _ in $(seq 1 "$t"); do
        got="$(kc -n "$NS" get pods -l "$label" -o jsonpath='{range .items[*]}{.metadata.deletionTimestamp}{"|"}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null || true)"
        [ "$(grep -c . <<<"$got")" -eq "$want" ] && [ "$(grep -cx '|True' <<<"$got")" -eq "$want" ] && return 0
        sleep 1
    done
    echo "pods $label: want $want Ready, have: $(tr '\n' ' ' <<<"$got")"
    return 1
}

pods_phase() {
    NODE_PIDS=()
    trap 'rc=$?; pods_node_cleanup; (exit "$rc"); cleanup' EXIT
    log "--- pods: kubelet + containerd on node $NODE_NAME ---"
    # The first release was only for the RBAC checks: remove it (no pods ran: no controllers yet).
    kc delete -f "$WORK/manifest.yaml" --wait=false >/dev/null 2>&1 || true
    kc -n "$NS" delete secret -l owner=helm >/dev/null 2>&1 || true
    pods_setup_node
    pods_dns
    pods_control_plane
    pods_containerd
    pods_kubelet

    # etcd's PersistentVolumeClaim binds to a hostPath volume on the node (no provisioner here).
    mkdir -p "$WORK/pv/etcd-0"
    chown 10001:10001 "$WORK/pv/etcd-0"
    kc apply -f - >/dev/null <<PV
apiVersion: v1
kind: PersistentVolume
metadata: {name: meshsec-test-etcd-0}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: "$WORK/pv/etcd-0", type: Directory}
PV
    kc -n "$NS" create secret generic meshsec-kek --from-literal=kek="$(openssl rand -hex 32)" >/dev/null
    bash "$ROOT/deploy/gen-etcd-tls.sh" --namespace "$NS" --release meshsec "$WORK/etcd-pki" 2>/dev/null \
        | kc apply -f - >/dev/null
    # etcd with TLS, as the chart installs it: the controller dials the members by DNS name and checks
    # the certificate gen-etcd-tls.sh issued for them.
    local values=(--set etcd.statefulset.replicas=1 --set controller.replicas=2
        --set controller.antiAffinity=soft --set agent.bootstrapToken.existingSecret=meshsec-bootstrap-token)
    check "helm install meshsec (controller x2, etcd x1 over mutual TLS by DNS name; agent off until its token exists)" \
        python3 "$ROOT/deploy/render.py" install --kubeconfig "$KUBECONFIG" -n "$NS" "${values[@]}" \
            --set agent.enabled=false -o "$WORK/manifest-pods.yaml"
    pods_wait "etcd pod Ready" 240 -n "$NS" pod/meshsec-etcd-0
    local ctl0
    check "controller pods Ready (2 replicas)" pods_ready app.kubernetes.io/component=controller 2 300
    if [ "${FAILED:-0}" = 1 ]; then  # say why: the first controller pod's init and main logs
        ctl0="$(kc -n "$NS" get pod -l app.kubernetes.io/component=controller -o jsonpath='{.items[0].metadata.name}')"
        for c in init controller; do
            echo "      --- $ctl0 -c $c (last lines)" >&2
            kc -n "$NS" logs "$ctl0" -c "$c" 2>&1 | tail -8 | sed 's/^/      /' >&2 || true
        done
    fi

    # The agent's turn: the node in the mesh, a one-use token, the CA pinned.
    local ctl hash token
    ctl="$(kc -n "$NS" get pod -l app.kubernetes.io/component=controller -o jsonpath='{.items[0].metadata.name}')"
    cat >"$WORK/mesh.yaml" <<MESH
apiVersion: meshsec.io/v1
kind: Mesh
nodes:
  - name: $NODE_NAME
    endpoints: ["$NODE_IP"]
    subnets: [198.19.100.0/24]
    acceptAnnouncedSubnets: true
  - name: meshsec-peer
    endpoints: ["198.18.100.2"]
    subnets: [198.19.101.0/24]
policies:
  - name: all
    topology: full-mesh
    members: {all: true}
MESH
    mctl() { kc -n "$NS" exec -i "$ctl" -c controller -- env MESHCTL_CONFIG=/var/lib/meshsec/controller/admin/meshctl.yaml meshctl "$@"; }
    check "meshctl apply (the node and a peer) inside a controller pod" mctl apply -f - <"$WORK/mesh.yaml"
    mctl token create --ttl 1h --uses 1 -o json >"$WORK/token.json" || die "meshctl token create failed"
    token="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$WORK/token.json")"
    hash="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["caCertSha256"])' "$WORK/token.json")"
    if [ -z "$token" ] || [ -z "$hash" ]; then die "meshctl token create printed no token or CA hash"; fi
    kc -n "$NS" create secret generic meshsec-bootstrap-token --from-literal=token="$token" >/dev/null
    # What `helm upgrade --set agent.enabled=true` adds (the agent's objects only: re-applying the
    # controller would undo the etcd workaround above).
    python3 "$ROOT/deploy/render.py" template -n "$NS" "${values[@]}" --set agent.enabled=true \
        --set agent.caHash="$hash" -o "$WORK/manifest-all.yaml"
    python3 - "$WORK/manifest-all.yaml" >"$WORK/manifest-agent.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
agent = [d for d in docs if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "agent"]
print(yaml.safe_dump_all(agent, sort_keys=False), end="")
PY
    check "agent objects applied (ServiceAccount, RBAC, DaemonSet; caHash pinned)" \
        kc apply -f "$WORK/manifest-agent.yaml"
    for _ in $(seq 1 60); do
        kc -n "$NS" get pod -l app.kubernetes.io/component=agent -o name 2>/dev/null | grep -q . && break
        sleep 1
    done
    check "agent pod Ready (enrolled and synced)" pods_ready app.kubernetes.io/component=agent 1 240
    local agent
    agent="$(kc -n "$NS" get pod -l app.kubernetes.io/component=agent -o jsonpath='{.items[0].metadata.name}')"
    check "agent created its TUN device meshsec0 in the node's network namespace" ip link show meshsec0
    check "the agent pod sees meshsec0 (host network)" kc -n "$NS" exec "$agent" -- \
        python3 -c 'import socket, sys; sys.exit("meshsec0" not in dict(socket.if_nameindex()).values())'
    check "the agent binds IKE and NAT-T on the node IP" bash -c "ss -Huln | grep -q '$NODE_IP:500 ' && ss -Huln | grep -q '$NODE_IP:4500 '"
    check "the agent read its node's podCIDR from the API (ServiceAccount) and announces it" bash -c \
        "for _ in \$(seq 1 30); do '$KUBECTL' -n '$NS' logs '$agent' | grep 'announcing podCIDRs' && exit 0; sleep 1; done; exit 1"
    ss -Huln | grep "$NODE_IP" | sed 's/^/      /'
    ip -d link show meshsec0 | sed 's/^/      /'
    kc -n "$NS" get pods -o wide | sed 's/^/      /'
    kc -n "$NS" logs "$agent" --tail 8 | sed 's/^/      agent: /'
}
