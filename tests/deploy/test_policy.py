"""Least privilege in the rendered chart: RBAC verbs, ServiceAccounts and NetworkPolicies.

The RBAC matrix here is the offline half; deploy/test-cluster.sh asks a real API server the same
questions with `kubectl auth can-i --as=...`.
"""

from __future__ import annotations

from tests.deploy.conftest import Obj, find, kinds, matches, render

WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")


def _rules_by_subject(objs: list[Obj]) -> dict[str, list[Obj]]:
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objs if o["kind"] in ("Role", "ClusterRole")}
    out: dict[str, list[Obj]] = {}
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        role = roles[(b["roleRef"]["kind"], b["roleRef"]["name"])]
        for s in b["subjects"]:
            out.setdefault(f"{s['kind']}:{s.get('namespace', '')}:{s['name']}", []).extend(role["rules"])
    return out


def test_agent_may_only_get_nodes(default_objs: list[Obj]) -> None:
    rules = _rules_by_subject(default_objs)
    assert set(rules) == {"ServiceAccount:meshsec:meshsec-agent"}
    assert rules["ServiceAccount:meshsec:meshsec-agent"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}
    ]


def test_no_wildcards_secrets_or_writes_anywhere(default_objs: list[Obj]) -> None:
    for role in kinds(default_objs, "ClusterRole") + kinds(default_objs, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], role["metadata"]["name"]
            assert "secrets" not in rule["resources"]
            assert set(rule["verbs"]) <= {"get", "list", "watch"}


def test_controller_and_etcd_have_no_api_access(default_objs: list[Obj]) -> None:
    sa = find(default_objs, "ServiceAccount", "meshsec-controller")
    assert sa["automountServiceAccountToken"] is False
    sts = find(default_objs, "StatefulSet", "meshsec-etcd")
    assert sts["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in sts["spec"]["template"]["spec"]


def test_agent_token_only_when_it_reads_its_node(default_objs: list[Obj]) -> None:
    ds = find(default_objs, "DaemonSet", "meshsec-agent")
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    off = render.render({"agent": {"announcePodCIDR": False}})
    assert not kinds(off, "ClusterRole") and not kinds(off, "ClusterRoleBinding")
    ds = find(off, "DaemonSet", "meshsec-agent")
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_workloads_use_service_accounts_the_chart_creates(default_objs: list[Obj]) -> None:
    created = {o["metadata"]["name"] for o in kinds(default_objs, "ServiceAccount")}
    for o in default_objs:
        if o["kind"] in WORKLOADS:
            name = o["spec"]["template"]["spec"].get("serviceAccountName", "default")
            assert name in created or name == "default", f"{o['kind']}/{o['metadata']['name']}"
    for b in kinds(default_objs, "ClusterRoleBinding"):
        for s in b["subjects"]:
            assert s["name"] in created


def test_controller_network_policy(default_objs: list[Obj]) -> None:
    np = find(default_objs, "NetworkPolicy", "meshsec-controller")
    dep = find(default_objs, "Deployment", "meshsec-controller")
    assert matches(np["spec"]["podSelector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    assert sorted(np["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    ingress_ports = {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {7443, 7444, 9090}
    egress = np["spec"]["egress"]
    dns = {(p["port"], p["protocol"]) for p in egress[0]["ports"]}
    assert dns == {(53, "UDP"), (53, "TCP")}
    etcd = find(default_objs, "StatefulSet", "meshsec-etcd")
    to_etcd = egress[1]
    assert [p["port"] for p in to_etcd["ports"]] == [2379]
    assert matches(
        to_etcd["to"][0]["podSelector"]["matchLabels"], etcd["spec"]["template"]["metadata"]["labels"]
    )
    assert len(egress) == 2


def test_controller_api_restricted_to_node_cidrs() -> None:
    objs = render.render({"controller": {"networkPolicy": {"allowedCIDRs": ["198.18.0.0/15"]}}})
    np = find(objs, "NetworkPolicy", "meshsec-controller")
    api = next(r for r in np["spec"]["ingress"] if {p["port"] for p in r["ports"]} == {7443, 7444})
    assert api["from"] == [{"ipBlock": {"cidr": "198.18.0.0/15"}}]


def test_etcd_network_policy_admits_only_controller_and_members(default_objs: list[Obj]) -> None:
    np = find(default_objs, "NetworkPolicy", "meshsec-etcd")
    ctrl = find(default_objs, "Deployment", "meshsec-controller")["spec"]["template"]["metadata"]["labels"]
    etcd = find(default_objs, "StatefulSet", "meshsec-etcd")["spec"]["template"]["metadata"]["labels"]
    for rule in np["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if ports & {2379, 2380}:
            sources = [f["podSelector"]["matchLabels"] for f in rule["from"]]
            assert all(matches(s, ctrl) or matches(s, etcd) for s in sources)
            if 2380 in ports:
                assert all(matches(s, etcd) for s in sources)
        else:
            assert ports == {2381}


def test_network_policies_can_be_turned_off() -> None:
    objs = render.render({"controller": {"networkPolicy": {"enabled": False}}})
    assert not kinds(objs, "NetworkPolicy")
