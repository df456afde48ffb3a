"""Ray Train's torch process group with its rendezvous store off the network.

``torch.distributed.init_process_group`` makes rank 0 host a TCPStore (the key-value store the ranks meet through)
that listens on all interfaces for the whole run and has no credential; PyTorch has no setting for its address.
:class:`LocalStoreTorchConfig` (a ``ray.train.torch.TorchConfig``) hosts that store itself, in rank 0's process,
from a socket bound to 127.0.0.1 when every worker runs on this machine (a private local Ray, the one-machine local
cluster), or to rank 0's node address otherwise (never to all interfaces), and has every rank, rank 0 included, join
it as a client (``TORCHELASTIC_USE_AGENT_STORE``). The rest is Ray Train's own set-up (``ray.train.torch.config``).

On a cluster of several machines the store must be reachable from the other nodes: it then listens on rank 0's node
address, without a credential, like any ``torch.distributed`` run (PyTorch's rule: trusted networks only).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

LOOPBACK = "127.0.0.1"
_SERVED: list = []  # rank 0's listening socket and store, kept alive for the run


def _serve_store(host: str, world_size: int, timeout_s: int) -> tuple[str, int]:
    """In rank 0's process: a TCPStore server on a socket bound to ``host`` (a free port); returns its address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    store = dist.TCPStore(host, port, world_size, True, datetime.timedelta(seconds=timeout_s),
                          wait_for_workers=False, multi_tenant=True, master_listen_fd=sock.fileno())
    _SERVED.append((sock, store))
    return host, port


def _close_store() -> None:
    while _SERVED:
        sock, store = _SERVED.pop()
        del store
        sock.close()


def _join_store(addr: str, port: int) -> None:
    """In every rank: ``init_process_group(init_method="env://")`` connects to this store as a client."""
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)
    os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "True"


class _LocalStoreBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: LocalStoreTorchConfig) -> None:
        if backend_config.backend is None:
            gpus = worker_group.get_resources_per_worker().get("GPU", 0)
            backend = "nccl" if gpus > 0 else "gloo"
        else:
            backend = backend_config.backend
        ips = worker_group.execute(ray.util.get_node_ip_address)
        host = LOOPBACK if len(set(ips)) == 1 else ips[0]
        addr, port = worker_group.execute_single(0, _serve_store, host, len(worker_group), backend_config.timeout_s)
        worker_group.execute(_join_store, addr, port)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend=backend, world_rank=i,
                                                   world_size=len(worker_group), init_method="env://",
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config) -> None:
        super().on_shutdown(worker_group, backend_config)
        try:
            worker_group.execute_single(0, _close_store)
        except Exception:  # noqa: BLE001 - rank 0 already gone (a failed worker): its store went with it
            pass


@dataclass
class LocalStoreTorchConfig(TorchConfig):
    """``TorchConfig`` whose rendezvous store listens on 127.0.0.1 (one machine) or rank 0's node address."""

    @property
    def backend_cls(self):
        return _LocalStoreBackend
