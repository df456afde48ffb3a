"""Cluster configs, offline: the Ray autoscaler YAMLs against the schema shipped in the Ray wheel, the KubeRay
manifests structurally, the Dockerfile, the runtime env, and the pieces of ``cluster.local`` / ``cluster.submit``
that need no cluster (port layout, argument handling, process-tree bookkeeping on a throwaway process)."""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAY_VERSION = "2.60.0"
IMAGE = f"ghcr.io/glccl/glccl:0.1.0-ray{RAY_VERSION}"


def _load(path: Path):
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------------------------------
# Ray autoscaler


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_autoscaler_config_passes_ray_schema(name):
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load(CLUSTER / name)
    cfg = prepare_config(copy.deepcopy(raw))  # merges the provider's defaults.yaml; no cloud calls
    validate_config(cfg)  # raises on any schema error

    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")  # a CPU head that runs no work
    assert head["max_workers"] == 0
    cpu = [t for k, t in types.items() if k != cfg["head_node_type"] and not t["resources"].get("GPU")]
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert cpu and all(t["resources"].get("data") == 1 for t in cpu)  # CPU nodes for data work
    assert gpu and all(t["max_workers"] >= 1 for t in gpu)  # GPU nodes for training
    assert cfg["max_workers"] >= sum(t["max_workers"] for t in types.values())

    setup = " ".join(cfg["setup_commands"])
    assert "torch==2.13.0" in setup and "-c ~/glccl/constraints.txt" in setup
    assert "glccl[video,platform]" in setup  # installs the project (ray and mlflow come with its platform extra)
    assert raw["file_mounts"]["/home/ubuntu/glccl"] == "."
    start = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2 and "--autoscaling-config=~/ray_bootstrap_config.yaml" in start
    assert "/home/ubuntu/.ray/auth_token" in raw["file_mounts"]  # the same token on every node


