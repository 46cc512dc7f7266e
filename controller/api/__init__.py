"""The controller's gRPC surface: AgentService, AdminService, health and reflection over mTLS.

Owns request authentication/authorization (from the TLS peer certificate), the Sync/Report stream
mechanics and the server assembly (TCP on 127.0.0.1 and a unix socket).  It must not compile configs
(controller/desired does) nor spell etcd keys beyond controller/store's Keys.
"""

from meshsec.controller.api.server import Controller, ControllerConfig

__all__ = ["Controller", "ControllerConfig"]
