"""One place that starts (or joins) Ray, so every command runs on the same engine the same way."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Join RAY_ADDRESS / ``address`` when given, else start a local instance; no-op if already up."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Workers import signfeat from the driver's working copy, installed or not.
        ray.init(num_cpus=num_cpus, **kwargs)
