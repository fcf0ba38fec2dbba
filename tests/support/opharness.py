"""Helpers for tests that drive the real operator on the real control plane.

There is no kubelet to run the builder on kwok nodes, so tests play the kubelet's part for
builder pods: they write the pod's terminated state and termination message, as a kubelet would
after ``optimodel build`` exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from chart import install_operator_rbac, token_kubeconfig, uninstall_operator_rbac
from kubernetes import client
from localcluster import free_port  # hack/ is on the tests' pythonpath
from polling import wait_for  # noqa: F401  (re-exported for tests)

GROUP, VERSION, PLURAL = "optimodel.dev", "v1alpha1", "optimizedmodels"


class OperatorProcess:
    """`optimodel operator` as a child process with its own log file."""

    def __init__(self, kubeconfig: str, env: dict[str, str], log_path: Path):
        self.kubeconfig, self.env, self.log_path = kubeconfig, env, log_path
        self.proc: subprocess.Popen | None = None
        self.metrics_port = free_port()

    def start(self) -> None:
        exe = Path(sys.executable).parent / "optimodel"
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "PYTHONSAFEPATH": "1",
               "PYTHONWARNINGS": "ignore", **self.env}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(exe), "operator", "--health-port", "0",
                                      "--metrics-port", str(self.metrics_port)], env=env, cwd="/",
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies mid-build."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the operator's /metrics (0 when absent, e.g. not started yet)."""
        import re

        label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = "^" + re.escape(f"{name}{{{label_text}}}" if label_text else name) + r" (\S+)$"
        try:
            found = re.search(pattern, self.metrics_text(), re.MULTILINE)
        except OSError:
            return 0.0
        return float(found.group(1)) if found else 0.0

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


@contextlib.contextmanager
def chart_operator(cluster, namespace: str, watch_namespaces: list[str] | None, env: dict, tmp_path):
    """The operator, authenticated as the Helm chart's ServiceAccount with the chart's RBAC for
    ``watch_namespaces`` (None: cluster-wide mode, a ClusterRole); stopped and unbound after.

    Every operator test therefore also proves that the chart's least-privilege permissions are
    enough. The token is a real TokenRequest token, not impersonation.
    """
    username = install_operator_rbac(cluster, namespace, watch_namespaces)
    kubeconfig = token_kubeconfig(cluster, username, tmp_path / "operator.kubeconfig")
    op = OperatorProcess(kubeconfig, env, tmp_path / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()
        uninstall_operator_rbac(cluster, namespace)
        print(f"--- operator log tail ({op.log_path}) ---\n{op.log_tail()}")  # shown on failure



class Models:
    """Small helpers over the OptimizedModel API and its children for one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)

    def create(self, name: str, spec: dict) -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "OptimizedModel",
            "metadata": {"name": name}, "spec": spec})

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def patch_spec(self, name: str, spec_patch: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name,
                                                          {"spec": spec_patch})

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def condition(self, name: str, type_: str) -> dict | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def jobs(self) -> list:
        return self.batch.list_namespaced_job(self.ns, label_selector="app.kubernetes.io/component=builder").items

    def wait_job(self, count: int = 1, timeout: float = 30) -> list:
        return wait_for(lambda: (lambda js: js if len(js) >= count else None)(self.jobs()),
                        timeout=timeout, what=f"{count} build Job(s)")

    def builder_pod(self, job_name: str):
        def find():
            pods = self.core.list_namespaced_pod(
                self.ns, label_selector=f"batch.kubernetes.io/job-name={job_name}").items
            return pods[0] if pods else None
        return wait_for(find, what=f"pod of Job {job_name}")

    def finish_build(self, job_name: str, summary: dict | str, exit_code: int = 0) -> None:
        """Play the kubelet: the builder container terminated with this termination message."""
        message = summary if isinstance(summary, str) else json.dumps(summary)
        pod = self.builder_pod(job_name)
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.ns, terminated_status(
            pod, exit_code, "Completed" if exit_code == 0 else "Error", message))

    def oom_kill(self, job_name: str) -> None:
        """Play the kubelet: the builder container was OOM-killed (exit 137, no summary)."""
        pod = self.builder_pod(job_name)
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.ns, terminated_status(pod, 137, "OOMKilled"))

    def annotate(self, name: str, annotations: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name,
                                                          {"metadata": {"annotations": annotations}})

    def events(self, name: str) -> list:
        return self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name},involvedObject.kind=OptimizedModel").items


def terminated_status(pod, exit_code: int, reason: str, message: str | None = None) -> dict:
    """The status a kubelet writes when the pod's only container (the builder) has exited."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    container = pod.spec.containers[0]
    terminated = {"exitCode": exit_code, "reason": reason, "startedAt": now, "finishedAt": now}
    if message is not None:
        terminated["message"] = message
    return {"status": {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}],
        "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "", "ready": False,
            "restartCount": 0, "started": False, "state": {"terminated": terminated},
        }],
    }}


def success_summary(key: str, model: str, precision: str = "int8", speedup: float = 2.7) -> dict:
    """A builder summary as `optimodel build` writes it to the termination message."""
    return {
        "succeeded": True, "buildKey": key,
        "engine": {"key": key, "uri": f"pvc://optimodel-artifacts/x/{model}/{key}", "modelName": model,
                   "precision": precision, "target": "tensorrt", "platform": "tensorrt_plan",
                   "gpuProduct": "NVIDIA-H100-80GB-HBM3", "computeCapability": "9.0",
                   "runtimeVersion": "10.8.0", "sizeBytes": 45_000_000},
        "benchmark": {
            "speedup": speedup,
            "speedupCheck": {"batchSize": 8, "baselineThroughput": 100.0, "engineThroughput": 100.0 * speedup,
                             "ratios": [speedup] * 6, "speedup": speedup},
            "accuracy": {"metric": "cosine", "value": 0.995, "threshold": 0.99, "passed": True, "samples": 64,
                         "perOutput": {"last_hidden_state": 0.995}, "sampleSet": "report",
                         "source": "builtin-sentences"},
            "reportUri": f"pvc://optimodel-artifacts/x/{model}/{key}/report.json",
        },
    }


def failure_summary(key: str, reason: str = "AccuracyGateFailed",
                    message: str = "no candidate reached cosine >= 0.999 (best: int8 0.991)") -> dict:
    return {"succeeded": False, "buildKey": key, "reason": reason, "message": message}


class BuildKubelet(threading.Thread):
    """Plays the kubelet for every builder pod of a namespace, in the background: as soon as a
    pod is scheduled, its builder "exits 0" with a success summary for the pod's build key.

    It tolerates an API server that is down (the control plane under test must cope, not this
    harness), and finishes each pod once.
    """

    def __init__(self, api: client.ApiClient, namespace: str, interval: float = 0.3):
        super().__init__(name="build-kubelet", daemon=True)
        self.core = client.CoreV1Api(api)
        self.namespace, self.interval = namespace, interval
        self.finished: set[str] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.finish_new_pods()
            except Exception:  # noqa: BLE001 - API down during a restart: try again
                pass
            self._halt.wait(self.interval)

    def finish_new_pods(self) -> None:
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/component=builder").items
        for pod in pods:
            if pod.metadata.name in self.finished or not pod.spec.node_name:
                continue
            key = pod.metadata.annotations["optimodel.dev/build-key"]
            model = pod.metadata.labels["optimodel.dev/model"]
            self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace, terminated_status(
                pod, 0, "Completed", json.dumps(success_summary(key, model))))
            self.finished.add(pod.metadata.name)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
