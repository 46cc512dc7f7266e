"""Controller observability: Prometheus metrics and the /metrics, /healthz, /readyz HTTP endpoint.

Owns metric definitions (metrics.py), the small HTTP server shared with the agent (http.py), the
readiness/liveness state and endpoint start-up (probes.py), the gRPC interceptor that counts Sync
streams, enrollments and applies (grpc_metrics.py) and etcd request timing (etcd.py).  It must not
change what the services do: it only observes.  Importing this package imports nothing else.
"""
