"""`meshsec demo` as a user runs it: a real controller, real agents in real namespaces, real traffic.

Proves: the demo brings a 3-host mesh up with every SA established in its policy's mode (the agents'
status says transport for host to host, tunnel for the site LANs, and the gateway pair's one IKE SA
carries both), a green ping matrix (every pair through its ESP SA) and an iperf3 run through the site
tunnel, then removes every namespace, process
and file it made; and that a SIGTERM in the middle of bring-up also leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

MESHSEC = [sys.executable, "-m", "meshsec.controller.demo.main"]


def _workdir(output: str) -> Path:
    m = re.search(r"work dir (/\S+)", output)
    assert m, output
    return Path(m.group(1))


def _leftovers(pid: int, workdir: Path) -> list[str]:
    """Namespaces named after this demo run, processes mentioning its work dir, the work dir itself."""
    found = []
    netns_dir = Path("/var/run/netns")
    if netns_dir.exists():
        found += [f"namespace {p.name}" for p in netns_dir.iterdir() if p.name.startswith(f"msdemo{pid}-")]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(workdir) in cmdline:
                found.append(f"process {proc.name}: {cmdline[:120]}")
    if workdir.exists():
        found.append(f"directory {workdir}")
    return found


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
                if m:
                    out.add(int(m.group(1)))
    return out


def _root_listeners(workdir: Path) -> list[str]:
    """Root-namespace TCP listeners and bound UDP sockets of the demo's processes, as "ip:port"."""
    inodes: set[int] = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if str(workdir).encode() in (proc / "cmdline").read_bytes():
                    inodes |= _socket_inodes(int(proc.name))
    found = []
    for table, listening in (("tcp", "0A"), ("udp", "07")):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == listening and int(f[9]) in inodes:
                host, port = f[1].split(":")
                ip = ".".join(str(b) for b in reversed(bytes.fromhex(host)))
                found.append(f"{ip}:{int(port, 16)}")
        for line in Path(f"/proc/net/{table}6").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == listening and int(f[9]) in inodes:
                found.append(f"[{f[1]}]")  # any IPv6 listener is a finding
    return found


def test_demo_brings_up_a_green_mesh_and_removes_everything() -> None:
    proc = subprocess.Popen(
        [*MESHSEC, "demo", "--nodes", "3", "--duration", "2", "--timeout", "25"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    listeners: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("The mesh is up"):  # everything runs: nothing may listen beyond loopback
                listeners = _root_listeners(_workdir("".join(lines)))
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:  # only on a hang: SIGTERM runs the demo's own teardown
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    out = "".join(lines)
    assert proc.returncode == 0, out
    for step in ("every IKE and child SA up", "ping matrix", "iperf3 lan-a → lan-b", "meshctl status"):
        assert re.search(rf"^✓ {re.escape(step)}", out, re.M), f"step {step!r} not green:\n{out}"
    assert "✗" not in out, out
    matrix = out[out.index("hosts, transport mode") : out.index("✓ ping matrix")]
    assert matrix.count("✓ 3/3") == 3 * 2 + 2, matrix  # every ordered host pair, both LAN directions
    # the SA step checks each child's mode as the agents report it; the gateways share one IKE SA
    assert re.search(
        r"^✓ every IKE and child SA up — 3 IKE SAs, 4 child SA pairs, .*each in its policy's mode", out, re.M
    ), out
    assert "host-1 ⇄ host-2: one IKE SA carrying hosts (transport) and sites (tunnel)" in out, out
    assert listeners and all(a.startswith("127.0.0.1:") for a in listeners), listeners  # etcd only
    assert _leftovers(proc.pid, _workdir(out)) == []


def test_sigterm_during_bring_up_removes_everything() -> None:
    proc = subprocess.Popen(
        [*MESHSEC, "demo", "--nodes", "2", "--timeout", "25"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 40
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the agents are being started
            lines.append(line)
            if line.startswith("✓ meshctl apply") or time.monotonic() > deadline:
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    out = "".join(lines) + rest
    assert "✓ meshctl apply" in out, out
    assert proc.returncode == 130, out  # interrupted before the mesh was up
    assert "SIGTERM: stopping" in out and "removed every namespace, process and file" in out, out
    assert _leftovers(proc.pid, _workdir(out)) == []


def test_a_sigkilled_demo_takes_its_processes_along_and_the_next_demo_removes_the_rest() -> None:
    from meshsec.controller.demo.demo import remove_stale_workdirs
    from meshsec.controller.demo.network import remove_stale

    proc = subprocess.Popen(
        [*MESHSEC, "demo", "--nodes", "2", "--timeout", "25"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(("✓ agents enrolled", "✗")):
                break
    finally:
        proc.kill()  # no teardown at all: only PR_SET_PDEATHSIG and the next demo can help
        proc.wait()
    out = "".join(lines)
    assert lines[-1].startswith("✓ agents enrolled"), out
    workdir = _workdir(out)
    deadline = time.monotonic() + 10
    while any(f.startswith("process") for f in _leftovers(proc.pid, workdir)):
        assert time.monotonic() < deadline, _leftovers(proc.pid, workdir)
        time.sleep(0.2)
    try:
        assert any(f.startswith("namespace") for f in _leftovers(proc.pid, workdir))  # still there
        remove_stale()
        remove_stale_workdirs()
        assert _leftovers(proc.pid, workdir) == [f"directory {workdir}"]  # only the logs are kept
        assert [p.name for p in workdir.iterdir()] == ["logs"]
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_namespaces_of_a_killed_demo_are_removed_and_a_running_demos_are_kept() -> None:
    from meshsec.controller.demo.network import remove_stale

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs, as a SIGKILLed demo's would be
    stale, live = f"msdemo{dead.pid}-host-1", f"msdemo{os.getpid()}-host-1"
    try:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "add", name], check=True)
        assert stale in remove_stale()
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert stale not in names and live in names
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
