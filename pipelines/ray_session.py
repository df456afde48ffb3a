"""The one way the platform starts or joins Ray: :func:`connect`.

With an address (``--address``, or ``RAY_ADDRESS`` as ``ray job submit`` sets it) it joins that cluster. Without one it
starts a private local Ray for this driver (``glccl train``/``demo``/``eval``/``search``/``sweep``, ``glccl data``,
the benchmarks, the test session), never someone else's cluster on the same machine:

- **Own temp dir**, short (Ray's socket paths must stay under 108 characters), deleted when the session closes.
- **Loopback only.** Ray normally replaces 127.0.0.1 by the machine's network address and listens on all interfaces.
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's single-machine mode) makes it keep 127.0.0.1 as the node address, and
  then the GCS, raylet, agents, dashboard, metrics exporters and worker processes bind to 127.0.0.1. Ray reads the
  setting when it is imported, so its cached value is set too, for the ``ray.init`` call only.
- **Token auth, always.** ``RAY_AUTH_MODE=token`` whatever the caller's environment says (a ``disabled`` left over
  from another cluster would otherwise turn it off), with a fresh random token in ``RAY_AUTH_TOKEN`` of this process
  (inherited by the Ray processes it starts; readable only by the same user, like a 0600 file). Nothing is written to
  ``~/.ray``. Other users of this machine can reach 127.0.0.1, and the token shuts them out.
- **Dashboard on request** (``dashboard=True``, on a free port): it serves Ray's state API, which Ray Train needs to
  release the placement group of a run whose controller died (a sweep trial stopped by its scheduler).

    with connect(None, num_cpus=4) as session:   # a private local Ray, shut down and deleted on exit
        ...
    connect(args.address)                        # join a cluster (closing only disconnects)
"""

from __future__ import annotations

import atexit
import math
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Callable

import ray
from ray._private import ray_constants
from ray._raylet import AuthenticationTokenLoader, Config

from glccl.config import RunConfig
from glccl.distributed import free_port

LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_TOKEN: str | None = None


def secure_private_ray() -> Callable[[], None]:
    """Set token auth (own token) and loopback-only binding for a local ``ray.init``; returns the undo of the
    loopback switch, to call once ``ray.init`` has returned (the token stays: the running Ray and this driver need it).
    """
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


def local_cpus(cfg: RunConfig) -> int:
    """Logical CPUs for a private local Ray: the training workers plus room for the Ray Data decode tasks."""
    return max(os.cpu_count() or 1, int(math.ceil(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker)) + 2)


class RaySession:
    """What :func:`connect` did: started a private local Ray (``started``), joined a cluster, or found Ray already
    initialised in this process (then closing does nothing). A context manager; :meth:`close` is idempotent."""

    def __init__(self, started: bool = False, joined: bool = False, temp_dir: str | None = None):
        self.started, self.joined, self.temp_dir = started, joined, temp_dir

    def close(self) -> None:
        if self.started or self.joined:
            ray.shutdown()  # for a joined cluster: disconnects this driver, stops nothing there
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.started = self.joined = False
        self.temp_dir = None

    def __enter__(self) -> RaySession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _keep_signal_handlers():
    """``ray.init`` installs its own SIGTERM handler (it prints a stack and aborts the driver, so ``finally`` blocks and
    exit handlers never run); put back the Python handlers the caller had set (``glccl``'s commands stop their servers
    and this Ray on SIGTERM and SIGHUP). Returns the function that restores them."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in saved.items():
            if callable(handler):
                signal.signal(sig, handler)

    return restore


def connect(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False,
            object_store_mb: int | None = None, log_to_driver: bool = True) -> RaySession:
    """Join ``address`` (or ``RAY_ADDRESS``), or start a private local Ray (see the module docstring); a no-op when
    Ray is already initialised in this process. A private Ray is also shut down at exit if never closed."""
    if ray.is_initialized():
        return RaySession()
    address = address or os.environ.get("RAY_ADDRESS")
    keep_signals = _keep_signal_handlers()
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        keep_signals()
        return RaySession(joined=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = tempfile.mkdtemp(prefix="glr", dir="/tmp")
    kwargs = {}
    if dashboard:
        port = free_port()
        # Ray Train's PlacementGroupCleaner finds the state API through RAY_API_SERVER_ADDRESS, which every process of
        # this Ray inherits: without it, it looks for "the" local cluster and gives up when other Ray instances run on
        # the machine ("Found multiple active Ray instances")
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        kwargs = {"dashboard_host": "127.0.0.1", "dashboard_port": port}
    restore = secure_private_ray()
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, _temp_dir=tmp,
                 object_store_memory=int(object_store_mb * 2**20) if object_store_mb else None,
                 log_to_driver=log_to_driver, configure_logging=False, **kwargs)
    finally:
        restore()
        keep_signals()
    session = RaySession(started=True, temp_dir=tmp)
    atexit.register(session.close)
    return session
