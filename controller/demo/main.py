"""`meshsec`: the umbrella command; `meshsec demo` brings up a whole mesh on this machine.

Owns the command line, signal handling and exit codes of the demo; the steps live in `demo.py`.
SIGTERM and SIGHUP are turned into an exception in the main thread so they unwind through the same
teardown as Ctrl-C and failures; while tearing down, further signals are held back so a second Ctrl-C
cannot leave half the namespaces behind (a demo killed with SIGKILL leaves only namespaces, which the
next `meshsec demo` removes, and its processes die with it through PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType

from .demo import Demo, Options, remove_stale_workdirs
from .network import remove_stale
from .plan import MAX_NODES, MIN_NODES
from .preflight import problems
from .ui import FAIL, OK, StepFailed, Ui

EXIT_CODES = """exit codes:
  0    the mesh came up and every check passed (stopped by Ctrl-C, SIGTERM or --duration)
  1    a step failed (the line starting with ✗ says which and why, and names the log to read)
  2    usage error
  3    this machine cannot run the demo (not root, no /dev/net/tun, no namespaces, a tool missing)
  130  interrupted before the mesh was up
"""


class Terminated(BaseException):
    """SIGTERM/SIGHUP, raised in the main thread so teardown runs (BaseException: never swallowed)."""


_OWNER = os.getpid()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    """Unwind the demo's main thread into teardown; in a forked helper, just die.

    pyroute2 forks short-lived children (namespace creation, NetNS sockets) that inherit this handler;
    letting the exception unwind there would run a second teardown from inside the child.
    """
    if os.getpid() != _OWNER:
        os._exit(128 + signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signal.Signals(signum).name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshsec", description="meshsec: an IPsec (IKEv2/ESP) mesh VPN for fleets."
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser(
        "demo",
        help="bring up a live mesh of hosts in network namespaces on this machine (root)",
        description=(
            "Create hosts in network namespaces (plus two site LANs), start a controller with an "
            "embedded etcd and one agent per host, apply a mesh.yaml, wait for every SA, check "
            "traffic with a ping matrix and iperf3, print `meshctl status`, and keep the mesh up "
            "until Ctrl-C.  Everything it made is removed when it stops."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument(
        "--nodes", type=int, default=4, help=f"number of hosts, {MIN_NODES}..{MAX_NODES} (default 4)"
    )
    d.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop S seconds after the checks pass (default: run until Ctrl-C; 0 = stop at once)",
    )
    d.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="longest wait for each step: controller up, agents in sync, SAs up (default 60)",
    )
    d.add_argument("--keep-logs", action="store_true", help="keep the log folder after a clean run too")
    return p


def run_demo(args: argparse.Namespace) -> int:
    ui = Ui()
    if not MIN_NODES <= args.nodes <= MAX_NODES:
        ui.line(f"meshsec demo: --nodes must be between {MIN_NODES} and {MAX_NODES}", "bold red")
        return 2
    if args.timeout <= 0 or (args.duration is not None and args.duration < 0):
        ui.line("meshsec demo: --timeout must be positive and --duration not negative", "bold red")
        return 2
    refused = problems()
    if refused:
        for text in refused:
            ui.line(f"meshsec demo: {text}", "bold red")
        return 3
    stale = remove_stale()
    dirs = remove_stale_workdirs()
    if stale or dirs:
        ui.line(f"cleaned up after a demo that was killed: {len(stale)} namespaces, {len(dirs)} work dirs")
    demo = Demo(Options(args.nodes, args.duration, args.timeout, args.keep_logs), ui)
    ui.line(f"meshsec demo: {args.nodes} hosts, 2 site LANs; work dir {demo.workdir}", "bold")
    failed, code = True, 1
    try:
        demo.run()
        failed, code = False, 0
    except StepFailed:
        pass
    except (KeyboardInterrupt, Terminated) as exc:
        name = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else str(exc)
        ui.line(f"{name}: stopping")
        failed, code = (False, 0) if demo.ready else (False, 130)
    except Exception as exc:  # a bug: still clean up, and keep the traceback for the report
        trace = demo.logs / "demo-traceback.log"
        trace.write_text(traceback.format_exc())
        ui.line(f"{FAIL} internal error: {type(exc).__name__}: {exc}", "bold red")
        ui.line(f"  log: {trace}", "red")
    finally:
        held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            leftovers = demo.close(failed)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    if leftovers:
        for text in leftovers:
            ui.line(f"{FAIL} cleanup: {text}", "bold red")
    else:
        kept = f"; logs kept in {demo.logs}" if failed or args.keep_logs else ""
        ui.line(f"{OK} removed every namespace, process and file the demo made{kept}", "green")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "demo":
        parser.print_help(sys.stderr)
        return 2
    global _OWNER
    _OWNER = os.getpid()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
