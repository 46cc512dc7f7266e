"""meshctl apply against a real controller and etcd: every kind of invalid mesh.yaml is refused with one
line per problem (file, line, field, reason), exit code 2, and leaves etcd exactly as it was.

Both paths are covered: meshctl's own validation (what an operator sees) and the controller's (an
Apply that bypasses meshctl, as another client could send), so neither side can store a bad spec.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from meshsec.api.v1 import admin_pb2, admin_pb2_grpc

from tests.controller import harness as h
from tests.support.etcd import EtcdCluster

VALID = h.mesh_yaml({"node-a": 1, "node-b": 2})
PROFILE = """profiles:
  - name: p
    ike:
      proposals: [{ike}]
      rekey: {rekey}
      life: {life}
"""

# kind of mistake -> the invalid document and the field its error must name
INVALID: dict[str, tuple[str, str]] = {
    "unknown field": (
        VALID.replace("    subnets: [198.19.2.0/24]", "    subnetz: [198.19.2.0/24]"),
        "nodes[1]",
    ),
    "bad CIDR": (VALID.replace("198.19.2.0/24", "198.19.2.0/33"), "nodes[1].subnets[0]"),
    "bad endpoint": (VALID.replace("198.18.0.2", "198.18.0.300"), "nodes[1].endpoints[0]"),
    "overlapping subnets": (VALID.replace("198.19.2.0/24", "198.19.1.128/25"), "nodes[1].subnets[0]"),
    "duplicate name": (VALID.replace("name: node-b", "name: node-a"), "nodes[1].name"),
    "dangling profile": (VALID + "    profile: nosuch\n", "policies[0].profile"),
    "rekey after life": (
        VALID + PROFILE.format(ike="aes128gcm16-prfsha256-x25519", rekey="2h", life="1h"),
        "profiles[0].ike",
    ),
    "unknown algorithm": (
        VALID + PROFILE.format(ike="aes128gcm16-prfsha256-x99999", rekey="1h", life="2h"),
        "profiles[0].ike.proposals[0]",
    ),
    "policy selecting nothing": (
        VALID.replace("members: {all: true}", "members: {labels: {role: nobody}}"),
        "policies[0]",
    ),
    "unknown apiVersion": (VALID.replace("meshsec.io/v1", "meshsec.io/v9"), "apiVersion"),
}

LINE = re.compile(r"^(?P<file>[\w.-]+\.yaml):(?P<line>\d+): (?P<field>[\w\[\].]+): (?P<reason>\S.*)$")


def _revision(etcd: EtcdCluster) -> int:
    out = subprocess.run(
        ["etcdctl", "--endpoints", etcd.endpoints[0], "endpoint", "status", "-w", "json"],
        capture_output=True,
        text=True,
        check=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    ).stdout
    return int(json.loads(out)[0]["Status"]["header"]["revision"])


async def _meshctl(state: Path, address: str, *args: str) -> tuple[int, str, str]:
    admin = state / "admin"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshsec.controller.cli.main",
        "--controller",
        address,
        "--ca",
        str(admin / "ca.pem"),
        "--cert",
        str(admin / "admin.pem"),
        "--key",
        str(admin / "admin-key.pem"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.system
def test_invalid_specs_are_one_line_each_and_change_nothing(etcd: EtcdCluster, tmp_path: Path) -> None:
    async def body() -> None:
        await h.init_state(tmp_path, etcd.endpoints)
        async with h.replica(tmp_path, etcd.endpoints) as r:
            address = f"unix://{tmp_path / 'r1.sock'}"
            good = tmp_path / "mesh.yaml"
            good.write_text(VALID)
            rc, _, err = await _meshctl(tmp_path, address, "apply", "-f", str(good))
            assert rc == 0, err
            before = _revision(etcd)
            for n, (kind, (text, field)) in enumerate(INVALID.items()):
                path = tmp_path / f"bad-{n}.yaml"
                path.write_text(text)
                rc, _out, err = await _meshctl(tmp_path, address, "apply", "-f", str(path))
                lines = err.strip().splitlines()
                assert rc == 2, f"{kind}: exit {rc}: {err}"
                assert lines and "Traceback" not in err, f"{kind}: {err}"
                parsed = [LINE.match(line) for line in lines]
                assert all(parsed), f"{kind}: not 'file:line: field: reason': {lines}"
                assert {m["file"] for m in parsed if m} == {path.name}, f"{kind}: {lines}"
                assert any(m["field"].startswith(field) for m in parsed if m), f"{kind}: {field} in {lines}"
                # the controller refuses it too, when a client skips local validation
                async with h.admin_channel(r.address, tmp_path) as ch:
                    resp = await admin_pb2_grpc.AdminServiceStub(ch).Apply(
                        admin_pb2.ApplyRequest(spec_yaml=text, filename=path.name), timeout=10
                    )
                assert resp.errors and resp.version == 0, f"{kind}: controller accepted it"
                assert all(e.file == path.name and e.field and e.reason for e in resp.errors)
                assert _revision(etcd) == before, f"{kind}: etcd changed"

    asyncio.run(body())
