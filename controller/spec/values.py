"""Parsers for the scalar value types of mesh.yaml: durations, sizes, names, CIDRs, endpoints, identities.

Each parser returns the parsed value or raises `BadValue` with a reason that reads well after
"field: ".  Pure functions; no YAML, no protobuf.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "MAX_U32",
    "MAX_U64",
    "BadValue",
    "Endpoint",
    "format_duration",
    "format_size",
    "parse_cidr",
    "parse_duration",
    "parse_endpoint",
    "parse_identity",
    "parse_name",
    "parse_size",
]

MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1


class BadValue(ValueError):
    """A scalar that does not parse; the message is the user-facing reason."""


_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_DURATION_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
IDENTITY_TYPES = ("fqdn", "email", "ipv4", "ipv6", "dn", "keyid")


def parse_name(text: str) -> str:
    """Resource names are DNS labels so they can appear in identities ("fqdn:{name}.meshsec") and keys."""
    if not _NAME.fullmatch(text):
        raise BadValue(
            f"{text!r} is not a valid name (a DNS label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return text


def parse_duration(value: str | int) -> int:
    """Seconds from "1h30m", "45s", "2d" or a bare integer (seconds); "0" means no limit."""
    if isinstance(value, int):
        seconds = value
    else:
        text = value.strip()
        if text == "0":
            return 0
        m = _DURATION.fullmatch(text)
        if not text or m is None:
            raise BadValue(f'{value!r} is not a duration (use e.g. "4h", "30m", "45s", "1h30m")')
        seconds = sum(int(g) * unit for g, (_, unit) in zip(m.groups(), _DURATION_UNITS, strict=True) if g)
    if seconds < 0 or seconds > MAX_U32:
        raise BadValue(f"{value!r} is out of range (0 to {MAX_U32} seconds)")
    return seconds


def format_duration(seconds: int) -> str:
    """The compact form parse_duration reads back: 15840 -> "4h24m"."""
    if seconds == 0:
        return "0s"
    parts = []
    for suffix, unit in _DURATION_UNITS:
        count, seconds = divmod(seconds, unit)
        if count:
            parts.append(f"{count}{suffix}")
    return "".join(parts)


def parse_size(value: str | int) -> int:
    """Bytes from "1GiB", "500MB" or an integer."""
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE.fullmatch(value.strip())
        if m is None:
            raise BadValue(f'{value!r} is not a size (use e.g. "1GiB", "500MB" or a number of bytes)')
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if size < 0 or size > MAX_U64:
        raise BadValue(f"{value!r} is out of range")
    return size


def format_size(size: int) -> str | int:
    for suffix in ("TiB", "GiB", "MiB", "KiB"):
        unit = _SIZE_UNITS[suffix]
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return size


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network in CIDR form; host bits must be zero (a common typo that would route the wrong range)."""
    if "/" not in text:
        raise BadValue(f'{text!r} is not a CIDR (write it with a prefix length, e.g. "{text}/32")')
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise BadValue(f"{text!r} is not a CIDR") from exc
        raise BadValue(f"{text!r} has host bits set; did you mean {str(loose)!r}?") from exc


class Endpoint(tuple):
    """(host, port, is_ip) — host without brackets."""

    __slots__ = ()

    @property
    def host(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]

    @property
    def is_ip(self) -> bool:
        return self[2]


def parse_endpoint(text: str) -> Endpoint:
    """ "198.18.0.1", "198.18.0.1:4500", "[fd00::1]:4500", "fd00::1" or "gw.example.net:4500"."""
    host, port_text = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadValue(f"{text!r} is not an endpoint (missing ']')")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise BadValue(f"{text!r} is not an endpoint (expected ':port' after ']')")
            port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise BadValue(f"{text!r} is not an endpoint ({host!r} is not an IPv6 address)") from exc
    elif text.count(":") > 1:
        try:
            ipaddress.IPv6Address(text)
        except ValueError as exc:
            raise BadValue(
                f'{text!r} is not an endpoint (write IPv6 with a port as "[fd00::1]:4500")'
            ) from exc
    elif ":" in text:
        host, port_text = text.split(":", 1)
    port = 500
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise BadValue(f"{text!r} is not an endpoint (port must be 1-65535)")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        if not _HOSTNAME.fullmatch(host) or host.replace(".", "").isdigit():
            raise BadValue(f"{text!r} is not an endpoint (expected an IP address or host name)") from None
        is_ip = False
    return Endpoint((host, port, is_ip))


def parse_identity(text: str) -> str:
    """IKE identities carry their type explicitly ("fqdn:gw.example.net") so nothing is guessed."""
    kind, sep, value = text.partition(":")
    if not sep or kind not in IDENTITY_TYPES or not value:
        raise BadValue(
            f"{text!r} is not an identity (write TYPE:VALUE with TYPE one of {', '.join(IDENTITY_TYPES)})"
        )
    if kind in ("ipv4", "ipv6"):
        try:
            addr = ipaddress.ip_address(value)
        except ValueError as exc:
            raise BadValue(f"{text!r} is not an identity ({value!r} is not an IP address)") from exc
        if (addr.version == 4) != (kind == "ipv4"):
            raise BadValue(f"{text!r} is not an identity (address family does not match {kind})")
    return text
