"""Starting or joining Ray the same way everywhere (CLI, jobs, tests).

Inside ``ray job submit`` the driver joins the cluster named by
``RAY_ADDRESS``; elsewhere a quiet single-machine Ray is started in-process
(DESIGN.md §9: bind 127.0.0.1, no usage stats, small object store, no
dashboard). Only what this process started is ever shut down.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Without the first, Ray binds the machine's external interface instead of 127.0.0.1.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
}
OBJECT_STORE_BYTES = 256 * 1024**2
# Ray reads these when it is first imported, so set them as soon as this module is.
for _key, _value in RAY_ENV.items():
    os.environ.setdefault(_key, _value)


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> bool:
    """Make sure this process is connected to Ray; return True if it started Ray itself.

    Args:
        num_cpus: CPUs of a locally started Ray (default: all).
        address: a cluster to join; default ``$RAY_ADDRESS`` if set, else start locally.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return False
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    return True


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None, address: str | None = None) -> Iterator[None]:
    """``with ray_session():`` - Ray for the block; shut down afterwards only if started here."""
    import ray

    started = ensure_ray(num_cpus, address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
