"""Run one agent from a NodeConfig file, without a controller (tests, labs, static deployments).

    python -m meshsec.agent.runtime --config node.json [--state-dir DIR] [--tun NAME] [--status-file F]

The file is a NodeConfig in protobuf JSON (or binary, by the .pb suffix).  Prints READY once the data
plane is up.  Signals: SIGHUP re-reads the file and applies it, SIGUSR1 rekeys every Child SA, SIGUSR2
every IKE SA, SIGTERM/SIGINT send DELETE to every peer and remove everything before exit.
`--status-file` is rewritten (JSON NodeStatus) every `--status-interval` seconds.

Exit codes: 0 stopped by signal, 1 bad configuration or cannot set up the host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from google.protobuf import json_format
from meshsec.agent.runtime.host import AgentRuntime, RuntimeOptions
from meshsec.api.v1 import config_pb2


def load_config(path: Path) -> config_pb2.NodeConfig:
    """A NodeConfig from protobuf JSON or (suffix .pb) binary; ValueError names the file on error."""
    data = path.read_bytes()
    cfg = config_pb2.NodeConfig()
    try:
        if path.suffix == ".pb":
            cfg.ParseFromString(data)
        else:
            json_format.Parse(data.decode(), cfg)
    except (json_format.ParseError, UnicodeDecodeError, Exception) as exc:
        raise ValueError(f"{path}: not a NodeConfig: {exc}") from None
    return cfg


def _write_status(runtime: AgentRuntime, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json_format.MessageToJson(runtime.status()))
    os.replace(tmp, path)


async def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    runtime = AgentRuntime(RuntimeOptions(state_dir=args.state_dir, tun_name=args.tun))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    tasks: set[asyncio.Task[None]] = set()

    def reload() -> None:
        try:
            task = loop.create_task(runtime.apply(load_config(args.config)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        except ValueError as exc:
            logging.getLogger("meshsec.agent").error("%s", exc)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, runtime.rekey_children)
    loop.add_signal_handler(signal.SIGUSR2, runtime.rekey_ike)
    try:
        await runtime.apply(config)
        print("READY", flush=True)
        while not stop.is_set():
            if args.status_file:
                _write_status(runtime, args.status_file)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.status_interval)
    finally:
        await runtime.close()
        if args.status_file:
            _write_status(runtime, args.status_file)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meshsec.agent.runtime", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="NodeConfig file (protobuf JSON, or .pb)")
    p.add_argument(
        "--state-dir", type=Path, default=None, help="node-key.pem + node.pem for certificate auth"
    )
    p.add_argument("--tun", default="meshsec0", help="TUN device name")
    p.add_argument("--status-file", type=Path, default=None, help="rewrite NodeStatus JSON here")
    p.add_argument("--status-interval", type=float, default=0.25)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    try:
        return asyncio.run(run(args))
    except (ValueError, OSError) as exc:
        print(f"meshsec-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
