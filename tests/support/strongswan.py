"""Run strongSwan's charon (charon-systemd + kernel-libipsec) as a reference peer inside a test namespace.

Follows shared/interop/strongswan-libipsec/README.md: one instance per namespace with its own
STRONGSWAN_CONF, the vici socket in the instance's folder, `swanctl --load-all --file`, and
`swanctl --initiate`.  The kernel here has no XFRM ESP, so kernel-libipsec does ESP in user space on a
TUN (`ipsec0`), always UDP-encapsulated on 4500, tunnel mode only.  Config text in, methods out; used
by the data-plane benchmark and by the IKE interop tests.  Never run `charon-systemd --version`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

CHARON = "/usr/sbin/charon-systemd"
SWANCTL = "swanctl"

#: charon's plugins; kernel-libipsec before kernel-netlink (the interop notes' order).
PLUGINS = (
    "random nonce openssl pem pkcs1 x509 pubkey kdf curve25519 "
    "kernel-libipsec kernel-netlink socket-default vici"
)

#: strongswan.conf for one instance (from the interop notes); @DIR@ becomes the instance's folder and
#: @LOGLEVELS@ extra filelog subsystem levels ("ike = 4" etc. when debugging).
STRONGSWAN_CONF = """\
charon {
    load_modular = no
    # kernel-libipsec must come BEFORE kernel-netlink: libipsec does IPsec, netlink does routes
    load = @PLUGINS@
    install_routes = yes
    routing_table = 220
    routing_table_prio = 220
    filelog {
        lab {
            path = @DIR@/charon.log
            append = no
            flush_line = yes
            time_format = %T
            default = 1
            @LOGLEVELS@
        }
    }
    plugins {
        vici {
            socket = unix://@DIR@/charon.vici
        }
    }
}
swanctl {
    socket = unix://@DIR@/charon.vici
}
"""


class CharonError(RuntimeError):
    """charon did not start or a swanctl command failed; the message carries the log tail."""


class Charon:
    """One charon instance in namespace `ns` (a tests.support.netns.Namespace), files under `workdir`.

    `swanctl_conf` is the full swanctl.conf text (connections + secrets).  Use as a context manager or
    call `stop()`; the namespace harness also kills it when the topology closes.
    """

    def __init__(
        self,
        ns: Any,
        workdir: str,
        swanctl_conf: str,
        *,
        strongswan_conf: str = STRONGSWAN_CONF,
        log_levels: dict[str, int] | None = None,
    ) -> None:
        self.ns = ns
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.swanctl_path = os.path.join(workdir, "swanctl.conf")
        self.conf_path = os.path.join(workdir, "strongswan.conf")
        self.vici = os.path.join(workdir, "charon.vici")
        self.log_path = os.path.join(workdir, "charon.log")
        levels = "\n            ".join(f"{k} = {v}" for k, v in (log_levels or {}).items())
        with open(self.conf_path, "w") as fh:
            text = strongswan_conf.replace("@PLUGINS@", PLUGINS).replace("@DIR@", workdir)
            fh.write(text.replace("@LOGLEVELS@", levels))
        with open(self.swanctl_path, "w") as fh:
            fh.write(swanctl_conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Charon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def uri(self) -> str:
        return f"unix://{self.vici}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-chars:]
        except OSError:
            return "(no charon.log)"

    def start(self, timeout: float = 15) -> Charon:
        """Start charon and wait until its vici socket accepts swanctl."""
        env = {**os.environ, "STRONGSWAN_CONF": self.conf_path}
        stderr = open(os.path.join(self.dir, "charon.stderr"), "wb")  # noqa: SIM115 - lives with the process
        self.proc = self.ns.popen(
            ["env", f"STRONGSWAN_CONF={self.conf_path}", CHARON],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CharonError(f"charon exited with {self.proc.returncode}: {self.log_tail()}")
            if os.path.exists(self.vici) and self.swanctl("--stats", check=False).returncode == 0:
                return self
            time.sleep(0.05)
        raise CharonError(f"charon vici socket {self.vici} not ready after {timeout}s: {self.log_tail()}")

    def swanctl(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        result = self.ns.run(SWANCTL, *args, "--uri", self.uri, check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise CharonError(
                f"swanctl {' '.join(args)} failed ({result.returncode}): {result.stdout[-1500:]}"
                f"{result.stderr[-1500:]}\n--- charon.log ---\n{self.log_tail()}"
            )
        return result

    def load(self) -> str:
        """`swanctl --load-all` with this instance's swanctl.conf."""
        return self.swanctl("--load-all", "--file", self.swanctl_path).stdout

    def initiate(self, child: str, ike: str, timeout: float = 20) -> str:
        """Bring up CHILD_SA `child` of connection `ike`; raises CharonError (with the log) on failure."""
        return self.swanctl(
            "--initiate", "--child", child, "--ike", ike, "--timeout", str(int(timeout)), timeout=timeout + 5
        ).stdout

    def list_sas(self) -> str:
        return self.swanctl("--list-sas").stdout

    def stop(self) -> None:
        """SIGTERM (charon removes its routes and TUN), then SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


def psk_tunnel_conf(
    *,
    local_addr: str,
    remote_addr: str,
    local_id: str,
    remote_id: str,
    local_ts: str,
    remote_ts: str,
    psk: str,
    esp_proposals: str = "aes128gcm16",
    ike_proposals: str = "aes128gcm16-prfsha256-x25519",
    mode: str = "tunnel",
    conn: str = "lab",
    child: str = "net",
) -> str:
    """swanctl.conf text for a PSK tunnel like the interop notes' swanctl-a.conf / swanctl-b.conf."""
    return f"""connections {{
    {conn} {{
        version = 2
        local_addrs = {local_addr}
        remote_addrs = {remote_addr}
        proposals = {ike_proposals}
        rekey_time = 0
        local {{
            auth = psk
            id = {local_id}
        }}
        remote {{
            auth = psk
            id = {remote_id}
        }}
        children {{
            {child} {{
                mode = {mode}
                local_ts = {local_ts}
                remote_ts = {remote_ts}
                esp_proposals = {esp_proposals}
                rekey_time = 0
                start_action = none
            }}
        }}
    }}
}}
secrets {{
    ike-{conn} {{
        id-a = {local_id}
        id-b = {remote_id}
        secret = "{psk}"
    }}
}}
"""
