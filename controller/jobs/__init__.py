"""Singleton jobs of the controller and the etcd lease election that decides where they run.

Owns the election key (``/meshsec/v1/election/<name>``), the runner that starts/stops jobs with the
term, and the jobs themselves: garbage collection of nodes gone too long (gc.py), CA rollover scheduling
(rotation.py), and the address-allocation hook (alloc.py).  It must not touch gRPC; it writes etcd
only through controller/store and only with the term's guard.
"""

from meshsec.controller.jobs.election import ELECTION_PREFIX, LeaderElection, Leadership, election_key
from meshsec.controller.jobs.runner import Job, JobFn, SingletonRunner, periodic

__all__ = [
    "ELECTION_PREFIX",
    "Job",
    "JobFn",
    "LeaderElection",
    "Leadership",
    "SingletonRunner",
    "election_key",
    "periodic",
    "standard_jobs",
]


def standard_jobs(store, sealer, *, gc=None, rollover=None, rotation_interval: float | None = None):  # type: ignore[no-untyped-def]
    """The controller's singleton jobs: gc and CA rotation (what controller/api/server.py runs).

    rollover: the RolloverPolicy (use rollover.policy_for(node_cert_lifetime), and give the same one
    to LifecycleHandlers); the rotation check runs every min(30 s, propagate / 4)."""
    from meshsec.controller.ca.rollover import RolloverPolicy
    from meshsec.controller.jobs.gc import GcSettings, gc_job
    from meshsec.controller.jobs.rotation import rotation_job

    policy = rollover or RolloverPolicy()
    interval = rotation_interval or min(30.0, policy.propagate.total_seconds() / 4)
    return [
        gc_job(store, gc or GcSettings()),
        rotation_job(store, sealer, policy, interval=interval),
    ]
