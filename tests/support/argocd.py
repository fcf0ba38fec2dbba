"""A real Argo CD (application controller + repo server, built by ``hack/install-argocd.sh``) on a
local control plane, with Redis from Debian, syncing from a git repository on this machine.

Argo CD runs out of cluster as upstream's own ``Procfile`` runs it: ``ARGOCD_FAKE_IN_CLUSTER``
makes the built-in destination ``https://kubernetes.default.svc`` use the control plane's
kubeconfig. Its configuration is what ``docs/argocd.md`` tells users to set (the OptimizedModel
health check from the chart's generated ``argocd/argocd-cm.yaml``), plus the upstream snippet
that gives Applications a health (so an app-of-apps can order its children in sync waves) and a
short reconciliation period (``--app-resync``) so the tests need not wait two minutes for one.

The git repository is a bare repository read through ``file://``, which the repo server accepts
(Argo CD's own end-to-end tests do the same); no git daemon is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from localcluster import free_port
from polling import wait_for

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "argocd"
RELEASE, OPERATOR_NAMESPACE = "optimodel", "optimodel-system"  # the chart Application's
ARGOCD_CM = REPO / "charts" / "optimodel" / "argocd" / "argocd-cm.yaml"

# Upstream's documented health for argoproj.io/Application (removed from the defaults in 1.8):
# without it a parent app does not wait for a child app of an earlier sync wave to be healthy.
APPLICATION_HEALTH = """\
hs = {}
hs.status = "Progressing"
hs.message = ""
if obj.status ~= nil then
  if obj.status.health ~= nil then
    hs.status = obj.status.health.status
    if obj.status.health.message ~= nil then
      hs.message = obj.status.health.message
    end
  end
