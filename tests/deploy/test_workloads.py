"""What a DaemonSet agent, an HA controller and an etcd cluster need, checked on the rendered chart.

Each test names the property a real cluster depends on (the agent owns the node's network, the
controller survives a node loss, etcd keeps quorum), so a template change that breaks one fails here.
"""

from __future__ import annotations

from urllib.parse import urlparse

from tests.deploy.conftest import Obj, container, env, find, kinds, matches, render


def _pod(objs: list[Obj], kind: str, name: str) -> tuple[Obj, Obj]:
    o = find(objs, kind, name)
    return o, o["spec"]["template"]["spec"]


def _port_names(c: Obj) -> set[str]:
    return {p["name"] for p in c.get("ports", [])}


# --- agent DaemonSet -------------------------------------------------------------------------------


def test_agent_owns_the_node_network(default_objs: list[Obj]) -> None:
    _, spec = _pod(default_objs, "DaemonSet", "meshsec-agent")
    assert spec["hostNetwork"] is True
    # Cluster DNS (the controller Service) must still resolve from the host network.
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    agent = container(spec, "agent")
    sc = agent["securityContext"]
    assert "NET_ADMIN" in sc["capabilities"]["add"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) <= {"NET_ADMIN", "NET_BIND_SERVICE"}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    ports = {(p["name"], p["containerPort"], p["protocol"]) for p in agent["ports"]}
    assert {("ike", 500, "UDP"), ("nat-t", 4500, "UDP")} <= ports


def test_agent_gets_dev_net_tun_as_char_device(default_objs: list[Obj]) -> None:
    _, spec = _pod(default_objs, "DaemonSet", "meshsec-agent")
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in container(spec, "agent")["volumeMounts"]}
    tun = [n for n, v in vols.items() if v.get("hostPath", {}).get("path") == "/dev/net/tun"]
    assert len(tun) == 1
    assert vols[tun[0]]["hostPath"]["type"] == "CharDevice"
    assert mounts[tun[0]]["mountPath"] == "/dev/net/tun"


def test_agent_keeps_identity_and_cache_on_the_host(default_objs: list[Obj]) -> None:
    """Fail static: key, certificate and last desired state survive a pod restart."""
    _, spec = _pod(default_objs, "DaemonSet", "meshsec-agent")
    agent = container(spec, "agent")
    state_dir = env(agent)["MESHSEC_AGENT_STATE_DIR"]["value"]
    vols = {v["name"]: v for v in spec["volumes"]}
    mount = next(m for m in agent["volumeMounts"] if m["mountPath"] == state_dir)
    assert vols[mount["name"]]["hostPath"] == {"path": state_dir, "type": "DirectoryOrCreate"}


