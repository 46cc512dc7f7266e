"""Exit codes and the one-line error type every meshctl failure becomes."""

from __future__ import annotations

import enum

import grpc

__all__ = ["EXIT_CODES_HELP", "CliError", "Exit", "from_rpc_error"]


class Exit(enum.IntEnum):
    OK = 0
    USAGE = 1  # bad arguments, unreadable file or config
    INVALID_SPEC = 2  # mesh.yaml has errors (one line each on stderr)
    UNREACHABLE = 3  # controller cannot be reached
    UNAUTHORIZED = 4  # missing/refused credentials, permission denied
    NOT_FOUND = 5  # the named node (or resource) does not exist
    CONFLICT = 6  # the controller refused because of the current state
    CONTROLLER_ERROR = 7  # the controller failed; see its logs
    INTERRUPTED = 130


EXIT_CODES_HELP = """exit codes:
  0  success
  1  usage error: bad arguments, unreadable file or meshctl.yaml
  2  invalid mesh.yaml (one line per problem: file:line: field: reason)
  3  controller unreachable
  4  unauthorized: missing or refused admin certificate, permission denied
  5  not found
  6  conflict with the controller's current state
  7  controller error
  130 interrupted"""

ADMIN_HINT = "the controller requires an admin certificate (--cert/--key or meshctl.yaml)"


class CliError(Exception):
    """A failure to print as one line (prefixed "meshctl: ") and exit with `code`."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = " ".join(message.split())  # always one line


def _reason(details: str) -> str:
    low = details.lower()
    if "no such file" in low:
        return "no such file"
    if "connection refused" in low:
        return "connection refused"
    if "deadline" in low or "timed out" in low or "timeout" in low:
        return "timed out"
    return details.split(";")[-1].strip() or "unavailable"


def from_rpc_error(exc: grpc.RpcError, target: str) -> CliError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    low = details.lower()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        if any(word in low for word in ("handshake", "ssl", "tls", "certificate")):
            return CliError(
                Exit.UNAUTHORIZED,
                f"TLS handshake with controller at {target} failed: check that --ca is the mesh CA "
                "(the controller's certificate must verify against it)",
            )
        if "socket closed" in low or "connection reset" in low:
            # With mTLS this is the server refusing our client certificate during the handshake.
            return CliError(
                Exit.UNAUTHORIZED,
                f"controller at {target} closed the connection during the TLS handshake: {ADMIN_HINT} "
                "issued by the mesh CA",
            )
        return CliError(
            Exit.UNREACHABLE,
            f"cannot reach controller at {target}: {_reason(details)}; is meshsec-controller running?",
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return CliError(
            Exit.UNAUTHORIZED, f"unauthenticated: {ADMIN_HINT}" + (f" ({details})" if details else "")
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return CliError(
            Exit.UNAUTHORIZED, f"permission denied: {ADMIN_HINT}" + (f" ({details})" if details else "")
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return CliError(Exit.NOT_FOUND, details or "not found")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return CliError(Exit.USAGE, f"rejected by the controller: {details}")
    if code in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED):
        return CliError(Exit.CONFLICT, f"conflict: {details}")
    return CliError(Exit.CONTROLLER_ERROR, f"controller error ({code.name}): {details or 'no details'}")
