"""Joining Ray: the cluster at RAY_ADDRESS, else a new local instance bound to 127.0.0.1.

The one place that calls ``ray.init``, used by the Ray layer (``pipeline``, ``training``) and by the
commands that start Ray before a run (``dualcam demo``, ``dualcam experiment``). Ray is imported
inside the functions, so importing this module never imports Ray.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any


def connect(quiet: bool = False) -> ModuleType:
    """Ray, initialized: the cluster at RAY_ADDRESS if set, else a new local instance on 127.0.0.1.

    ``quiet`` keeps the workers' output and Ray's info lines off the console (they stay in Ray's
    session logs); it only applies when this call is the one that initializes Ray.
    """
    # A new local Ray binds to loopback only with this set before ray is imported.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        # What a new local Ray does by default in Ray 2.60 (token authentication, ~/.ray/auth_token),
        # said explicitly: Ray then no longer warns on every run that it turned it on.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if not ray.is_initialized():
        quieted: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING} if quiet else {}
        ray.init(address=address or "local", include_dashboard=False, **quieted)
        if quiet:
            import ray.data  # configures its own loggers on import: quiet them after that

            logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ray


def largest_node_cpus(ray: ModuleType) -> float:
    """CPUs of the biggest live node: no single actor or worker can have more."""
    return max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]), default=1.0)