def test_agent_runs_on_every_node(default_objs: list[Obj]) -> None:
    ds, spec = _pod(default_objs, "DaemonSet", "meshsec-agent")
    # An operator-only toleration with no key tolerates every taint (control plane, NoExecute, ...).
    assert {"operator": "Exists"} in spec["tolerations"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1


def test_agent_learns_its_node_from_the_downward_api(default_objs: list[Obj]) -> None:
    _, spec = _pod(default_objs, "DaemonSet", "meshsec-agent")
    e = env(container(spec, "agent"))
    assert e["MESHSEC_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert e["MESHSEC_NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert e["MESHSEC_NODE_IPS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIPs"
    on = render.render({"agent": {"downwardHostIPs": True}})
    e = env(container(_pod(on, "DaemonSet", "meshsec-agent")[1], "agent"))
    assert e["MESHSEC_NODE_IPS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIPs"


def test_agent_bootstrap_token_comes_from_a_secret(default_objs: list[Obj]) -> None:
    _, spec = _pod(default_objs, "DaemonSet", "meshsec-agent")
    e = env(container(spec, "agent"))
    assert e["MESHSEC_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "meshsec-bootstrap-token",
        "key": "token",
    }
    assert "value" not in e["MESHSEC_TOKEN"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["bootstrap-token"]["secret"]["secretName"] == "meshsec-bootstrap-token"
    assert not kinds(default_objs, "Secret"), "no token in the release unless agent.bootstrapToken.value"
    objs = render.render({"agent": {"bootstrapToken": {"value": "tok-123"}}})
    secret = find(objs, "Secret", "meshsec-bootstrap-token")
    assert secret["data"]["token"] == "dG9rLTEyMw=="


def test_agent_controller_address_is_the_service(default_objs: list[Obj]) -> None:
    _, spec = _pod(default_objs, "DaemonSet", "meshsec-agent")
    e = env(container(spec, "agent"))
    svc = find(default_objs, "Service", "meshsec-controller")
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert e["MESHSEC_CONTROLLER"]["value"] == f"meshsec-controller.meshsec.svc:{ports['grpc']}"
    assert e["MESHSEC_ENROLL_ADDRESS"]["value"] == f"meshsec-controller.meshsec.svc:{ports['enroll']}"


def test_agent_grace_period_leaves_time_for_ike_delete(default_objs: list[Obj]) -> None:
    _, spec = _pod(default_objs, "DaemonSet", "meshsec-agent")
    assert spec["terminationGracePeriodSeconds"] >= 10


# --- probes ----------------------------------------------------------------------------------------


def test_every_long_running_container_has_probes_on_a_declared_port(default_objs: list[Obj]) -> None:
    seen = 0
    for o in default_objs:
        if o["kind"] not in ("Deployment", "DaemonSet", "StatefulSet"):
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            for probe in ("livenessProbe", "readinessProbe"):
                p = c[probe]
                action = p.get("httpGet") or p.get("tcpSocket")
                assert action, f"{o['kind']}/{c['name']} {probe} has no HTTP or TCP action"
                assert action["port"] in _port_names(c), f"{c['name']} {probe} port not declared"
                seen += 1
    assert seen == 6


def test_agent_and_controller_probe_paths(default_objs: list[Obj]) -> None:
    for kind, name, cname, port in (
        ("DaemonSet", "meshsec-agent", "agent", 9091),
        ("Deployment", "meshsec-controller", "controller", 9090),
    ):
        c = container(_pod(default_objs, kind, name)[1], cname)
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        health = next(p for p in c["ports"] if p["name"] == "health")
        assert health["containerPort"] == port
        assert env(c)["MESHSEC_HEALTH_LISTEN"]["value"].endswith(f":{port}")


# --- controller ------------------------------------------------------------------------------------


def test_controller_is_three_replicas_one_per_node(default_objs: list[Obj]) -> None:
    dep, spec = _pod(default_objs, "Deployment", "meshsec-controller")
    assert dep["spec"]["replicas"] == 3
    labels = dep["spec"]["template"]["metadata"]["labels"]
    terms = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert len(terms) == 1
    assert terms[0]["topologyKey"] == "kubernetes.io/hostname"
    assert matches(terms[0]["labelSelector"]["matchLabels"], labels)
    soft = render.render({"controller": {"antiAffinity": "soft"}})
    aff = _pod(soft, "Deployment", "meshsec-controller")[1]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in aff
    assert aff["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 100


def test_controller_pdb_keeps_a_majority(default_objs: list[Obj]) -> None:
    dep = find(default_objs, "Deployment", "meshsec-controller")
    pdb = find(default_objs, "PodDisruptionBudget", "meshsec-controller")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert matches(pdb["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_controller_service_exposes_grpc_and_enrollment(default_objs: list[Obj]) -> None:
    dep, spec = _pod(default_objs, "Deployment", "meshsec-controller")
    svc = find(default_objs, "Service", "meshsec-controller")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    c = container(spec, "controller")
    declared = {p["name"]: p["containerPort"] for p in c["ports"]}
    by_name = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(by_name) == {"grpc", "enroll", "metrics"}
    for name, p in by_name.items():
        assert p["targetPort"] in declared, name
        assert p["port"] == declared[p["targetPort"]]
    e = env(c)
    assert e["MESHSEC_LISTEN"]["value"] == f"0.0.0.0:{declared['grpc']}"
    assert e["MESHSEC_ENROLL_LISTEN"]["value"] == f"0.0.0.0:{declared['enroll']}"
    # Agents verify the controller certificate against the name they dial.
    assert "meshsec-controller.meshsec.svc" in e["MESHSEC_SERVER_NAMES"]["value"].split(",")
    ann = svc["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(declared["health"])


def test_controller_runs_unprivileged_without_api_token(default_objs: list[Obj]) -> None:
    _, spec = _pod(default_objs, "Deployment", "meshsec-controller")
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    for c in spec["containers"] + spec["initContainers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}


def test_controller_init_copies_the_kek_before_init(default_objs: list[Obj]) -> None:
    """The KEK must be 0600 in the state dir before `meshsec-controller init` reads it."""
    _, spec = _pod(default_objs, "Deployment", "meshsec-controller")
    assert [c["name"] for c in spec["initContainers"]] == ["kek", "init"]
    kek = container(spec, "kek", init=True)
    assert "install -m 0600" in kek["command"][-1]
    init = container(spec, "init", init=True)
    assert init["args"] == ["init"]
    assert container(spec, "controller")["args"] == ["serve"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["kek"]["secret"]["secretName"] == "meshsec-kek"
    off = render.render({"controller": {"runInit": False}})
    assert [c["name"] for c in _pod(off, "Deployment", "meshsec-controller")[1]["initContainers"]] == ["kek"]


# --- etcd ------------------------------------------------------------------------------------------


def test_etcd_is_a_three_member_tls_cluster(default_objs: list[Obj]) -> None:
    sts, spec = _pod(default_objs, "StatefulSet", "meshsec-etcd")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    peer = find(default_objs, "Service", sts["spec"]["serviceName"])
    assert peer["spec"]["clusterIP"] == "None" and peer["spec"]["publishNotReadyAddresses"] is True
    args = container(spec, "etcd")["args"]
    flags = dict(a.removeprefix("--").split("=", 1) if "=" in a else (a[2:], "") for a in args)
    members = dict(m.split("=", 1) for m in flags["initial-cluster"].split(","))
    assert sorted(members) == [f"meshsec-etcd-{i}" for i in range(3)]
    for name, url in members.items():
        u = urlparse(url)
        assert u.scheme == "https" and u.hostname == f"{name}.meshsec-etcd-peer.meshsec.svc"
    for f in ("client-cert-auth", "peer-client-cert-auth", "trusted-ca-file", "peer-trusted-ca-file"):
        assert f in flags
    pdb = find(default_objs, "PodDisruptionBudget", "meshsec-etcd")
    assert pdb["spec"]["minAvailable"] == 2


def test_controller_dials_exactly_the_etcd_members(default_objs: list[Obj]) -> None:
    _, spec = _pod(default_objs, "Deployment", "meshsec-controller")
    e = env(container(spec, "controller"))
    eps = e["MESHSEC_ETCD"]["value"].split(",")
    assert [urlparse(x).hostname for x in eps] == [
        f"meshsec-etcd-{i}.meshsec-etcd-peer.meshsec.svc" for i in range(3)
    ]
    assert all(urlparse(x).scheme == "https" and urlparse(x).port == 2379 for x in eps)
    assert e["MESHSEC_ETCD_CA_FILE"]["value"].startswith("/etc/meshsec/etcd-tls/")


def test_external_etcd_replaces_the_statefulset() -> None:
    eps = ["https://etcd-a.meshsec.invalid:2379", "https://etcd-b.meshsec.invalid:2389"]
    objs = render.render({"etcd": {"mode": "external", "external": {"endpoints": eps}}})
    assert not kinds(objs, "StatefulSet")
    assert all("etcd" not in o["metadata"]["name"] for o in objs)
    spec = _pod(objs, "Deployment", "meshsec-controller")[1]
    e = env(container(spec, "controller"))
    assert e["MESHSEC_ETCD"]["value"] == ",".join(eps)
    assert "MESHSEC_ETCD_CERT_FILE" in e
    np = find(objs, "NetworkPolicy", "meshsec-controller")
    ports = {p["port"] for rule in np["spec"]["egress"] for p in rule["ports"]}
    assert ports == {53, 2379, 2389}


def test_single_member_etcd_render() -> None:
    objs = render.render({"etcd": {"statefulset": {"replicas": 1}}})
    args = container(_pod(objs, "StatefulSet", "meshsec-etcd")[1], "etcd")["args"]
    cluster = next(a for a in args if a.startswith("--initial-cluster="))
    assert cluster.count("=https://") == 1
    assert find(objs, "PodDisruptionBudget", "meshsec-etcd")["spec"]["minAvailable"] == 1


def test_metrics_annotations_point_at_the_health_ports(default_objs: list[Obj]) -> None:
    for kind, name, port in (
        ("DaemonSet", "meshsec-agent", "9091"),
        ("Deployment", "meshsec-controller", "9090"),
    ):
        ann = find(default_objs, kind, name)["spec"]["template"]["metadata"]["annotations"]
        assert ann == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": port,
            "prometheus.io/path": "/metrics",
        }
    off = render.render({"agent": {"metrics": {"enabled": False}, "podAnnotations": {"a": "b"}}})
    assert find(off, "DaemonSet", "meshsec-agent")["spec"]["template"]["metadata"]["annotations"] == {
        "a": "b"
    }


def test_names_follow_the_release_and_namespace() -> None:
    objs = render.render({}, release="edge", namespace="vpn")
    assert {o["metadata"].get("namespace", "vpn") for o in objs} == {"vpn"}
    assert all(o["metadata"]["name"].startswith("edge-meshsec-") for o in objs)
    spec = find(objs, "Deployment", "edge-meshsec-controller")["spec"]["template"]["spec"]
    etcd = env(container(spec, "controller"))["MESHSEC_ETCD"]["value"].split(",")
    assert urlparse(etcd[0]).hostname == "edge-meshsec-etcd-0.edge-meshsec-etcd-peer.vpn.svc"
    agent = env(container(find(objs, "DaemonSet", "edge-meshsec-agent")["spec"]["template"]["spec"], "agent"))
    assert agent["MESHSEC_CONTROLLER"]["value"] == "edge-meshsec-controller.vpn.svc:7443"
    binding = find(objs, "ClusterRoleBinding", "edge-meshsec-agent")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "edge-meshsec-agent", "namespace": "vpn"}
    ]
