"""Where the controller is and which credentials to use: flags, then env vars, then meshctl.yaml.

meshctl.yaml (--config, env MESHCTL_CONFIG, default ~/.config/meshsec/meshctl.yaml) holds the keys
controller, ca, cert, key; relative paths are resolved against the file's folder, so the file that
`meshsec-controller init` writes next to the admin credentials works from anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import ADMIN_HINT, CliError, Exit

__all__ = ["DEFAULT_CONFIG", "DEFAULT_CONTROLLER", "Settings", "resolve"]

DEFAULT_CONTROLLER = "unix:///run/meshsec/controller.sock"
DEFAULT_CONFIG = "~/.config/meshsec/meshctl.yaml"
KEYS = ("controller", "ca", "cert", "key")


@dataclass(frozen=True)
class Settings:
    controller: str
    ca: Path | None
    cert: Path | None
    key: Path | None

    def read_credentials(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) PEM bytes; refuses early and clearly when any is missing."""
        if self.ca is None or self.cert is None or self.key is None:
            missing = [
                f"--{n}" for n, v in (("ca", self.ca), ("cert", self.cert), ("key", self.key)) if v is None
            ]
            raise CliError(
                Exit.UNAUTHORIZED,
                f"no admin credentials ({', '.join(missing)} not set): {ADMIN_HINT}; "
                "`meshsec-controller init` writes a meshctl.yaml to point MESHCTL_CONFIG at",
            )
        out = []
        for flag, path in (("--ca", self.ca), ("--cert", self.cert), ("--key", self.key)):
            try:
                out.append(path.read_bytes())
            except OSError as exc:
                raise CliError(Exit.USAGE, f"cannot read {flag} {path}: {exc.strerror or exc}") from None
        return out[0], out[1], out[2]


def _load_config(path: Path, explicit: bool) -> dict[str, str]:
    if not path.exists():
        if explicit:
            raise CliError(Exit.USAGE, f"cannot read config {path}: no such file")
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(Exit.USAGE, f"cannot read config {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CliError(Exit.USAGE, f"config {path}: expected a mapping with keys {', '.join(KEYS)}")
    unknown = sorted(set(map(str, data)) - set(KEYS))
    if unknown:
        raise CliError(Exit.USAGE, f"config {path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    return {k: str(v) for k, v in data.items() if v is not None}


def resolve(
    controller: str | None, ca: str | None, cert: str | None, key: str | None, config: str | None
) -> Settings:
    env = os.environ
    explicit = config or env.get("MESHCTL_CONFIG")
    cfg_path = Path(explicit or DEFAULT_CONFIG).expanduser()
    cfg = _load_config(cfg_path, explicit=bool(explicit))

    def path(flag: str | None, env_name: str, cfg_key: str) -> Path | None:
        if flag:
            return Path(flag).expanduser()
        if env.get(env_name):
            return Path(env[env_name]).expanduser()
        if cfg.get(cfg_key):
            p = Path(cfg[cfg_key]).expanduser()
            return p if p.is_absolute() else (cfg_path.parent / p)
        return None

    address = controller or env.get("MESHSEC_CONTROLLER") or cfg.get("controller") or DEFAULT_CONTROLLER
    return Settings(
        controller=address,
        ca=path(ca, "MESHSEC_CA", "ca"),
        cert=path(cert, "MESHSEC_CERT", "cert"),
        key=path(key, "MESHSEC_KEY", "key"),
    )
