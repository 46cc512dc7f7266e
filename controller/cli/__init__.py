"""meshctl: the operator CLI (verb-noun like kubectl) over AdminService.

Owns argument parsing, connection settings, rendering and the mapping of every failure to one line and
a documented exit code.  Talks to the controller only through the AdminService API; never imports
controller server code (only the spec loader, for local validation and mesh.yaml rendering).
"""

import os

# gRPC's C core logs TLS handshake failures to stderr itself; meshctl reports them as one line instead.
# An explicit GRPC_VERBOSITY still wins, for debugging.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