def test_autoscaler_schema_rejects_a_broken_config():
    """The validation above has teeth: an unknown key and a node type without resources both fail."""
    jsonschema = pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = _load(CLUSTER / "aws.yaml")
    bad["available_node_types"]["gpu_train"]["gpus_please"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


# ---------------------------------------------------------------------------------------------------------------------
# KubeRay


def _containers(cluster_spec):
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _check_cluster_spec(spec):
    assert spec["rayVersion"] == RAY_VERSION and isinstance(spec["rayVersion"], str)
    assert spec["authOptions"]["mode"] == "token"  # KubeRay sets RAY_AUTH_MODE / RAY_AUTH_TOKEN on every pod
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    for c in _containers(spec):
        assert c["image"] == IMAGE
        req, lim = c["resources"]["requests"], c["resources"]["limits"]
        assert req["cpu"] and req["memory"] and lim["memory"]
        assert {"name": "shared", "mountPath": "/mnt/shared"} in c["volumeMounts"]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get("MLFLOW_TRACKING_URI", "").startswith("http")
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu-train"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["requests"]["nvidia.com/gpu"] == gpu["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in groups["cpu-data"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for key, value in g["rayStartParams"].items():
            assert isinstance(value, str), (key, value)  # KubeRay wants strings


def test_kuberay_raycluster_manifest():
    doc = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"] == "glccl"
    _check_cluster_spec(doc["spec"])
    assert doc["spec"]["enableInTreeAutoscaling"] is True
    pvc = _load(CLUSTER / "kuberay" / "shared-pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in doc["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {pvc["metadata"]["name"]}


@pytest.mark.parametrize("name,module", [("rayjob-train.yaml", "pipelines.train"), ("rayjob-sweep.yaml", "sweeps.tune")])
def test_kuberay_rayjob_manifests(name, module):
    doc = _load(CLUSTER / "kuberay" / name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    _check_cluster_spec(spec["rayClusterSpec"])
    assert spec["shutdownAfterJobFinishes"] is True
    renv = yaml.safe_load(spec["runtimeEnvYAML"])
    assert renv["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http")

    # the entrypoint is the project's CLI, and its arguments parse (paths are the image's /app and the shared claim)
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", module] and argv[3] == "--config"
    assert argv[4].startswith("/app/")
    local = [a.replace("/app/", f"{REPO}/", 1) for a in argv[4:]]
    if module == "pipelines.train":
        from glccl.config import load_config

        cfg = load_config(local[0], local[1:])
        assert cfg.storage.startswith("/mnt/shared/") and cfg.data.root.startswith("/mnt/shared/")
        gpus = spec["rayClusterSpec"]["workerGroupSpecs"]
        pods = sum(g["replicas"] for g in gpus if g["groupName"] == "gpu-train")
        assert cfg.scaling.use_gpu and cfg.scaling.num_workers <= pods  # one GPU pod per Ray Train worker
    else:
        from sweeps.tune import load_sweep

        sweep = load_sweep(local[0], local[1:])
        base = sweep.run_config()
        assert base.storage.startswith("/mnt/shared/") and base.scaling.use_gpu


def test_dockerfile_pins_and_installs_the_project():
    text = (CLUSTER / "Dockerfile").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in text and "ARG TORCHVISION_VERSION=0.28.0" in text
    assert f"ARG RAY_VERSION={RAY_VERSION}" in text
    assert '"ray[train,tune,data,default]==${RAY_VERSION}"' in text
    assert '"torch==${TORCH_VERSION}"' in text
    assert 'pip install -c constraints.txt --no-deps ".[video,platform]"' in text  # the project itself
    for d in ("glccl/", "pipelines/", "sweeps/", "configs/"):
        assert f"COPY {d} {d}" in text
    assert "wget" in text  # KubeRay probes
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and "runs" in ignore and "data" in ignore


# ---------------------------------------------------------------------------------------------------------------------
# runtime env, submit, local cluster helpers (no cluster needed)


def test_runtime_env_file():
    renv = _load(CLUSTER / "runtime_env.yaml")
    assert renv["working_dir"] == "."
    for pattern in (".venv/", ".git/", "runs/", "data/"):
        assert pattern in renv["excludes"]
    env = renv["env_vars"]
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["MLFLOW_TRACKING_URI"] == "${MLFLOW_TRACKING_URI}"  # expanded by Ray from each node's environment
    assert all(isinstance(v, str) for v in env.values())


def test_submit_builds_runtime_env_and_command(tmp_path):
    from cluster import submit

    opts, entry = submit.split_entrypoint(["--follow", "--", "python", "-m", "pipelines.train", "--config", "x.yaml"])
    assert opts == ["--follow"] and entry == ["python", "-m", "pipelines.train", "--config", "x.yaml"]
    renv = submit.build_runtime_env(CLUSTER / "runtime_env.yaml", None, "http://127.0.0.1:5999", ["A=1"])
    assert Path(renv["working_dir"]).is_absolute()
    assert renv["env_vars"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999" and renv["env_vars"]["A"] == "1"
    cmd = submit.ray_command("http://127.0.0.1:8265", renv, entry)
    assert cmd[:5] == ["ray", "job", "submit", "--address", "http://127.0.0.1:8265"]
    assert cmd[cmd.index("--working-dir") + 1] == renv["working_dir"]
    assert json.loads(cmd[cmd.index("--runtime-env-json") + 1])["excludes"] == renv["excludes"]
    assert cmd[-6:] == ["--", *entry]

    # --print-command against a local cluster's state file: address, token and MLflow server come from it
    state = {"dashboard_url": "http://127.0.0.1:47123", "mlflow_uri": "http://127.0.0.1:47126", "base_port": 47122,
             "gcs_address": "127.0.0.1:47122", "nodes": []}
    (tmp_path / "state.json").write_text(json.dumps(state))
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "submit", "--cluster-dir", str(tmp_path),
                          "--print-command", "--", "python", "-m", "pipelines.train", "--config", "configs/demo.yaml"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith(f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={tmp_path.resolve() / 'auth_token'} "
                           "ray job submit --address http://127.0.0.1:47123")
    assert "http://127.0.0.1:47126" in line and line.endswith("-- python -m pipelines.train --config configs/demo.yaml")


def test_submit_without_cluster_explains(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "submit", "--cluster-dir", str(tmp_path / "none"),
                          "--", "python", "-c", "pass"], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode != 0 and "no cluster address" in out.stderr


def test_port_layout_avoids_worker_range_and_overlaps():
    from cluster import local

    base = local.DEFAULT_BASE_PORT
    ports = local.all_ports(base)
    assert len(ports) == len(set(ports))
    lo, hi = local.WORKER_PORT_RANGE
    assert all(not lo <= p <= hi for p in ports)
    assert local.cluster_ports(base)["gcs"] == 46379
    assert local.node_ports(base, 1)["node_manager"] - local.node_ports(base, 0)["node_manager"] == local.NODE_STRIDE


def test_kill_tree_ends_only_the_recorded_tree():
    """A recorded process, its child in a session of its own, and an orphaned grandchild (parent gone, so found only
    through the recorded session) all end; a stale record (same PID, other start time) matches nothing."""
    import psutil as ps

    from cluster import processes

    sleep = "import time; time.sleep(120)"
    code = ("import subprocess, sys, time\n"
            f"a = subprocess.Popen([sys.executable, '-c', 'import subprocess, sys; subprocess.Popen([sys.executable, "
            f"\"-c\", \"{sleep}\"])'])\n"
            "a.wait()\n"
            f"subprocess.Popen([sys.executable, '-c', '{sleep}'], start_new_session=True)\n"
            "time.sleep(120)\n")
    root = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", sleep])
    try:
        record = [(root.pid, processes.start_time(root.pid))]
        deadline = time.time() + 60
        tree = []
        while len(tree) < 3 and time.time() < deadline:
            time.sleep(0.2)
            tree = processes.process_tree(record)
        assert len(tree) == 3, tree
        orphans = [p for p in tree if p.pid != root.pid and p.ppid() != root.pid]
        assert len(orphans) == 1  # reached only through the session
        assert processes.process_tree([(bystander.pid, processes.start_time(bystander.pid) - 100)]) == []
        assert processes.kill_tree(record, grace_s=5) == 3
        root.wait(10)
        gone = ps.wait_procs(tree, timeout=10)[1]
        assert not [p for p in gone if p.status() != ps.STATUS_ZOMBIE]
        assert bystander.poll() is None
    finally:
        for p in (root, bystander):
            if p.poll() is None:
                p.kill()
                p.wait(5)