end
return hs
"""


def install_argocd() -> Path:
    """The cached Argo CD bin dir (``argocd-*`` binaries, ``crds/``), built if missing."""
    out = subprocess.run([str(REPO / "hack" / "install-argocd.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class GitRepo:
    """A bare repository (what Argo CD reads, as ``file://``) and a work tree the test commits in."""

    root: Path

    def __post_init__(self) -> None:
        self.bare, self.work = self.root / "repo.git", self.root / "work"
        self._git(self.root, "init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        self._git(self.root, "clone", "--quiet", str(self.bare), str(self.work))

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    @staticmethod
    def _git(cwd: Path, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "optimodel tests", "GIT_AUTHOR_EMAIL": "tests@optimodel.dev",
               "GIT_COMMITTER_NAME": "optimodel tests", "GIT_COMMITTER_EMAIL": "tests@optimodel.dev"}
        return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout

    def write(self, relative: str, content: str | dict | list) -> None:
        path = self.work / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not isinstance(content, str):
            content = yaml.safe_dump_all(content) if isinstance(content, list) else yaml.safe_dump(content)
        path.write_text(content)

    def copy_tree(self, source: Path, relative: str) -> None:
        shutil.copytree(source, self.work / relative, dirs_exist_ok=True)

    def remove(self, relative: str) -> None:
        self._git(self.work, "rm", "--quiet", "-r", relative)

    def commit(self, message: str) -> str:
        """Commit everything in the work tree, push it to ``main``; the new commit's SHA."""
        self._git(self.work, "add", "--all")
        self._git(self.work, "commit", "--quiet", "-m", message)
        self._git(self.work, "push", "--quiet", "origin", "HEAD:main")
        return self._git(self.work, "rev-parse", "HEAD").strip()


@dataclass
class ArgoCD:
    """Redis, the repo server and the application controller as host processes."""

    bin_dir: Path
    kubeconfig: str
    kubectl: object  # Cluster.kubectl
    workdir: Path
    helm_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def install(self) -> None:
        """Argo CD's CRDs and the configuration it reads at startup (see the module docstring)."""
        self.kubectl("apply", "--server-side", "--field-manager", "optimodel-tests",
                     "-f", str(self.bin_dir / "crds"))
        for crd in ("applications.argoproj.io", "appprojects.argoproj.io"):
            wait_for(lambda c=crd: "True" in self.kubectl(
                "get", f"crd/{c}", "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                check=False).stdout, timeout=60, interval=0.2, what=f"CRD {crd} Established")
        cm = yaml.safe_load(ARGOCD_CM.read_text())  # exactly what docs/argocd.md has users merge
        cm["data"]["resource.customizations.health.argoproj.io_Application"] = APPLICATION_HEALTH
        labels = {"app.kubernetes.io/part-of": "argocd"}
        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            cm,
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "argocd-secret", "namespace": NAMESPACE,
                                                                "labels": labels}},
            {"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
             "metadata": {"name": "default", "namespace": NAMESPACE},
             "spec": {"sourceRepos": ["*"], "destinations": [{"server": "*", "namespace": "*"}],
                      "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]}},
        ]
        self.kubectl("apply", "--server-side", "--field-manager", "optimodel-tests", "-f", "-",
                     input=yaml.safe_dump_all(objects))

    def _start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=self.workdir, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        (self.workdir / "plugins").mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        redis_port, repo_port = free_port(), free_port()
        redis = f"127.0.0.1:{redis_port}"
        self._start("redis", [shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                              "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {})
        wait_for(lambda: _listening(redis_port), timeout=30, what="redis-server listening")
        common = {"ARGOCD_GPG_ENABLED": "false", "TMPDIR": str(self.workdir / "tmp")}
        self._start("repo-server", [
            str(self.bin_dir / "argocd-repo-server"), "--disable-tls", "--address", "127.0.0.1",
            "--port", str(repo_port), "--metrics-address", "127.0.0.1", "--metrics-port", str(free_port()),
            "--redis", redis, "--logformat", "text"], {
            **common, "PATH": f"{self.helm_dir}:{os.environ.get('PATH', '')}",
            "ARGOCD_PLUGINSOCKFILEPATH": str(self.workdir / "plugins"),
            "ARGOCD_ASK_PASS_SOCK": str(self.workdir / "askpass.sock")})
        wait_for(lambda: _listening(repo_port), timeout=60, what="argocd-repo-server listening")
        self._start("application-controller", [
            str(self.bin_dir / "argocd-application-controller"), "--kubeconfig", self.kubeconfig,
            "--namespace", NAMESPACE, "--repo-server", f"127.0.0.1:{repo_port}", "--repo-server-plaintext",
            "--redis", redis, "--metrics-port", str(free_port()), "--logformat", "text",
            "--self-heal-timeout-seconds", "2",
            # Re-compare every 10 s instead of 120 s: a model's health is computed from its
            # status, and a status write alone need not trigger a refresh; the scenarios should
            # not wait two minutes for each verdict.
            "--app-resync", "10",
            # Argo CD 3 keeps each resource's health out of the Application object by default (the
            # UI and CLI read it through argocd-server); persisted, the tests read Argo CD's own
            # verdict per model from status.resources without running argocd-server.
            "--persist-resource-health"], {
            **common, "ARGOCD_FAKE_IN_CLUSTER": "true", "KUBECONFIG": self.kubeconfig})

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.processes.items()}

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def log_tail(self, name: str, n: int = 3000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def log_lines(self, name: str, needle: str, n: int = 40) -> list[str]:
        """The last ``n`` lines of a process's log that mention ``needle``."""
        path = self.workdir / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return [line for line in lines if needle in line][-n:]

    def out_of_sync_report(self, app_name: str) -> str:
        """Why an Application is not Synced, in Argo CD's words: its sync status, each resource
        that is not Synced, its conditions, and what the controller logged about it."""
        status = self.app(app_name).get("status") or {}
        drifted = [{k: r.get(k) for k in ("kind", "namespace", "name", "status", "requiresPruning")}
                   for r in status.get("resources") or [] if r.get("status") != "Synced"]
        log = "\n".join(self.log_lines("application-controller", f"application={app_name} "))
        return (f"sync={status.get('sync')}\nresources not Synced: {drifted}\n"
                f"conditions={status.get('conditions')}\noperation={status.get('operationState')}\n"
                f"--- controller log about {app_name} ---\n{log}")

    # --- Applications, read through Argo CD's own CRD ------------------------------------------

    def app(self, name: str) -> dict:
        """The Application, or {} while it does not exist (yet)."""
        got = self.kubectl("get", "applications.argoproj.io", name, "-n", NAMESPACE, "-o", "json", check=False)
        if got.returncode:
            if "NotFound" in got.stderr:
                return {}
            raise AssertionError(f"kubectl get application {name}: {got.stderr.strip()}")
        return json.loads(got.stdout)

    def refresh(self, name: str, kind: str = "hard") -> None:
        """``hard``: what ``argocd app get --hard-refresh`` does, re-read git now (the repo server
        caches a branch's revision for three minutes); after a commit. ``normal``: compare the live
        state again now, as the controller's periodic resync does."""
        self.kubectl("annotate", "--overwrite", "applications.argoproj.io", name, "-n", NAMESPACE,
                     f"argocd.argoproj.io/refresh={kind}")


def resource_status(app: dict, kind: str, name: str) -> dict | None:
    """The entry of ``kind``/``name`` in an Application's ``status.resources`` (sync and health)."""
    for res in (app.get("status") or {}).get("resources") or []:
        if res.get("kind") == kind and res.get("name") == name:
            return res
    return None


def sync_status(app: dict) -> str:
    return ((app.get("status") or {}).get("sync") or {}).get("status", "")


def health(app: dict) -> str:
    return ((app.get("status") or {}).get("health") or {}).get("status", "")


def operation(app: dict) -> dict:
    """The last sync operation's state (phase, message, syncResult), or {} before any."""
    return (app.get("status") or {}).get("operationState") or {}


def synced_revision(app: dict) -> str:
    return ((app.get("status") or {}).get("sync") or {}).get("revision", "")


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
