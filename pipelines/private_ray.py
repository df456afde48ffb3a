"""Settings of the private local Ray that a driver starts for itself (``glccl train``/``demo``/``eval``/``search``,
``glccl data prepare``, the test session): token authentication with a token of its own, every socket on 127.0.0.1.

- **Loopback only.** Ray normally replaces 127.0.0.1 by the machine's network address and listens on all interfaces.
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's single-machine mode) makes it keep 127.0.0.1 as the node address, and
  then the GCS, raylet, agents, dashboard, metrics exporters and worker processes bind to 127.0.0.1. Ray reads the
  setting when it is imported, so this module sets its cached value too, for the ``ray.init`` call only.
- **Token auth, always.** ``RAY_AUTH_MODE=token`` whatever the caller's environment says (a ``disabled`` left over
  from another cluster would otherwise turn it off), with a fresh random token in ``RAY_AUTH_TOKEN`` of this process
  (inherited by the Ray processes it starts; readable only by the same user, like a 0600 file). Nothing is written to
  ``~/.ray``. Other users of this machine can reach 127.0.0.1, and the token shuts them out.

Call :func:`secure_private_ray` right before ``ray.init`` of a new local instance and the function it returns right
after. Connecting to an existing cluster (an address) never goes through here.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_TOKEN: str | None = None


def secure_private_ray() -> Callable[[], None]:
    """Set token auth (own token) and loopback-only binding for a local ``ray.init``; returns the undo of the
    loopback switch, to call once ``ray.init`` has returned (the token stays: the running Ray and this driver need it).
    """
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    global _TOKEN
    if _TOKEN is None:  # one token per process: Ray caches it, and a second local Ray may follow a first one
        _TOKEN = secrets.token_hex(32)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = _TOKEN
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    Config.initialize("")  # Ray caches the auth mode and the token: re-read both from the environment
    AuthenticationTokenLoader.instance().reset_cache()

    previous_env = os.environ.get(LOOPBACK_SWITCH)
    previous_const = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_SWITCH] = "0"  # for the processes ray.init starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # for this process, which read the variable at import

    def restore() -> None:
        ray_constants.ENABLE_RAY_CLUSTER = previous_const
        if previous_env is None:
            os.environ.pop(LOOPBACK_SWITCH, None)
        else:
            os.environ[LOOPBACK_SWITCH] = previous_env

    return restore
