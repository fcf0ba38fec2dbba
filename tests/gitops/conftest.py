"""The GitOps tier: a real Argo CD syncing the chart and the models from a git repository.

A dedicated control plane (kwok nodes; controller-manager for garbage collection and the HPA),
Argo CD's application controller and repo server built from source (``hack/install-argocd.sh``),
Redis from Debian. The operator runs as the chart's ServiceAccount with the environment of the
chart's Deployment as Argo CD synced it: the test plays the kubelet for the operator pod (as it
does for builder pods), so a values change that Argo CD applies reaches the operator only through
the Deployment, exactly as a rollout would bring it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import localcluster
import pytest
from argocd import OPERATOR_NAMESPACE, RELEASE, ArgoCD, GitRepo, install_argocd
from chart import helm_binary, service_account_username, token_kubeconfig
from opharness import OperatorProcess
from testcluster import Cluster, start_control_plane, unavailable


@pytest.fixture(scope="module")
def gitops_cluster():
    bin_dir, state_dir, state = start_control_plane("optimodel-gitops-")
    try:
        yield Cluster(state.kubeconfig, bin_dir, state.ready_seconds, state_dir=state_dir)
    finally:
        localcluster.down(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def argocd(gitops_cluster):
    try:
        bin_dir = install_argocd()
    except Exception as err:  # noqa: BLE001 - a failure in CI, else a skip
        unavailable("Argo CD (run hack/install-argocd.sh)", err)
    if not shutil.which("redis-server"):
        unavailable("redis-server (run hack/install-node-deps.sh)", "not on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="optimodel-argocd-"))
    cd = ArgoCD(bin_dir, gitops_cluster.kubeconfig, gitops_cluster.kubectl, workdir, helm_binary().parent)
    try:
        cd.install()
        cd.start()
        yield cd
    finally:  # also when install or start failed: nothing is left behind
        cd.stop()
        for name in cd.processes:
            print(f"--- {name} log tail ---\n{cd.log_tail(name)}")  # shown on failure
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def git_repo():
    root = Path(tempfile.mkdtemp(prefix="optimodel-gitrepo-"))
    try:
        yield GitRepo(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class OperatorPod:
    """The operator "pod": ``optimodel operator`` run with the live chart Deployment's environment
    and a token of the chart's ServiceAccount; restarted when the Deployment's template changes."""

    def __init__(self, cluster: Cluster, workdir: Path):
        self.cluster, self.workdir = cluster, workdir
        self.process: OperatorProcess | None = None
        self.template_seen = ""

    def deployment(self) -> dict:
        import json

        return json.loads(self.cluster.kubectl("get", "deployment", RELEASE, "-n", OPERATOR_NAMESPACE,
                                               "-o", "json").stdout)

    def env(self, deployment: dict) -> dict[str, str]:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        env["POD_NAME"] = f"{RELEASE}-gitops-{deployment['metadata']['generation']}"  # the fieldRef
        return env

    def run_current(self) -> None:
        """Start (or restart, if the template changed) the operator as the Deployment says."""
        deployment = self.deployment()
        template = repr(deployment["spec"]["template"])
        if self.process and template == self.template_seen:
            return
        self.stop()
        sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        kubeconfig = token_kubeconfig(self.cluster, service_account_username(OPERATOR_NAMESPACE, sa),
                                      self.workdir / "operator.kubeconfig")
        self.process = OperatorProcess(kubeconfig, self.env(deployment), self.workdir / "operator.log")
        self.process.start()
        self.template_seen = template

    def stop(self) -> None:
        if self.process:
            self.process.stop()

    def log_tail(self) -> str:
        return self.process.log_tail() if self.process else ""


@pytest.fixture(scope="module")
def operator_pod(gitops_cluster, tmp_path_factory):
    pod = OperatorPod(gitops_cluster, tmp_path_factory.mktemp("operator"))
    try:
        yield pod
    finally:
        pod.stop()
        print(f"--- operator log tail ---\n{pod.log_tail()}")
