"""``glccl submit``: submit a training run or a sweep to a Ray cluster as a Ray job (a thin ``ray job submit``).

    glccl submit -- python -m pipelines.train --config configs/demo.yaml train.epochs=2
    glccl submit --follow -- python -m sweeps.tune --config sweeps/demo.yaml
    glccl submit --address http://HEAD:8265 --mlflow http://MLFLOW:5000 -- python -m pipelines.train --config ...
    glccl submit --print-command -- python -m pipelines.train --config configs/demo.yaml   # the raw ray command

The job uploads this repository (``working_dir``, with the excludes of ``cluster/runtime_env.yaml``) and runs the
entrypoint on the head node. Cluster address, in order: ``--address``; the local cluster of ``--cluster-dir``;
``RAY_ADDRESS`` (an ``http://`` dashboard address); the local cluster under ``runs/cluster``. With a local cluster
(``python -m cluster.local up``) the job's ``MLFLOW_TRACKING_URI`` is set to that cluster's MLflow server and the
client authenticates with the cluster's token (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH=<dir>/auth_token``);
``--mlflow URI`` overrides the tracking server. Other clusters take the caller's own ``RAY_AUTH_*`` settings.

Prints the job id and the ``ray job logs/status/stop`` commands to follow it; ``--follow`` streams the logs and exits
0 when the job succeeds, 1 when it fails or is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from ray.job_submission import JobSubmissionClient

from cluster.local import FOREIGN_ENV, LocalCluster

HERE = Path(__file__).resolve().parent
DEFAULT_RUNTIME_ENV = HERE / "runtime_env.yaml"
DEFAULT_CLUSTER_DIR = "runs/cluster"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def split_entrypoint(argv: list[str]) -> tuple[list[str], list[str]]:
    """Options before ``--``, the entrypoint after it."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def resolve_target(address: str | None, cluster_dir: str | None) -> dict[str, Any]:
    """Where to submit: ``{"address": http://..., "env": {...client env}, "cluster": LocalCluster or None,
    "mlflow_uri": ... or None, "source": ...}``."""
    if address:
        return {"address": address, "env": {}, "cluster": None, "mlflow_uri": None, "source": "--address"}
    candidates = [cluster_dir] if cluster_dir else []
    if not cluster_dir and os.environ.get("RAY_ADDRESS", "").startswith("http"):
        return {"address": os.environ["RAY_ADDRESS"], "env": {}, "cluster": None, "mlflow_uri": None,
                "source": "RAY_ADDRESS"}
    if not cluster_dir:
        candidates.append(DEFAULT_CLUSTER_DIR)
    for d in candidates:
        if (Path(d) / "state.json").is_file():
            c = LocalCluster.load(d)
            return {"address": c.dashboard_url, "env": c.auth_env(), "cluster": c, "mlflow_uri": c.mlflow_uri,
                    "source": f"local cluster {c.dir}"}
    where = cluster_dir or DEFAULT_CLUSTER_DIR
    raise SystemExit(f"glccl submit: no cluster address: pass --address http://HEAD:DASHBOARD_PORT, set RAY_ADDRESS, "
                     f"or start a local cluster (python -m cluster.local up; looked for {where}/state.json)")


def build_runtime_env(path: str | Path | None, working_dir: str | None, mlflow_uri: str | None,
                      env: list[str]) -> dict[str, Any]:
    """``cluster/runtime_env.yaml`` with the working dir made absolute and the tracking URI / extra env vars filled."""
    renv: dict[str, Any] = {}
    if path:
        renv = yaml.safe_load(Path(path).read_text()) or {}
    if working_dir is not None:
        renv["working_dir"] = working_dir
    if renv.get("working_dir") and "://" not in str(renv["working_dir"]):
        renv["working_dir"] = str(Path(renv["working_dir"]).resolve())
    env_vars = {str(k): str(v) for k, v in (renv.get("env_vars") or {}).items()}
    if mlflow_uri:
        env_vars["MLFLOW_TRACKING_URI"] = mlflow_uri
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"glccl submit: --env expects KEY=VALUE, got {item!r}")
        env_vars[key] = value
    if env_vars:
        renv["env_vars"] = env_vars
    return renv


