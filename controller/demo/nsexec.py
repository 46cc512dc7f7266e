"""`python -m meshsec.controller.demo.nsexec NAMESPACE PARENT_PID -- CMD...`: run CMD inside a namespace.

NAMESPACE `-` stays in the current one (the controller): the launcher then only ties CMD's life to the
demo.

Owns only "enter a named network namespace, tie the child's life to the demo, exec".  Why a launcher
and not the alternatives:
- `ip netns exec` would make product code shell out to `ip` (the team rule forbids it) and also
  remounts /sys in a new mount namespace, which nothing the demo runs needs.
- `subprocess.Popen(preexec_fn=setns)` runs Python between fork and exec in a process that already has
  gRPC threads; CPython documents preexec_fn as unsafe with threads (a lock held by another thread at
  fork time deadlocks the child).  A launcher that exec()s keeps the parent's fork free of Python code.
The launcher imports nothing heavy, so it costs one interpreter start-up per process.

PR_SET_PDEATHSIG makes the kernel SIGKILL the command when the demo dies, even by SIGKILL, so no agent
or iperf3 outlives a killed demo; checking the parent pid afterwards closes the race where the demo
died before the prctl.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

NETNS_DIR = "/var/run/netns"
ROOT = "-"  # stay in the namespace we were started in
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
USAGE = "usage: python -m meshsec.controller.demo.nsexec NAMESPACE PARENT_PID -- CMD [ARG...]"


def enter(namespace: str) -> None:
    """Move the calling thread into the named network namespace (raises OSError)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--" or not argv[1].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    namespace, parent, cmd = argv[0], int(argv[1]), argv[3:]
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the demo is already gone
        return 1
    try:
        if namespace != ROOT:
            enter(namespace)
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"nsexec: {cmd[0]} in {namespace}: {exc.strerror or exc}", file=sys.stderr)
        return 127
    return 127  # not reached: execvp does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
