"""Agent observability: the scrape-time metrics Collector and the agent's health/readiness probes.

Owns metrics.py (every meshsec_agent_* metric, read from the runtime at scrape time) and probes.py
(what /healthz and /readyz answer).  It must not touch the packet path or change runtime state.
"""
