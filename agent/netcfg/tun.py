"""Open a Linux TUN device (layer-3, no packet-info header), optionally with virtio-net headers.

Owns only the file descriptor and the ioctls that shape it (TUNSETIFF, TUNSETVNETHDRSZ,
TUNSETOFFLOAD).  Addresses, MTU and routes belong to `meshsec.agent.netcfg.links`.  The device is
non-persistent: closing the fd removes it, so a crashed agent leaves no interface behind.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
VNET_HDR_LEN = 10

_IFREQ = struct.Struct("16sH22x")


class TunError(OSError):
    """The TUN device could not be created or configured."""


@dataclass
class TunDevice:
    """An open TUN fd. `vnet_hdr` says every read/write carries a 10-byte virtio_net_hdr first."""

    fd: int
    name: str
    vnet_hdr: bool
    tso: bool

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_tun(
    name: str, *, vnet_hdr: bool = False, tso: bool = False, device: str = "/dev/net/tun"
) -> TunDevice:
    """Create TUN `name` (IFF_TUN|IFF_NO_PI) through the clone `device` (a pod may mount it elsewhere).

    `vnet_hdr` lets us write coalesced TCP super-packets (GRO towards the host stack); `tso`
    additionally asks the kernel to hand us unsegmented TCP (up to 64 KB) with partial checksums,
    which the data plane then segments itself (what wireguard-go does).
    """
    if len(name.encode()) > 15:
        raise TunError(f"interface name {name!r} is longer than 15 bytes")
    if tso and not vnet_hdr:
        raise TunError("TSO needs vnet_hdr")
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(f"cannot open {device}: {exc.strerror}; is the tun module loaded?") from exc
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
        real_name = _IFREQ.unpack(ifr)[0].rstrip(b"\0").decode()
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            offload = (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) if tso else 0
            fcntl.ioctl(fd, TUNSETOFFLOAD, offload)
    except OSError as exc:
        os.close(fd)
        raise TunError(f"cannot create TUN {name!r}: {exc.strerror}") from exc
    return TunDevice(fd=fd, name=real_name, vnet_hdr=vnet_hdr, tso=tso)