def ray_command(address: str, runtime_env: dict[str, Any], entrypoint: list[str], job_id: str | None = None,
                no_wait: bool = True) -> list[str]:
    """The equivalent ``ray job submit`` command line."""
    renv = dict(runtime_env)
    wd = renv.pop("working_dir", None)
    cmd = ["ray", "job", "submit", "--address", address]
    if job_id:
        cmd += ["--submission-id", job_id]
    if wd:
        cmd += ["--working-dir", wd]
    if renv:
        cmd += ["--runtime-env-json", json.dumps(renv)]
    if no_wait:
        cmd.append("--no-wait")
    return cmd + ["--", *entrypoint]


def follow(client, job_id: str, poll_s: float = 2.0) -> str:
    """Print the job's logs as they grow until it ends; returns the final status."""
    printed = 0
    while True:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            sys.stdout.write(logs[printed:])
            sys.stdout.flush()
            printed = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    opts, entrypoint = split_entrypoint(list(sys.argv[1:] if argv is None else argv))
    p = argparse.ArgumentParser(prog="glccl submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="glccl submit [options] -- ENTRYPOINT ...")
    p.add_argument("--address", default=None, help="the cluster's dashboard / job server, http://HOST:PORT")
    p.add_argument("--cluster-dir", default=None, help=f"a local cluster's dir (default {DEFAULT_CLUSTER_DIR})")
    p.add_argument("--runtime-env", default=str(DEFAULT_RUNTIME_ENV), help="runtime env YAML ('' for none)")
    p.add_argument("--working-dir", default=None, help="directory to upload (default: the runtime env's, i.e. .)")
    p.add_argument("--mlflow", default=None, help="MLFLOW_TRACKING_URI for the job (default: the local cluster's)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env var for the job")
    p.add_argument("--job-id", default=None, help="submission id (default: generated)")
    p.add_argument("--follow", action="store_true", help="stream the logs until the job ends; exit 0 on success")
    p.add_argument("--print-command", action="store_true", help="print the equivalent `ray job submit` and exit")
    args = p.parse_args(opts)
    if not entrypoint:
        p.error("give the entrypoint after --, e.g. -- python -m pipelines.train --config configs/demo.yaml")

    target = resolve_target(args.address, args.cluster_dir)
    renv = build_runtime_env(args.runtime_env or None, args.working_dir, args.mlflow or target["mlflow_uri"], args.env)
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in target["env"].items())
    if args.print_command:
        print((prefix + " " if prefix else "") + shlex.join(ray_command(target["address"], renv, entrypoint,
                                                                        args.job_id)))
        return 0

    if target["env"]:  # a local cluster: its token only (another one in the caller's env would take precedence)
        for key in FOREIGN_ENV:
            os.environ.pop(key, None)
    os.environ.update(target["env"])
    # Ray's job client lets these two override its explicit address argument: make them agree with the target
    os.environ["RAY_ADDRESS"] = os.environ["RAY_API_SERVER_ADDRESS"] = target["address"]
    # A local cluster's token goes in the header: Ray read this process's auth settings when it was imported, before
    # the lines above. Other clusters authenticate with the caller's own RAY_AUTH_* settings.
    headers = target["cluster"].auth_headers() if target["cluster"] is not None else None
    client = JobSubmissionClient(target["address"], headers=headers)
    job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=renv, submission_id=args.job_id)
    ray_cli = f"{prefix + ' ' if prefix else ''}ray job"
    addr = f"--address {target['address']}"
    print(f"submitted job {job_id} to {target['address']} ({target['source']})")
    if renv.get("env_vars", {}).get("MLFLOW_TRACKING_URI"):
        print(f"  MLflow        : {renv['env_vars']['MLFLOW_TRACKING_URI']}")
    print(f"  follow logs   : {ray_cli} logs -f {addr} {job_id}")
    print(f"  status        : {ray_cli} status {addr} {job_id}")
    print(f"  stop          : {ray_cli} stop {addr} {job_id}")
    print(f"JOB_ID={job_id}", flush=True)
    if not args.follow:
        return 0
    status = follow(client, job_id)
    print(f"\njob {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
