"""Can this machine run the demo?  Checked before anything is created, all problems reported at once.

Owns only read-only probes (plus one throw-away namespace, created and deleted at once, because the
only reliable test for "may I create network namespaces" is to try).
"""

from __future__ import annotations

import errno
import os
import shutil

from pyroute2 import netns

TUN = "/dev/net/tun"
TOOLS = {
    "etcd": "the controller's embedded etcd (Debian: etcd-server)",
    "ping": "the ping matrix (Debian: iputils-ping)",
    "iperf3": "the throughput check (Debian: iperf3)",
}


def problems() -> list[str]:
    """One line per reason the demo cannot run here, each with the fix; empty means go."""
    if os.geteuid() != 0:
        return ["needs root: it creates network namespaces and TUN devices (run: sudo meshsec demo)"]
    out = []
    try:
        fd = os.open(TUN, os.O_RDWR)  # opening without TUNSETIFF creates no device
        os.close(fd)
    except OSError as exc:
        fix = (
            "load the tun module (modprobe tun)"
            if exc.errno == errno.ENOENT
            else "in a container, pass the device through (--device /dev/net/tun)"
        )
        out.append(f"cannot open {TUN}: {exc.strerror}; {fix}")
    probe = f"msdemo-probe-{os.getpid()}"
    try:
        netns.create(probe)
    except OSError as exc:
        out.append(
            f"cannot create network namespaces: {exc.strerror or exc}; "
            "in a container this needs CAP_SYS_ADMIN (--privileged)"
        )
    else:
        netns.remove(probe)
    for tool, why in TOOLS.items():
        if shutil.which(tool) is None:
            out.append(f"{tool} not found, needed for {why}; `bash .ci/setup` installs it")
    return out
