#!/usr/bin/env python3
"""The operator at scale: N OptimizedModels on a real control plane with kwok nodes.

Starts its own control plane (hack/localcluster.py), installs the CRD, adds enough kwok GPU
nodes for N builder pods plus N Triton pods, runs ``optimodel operator`` as a subprocess
(authenticated as the Helm chart's ServiceAccount with the chart's RBAC, like the operator
tests; ``--rbac admin`` uses the admin kubeconfig instead), creates N models as fast as a
thread pool can, plays the kubelet for builder pods (terminated, exit 0, a success summary as
termination message, exactly like tests/support/opharness.py ``Models.finish_build``) as soon
as each is scheduled, and waits until every model reports ``status.phase: Ready``.

Measured (wall clock on this machine, observed through watches):
  * first create -> all N build Jobs exist
  * last build finished (by the bench's kubelet) -> all N models Ready  (goal: <= 120 s)
  * first create -> all N Ready
  * the operator's peak RSS (goal: < 300 MB) and CPU seconds, from /proc (its process group,
    sampled every 0.5 s, plus the kernel's VmHWM), and its own /metrics counters
  * per-model latencies split into the operator's and the control plane's parts

Writes bench/results/operator_scale.md and bench/results/operator_scale.json (raw numbers).
If not every model is Ready by ``--deadline`` the partial results (how many Ready, phase
histogram, the first stuck models) are written instead. Logs (operator, control plane) are
copied to ``--log-dir`` before the cluster is removed. ``--report-only JSON`` re-renders the
markdown from a run's JSON.

Run it with the project's venv (``hack/python-env.sh`` points its editable install at this
checkout). Caveat: "Build
finished" is the bench's pod-status write; the build Job turns Complete only when the
controller-manager's Job controller gets to it (client-side limited to --kube-api-qps 20 in
hack/localcluster.py), so the report also gives "last Job Complete -> all Ready".

    PYTHONSAFEPATH=1 $(hack/python-env.sh)/bin/python bench/operator_scale.py --models 500
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "support"), str(REPO / "hack")]

import localcluster  # noqa: E402  (hack/localcluster.py)
import requests  # noqa: E402
from opharness import OperatorProcess, success_summary  # noqa: E402  (tests/support)
from polling import wait_for  # noqa: E402  (tests/support)

GROUP, VERSION, PLURAL = "optimodel.dev", "v1alpha1", "optimizedmodels"
MODEL_PATH = f"/apis/{GROUP}/{VERSION}"
KEY_ANNOTATION = "optimodel.dev/build-key"
MODEL_LABEL = "optimodel.dev/model"
BUILDER = "app.kubernetes.io/component=builder"
SERVER = "app.kubernetes.io/managed-by=optimodel-operator,app.kubernetes.io/component=server"
RELEASE_NAMESPACE = "optimodel-system"
SCALE_POOL = "scale"
GOAL_READY_SECONDS = 120.0
GOAL_RSS_MB = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[operator_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- a small, fast API client (raw JSON; typed deserialization would eat the bench's CPU) ---

class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, text: str):
        super().__init__(f"{method} {path}: HTTP {status}: {text[:300]}")
        self.status = status


class Api:
    """Bearer-token HTTPS to the API server; one requests.Session per thread."""

    def __init__(self, kubeconfig: str):
        cfg = json.loads(Path(kubeconfig).read_text())  # localcluster writes JSON
        self.server = cfg["clusters"][0]["cluster"]["server"]
        self.ca = cfg["clusters"][0]["cluster"]["certificate-authority"]
        self.token = cfg["users"][0]["user"]["token"]
        self._local = threading.local()

    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.trust_env = False  # REQUESTS_CA_BUNDLE would override our CA
            s.verify = self.ca
            s.headers["Authorization"] = f"Bearer {self.token}"
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=8)
            s.mount("https://", adapter)
            self._local.session = s
        return s

    def request(self, method: str, path: str, body=None, content_type: str = "application/json",
                params: dict | None = None, ok: tuple[int, ...] = (200, 201)) -> dict:
        headers = {"Content-Type": content_type} if body is not None else {}
        r = self.session().request(method, self.server + path, params=params, headers=headers,
                                   data=json.dumps(body) if body is not None else None, timeout=30)
        if r.status_code not in ok:
            raise ApiError(method, path, r.status_code, r.text)
        return r.json() if r.content else {}


def watch_loop(api: Api, path: str, selector: str | None, handler, stop: threading.Event,
               errors: collections.Counter) -> None:
    """List, then watch from the list's resourceVersion; re-list on 410 / errors."""
    rv = None
    while not stop.is_set():
        try:
            if rv is None:
                body = api.request("GET", path, params={"labelSelector": selector} if selector else None)
                for item in body.get("items") or []:
                    handler("ADDED", item)
                rv = body["metadata"]["resourceVersion"]
            params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "10",
                      "allowWatchBookmarks": "true"}
            if selector:
                params["labelSelector"] = selector
            with api.session().get(api.server + path, params=params, stream=True, timeout=(10, 40)) as r:
                if r.status_code != 200:
                    errors[f"watch {path}: HTTP {r.status_code}"] += 1
                    rv = None
                    time.sleep(0.5)
                    continue
                for line in r.iter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        errors[f"watch {path}: {obj.get('code')} {obj.get('reason')}"] += 1
                        rv = None
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        handler(kind, obj)
                    if stop.is_set():
                        break
        except Exception as err:  # noqa: BLE001 - a bench must keep observing
            if stop.is_set():
                return
            errors[f"watch {path}: {type(err).__name__}"] += 1
            rv = None
            time.sleep(0.5)


# --- /proc sampling ------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(process group, cpu seconds user+sys incl. reaped children) of a pid, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): pgrp = field 5, utime..cstime = fields 14..17
    pgrp = int(fields[2])
    ticks = sum(int(x) for x in fields[11:15])
    return pgrp, ticks / CLK_TCK


def _proc_mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB; zeros when gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st and st[0] == pgid:
                pids.append(int(entry))
    return pids


def group_usage(pgid: int) -> dict:
    """CPU seconds and memory of a process group (all its pids)."""
    cpu = 0.0
    rss = hwm = 0
    pids = group_pids(pgid)
    for pid in pids:
        st = _proc_stat(pid)
        if st is None:
            continue
        # The leader's cutime/cstime hold reaped children; live children are added directly.
        cpu += st[1]
        r, h = _proc_mem_kb(pid)
        rss += r
        hwm = max(hwm, h)
    return {"pids": len(pids), "cpu_s": cpu, "rss_mb": rss / 1024, "hwm_mb": hwm / 1024}


class Sampler(threading.Thread):
    """The operator's process group every ``interval`` s; its /metrics every ``metrics_every``."""

    def __init__(self, pgid: int, metrics_url: str, t0_ref: list, interval: float = 0.5,
                 metrics_every: float = 1.0):
        super().__init__(name="sampler", daemon=True)
        self.pgid, self.metrics_url, self.t0_ref = pgid, metrics_url, t0_ref
        self.interval, self.metrics_every = interval, metrics_every
        self.stop = threading.Event()
        self.samples: list[dict] = []
        self.metric_samples: list[dict] = []
        self.peak_rss_mb = 0.0
        self.peak_hwm_mb = 0.0
        self.max_pids = 0

    def now(self) -> float:
        return round(time.monotonic() - (self.t0_ref[0] or time.monotonic()), 3)

    def sample(self) -> dict:
        usage = group_usage(self.pgid)
        self.peak_rss_mb = max(self.peak_rss_mb, usage["rss_mb"])
        self.peak_hwm_mb = max(self.peak_hwm_mb, usage["hwm_mb"])
        self.max_pids = max(self.max_pids, usage["pids"])
        usage["t"] = self.now()
        self.samples.append(usage)
        return usage

    def run(self) -> None:
        next_metrics = 0.0
        while not self.stop.is_set():
            self.sample()
            if time.monotonic() >= next_metrics:
                next_metrics = time.monotonic() + self.metrics_every
                counters = scrape_metrics(self.metrics_url)
                if counters is not None:
                    self.metric_samples.append({"t": self.now(), **summarize_metrics(counters)})
            self.stop.wait(self.interval)


def scrape_metrics(url: str) -> dict[str, float] | None:
    """{'name{labels}': value} from the operator's /metrics, or None when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def summarize_metrics(counters: dict[str, float]) -> dict[str, float]:
    def total(prefix: str, **labels: str) -> float:
        s = 0.0
        for key, value in counters.items():
            if key == prefix or key.startswith(prefix + "{"):
                if all(f'{k}="{v}"' in key for k, v in labels.items()):
                    s += value
        return s

    return {
        "reconcile_ok": total("optimodel_reconcile_total", result="ok"),
        "reconcile_error": total("optimodel_reconcile_total", result="error"),
        "reconcile_seconds_sum": total("optimodel_reconcile_seconds_sum"),
        "reconcile_seconds_count": total("optimodel_reconcile_seconds_count"),
        "child_writes": total("optimodel_child_writes_total"),
        "builds_created": total("optimodel_builds_total", event="created"),
        "builds_retried": total("optimodel_builds_total", event="retried"),
        "api_retries": total("optimodel_api_retries_total"),
        "workqueue_depth": total("optimodel_workqueue_depth"),
    }


# --- the API server's own view (its /metrics): request latency and APF queueing ------------

APISERVER_SERIES = ("apiserver_request_duration_seconds_sum", "apiserver_request_duration_seconds_count",
                    "apiserver_flowcontrol_request_wait_duration_seconds_sum",
                    "apiserver_flowcontrol_request_wait_duration_seconds_count",
                    "apiserver_flowcontrol_rejected_requests_total")


def scrape_apiserver(api: Api) -> dict[tuple[str, tuple], float]:
    """{(series, labels): value} for the few API server series the report uses."""
    r = api.session().get(api.server + "/metrics", timeout=30)
    out = {}
    for line in r.text.splitlines():
        if not line.startswith(APISERVER_SERIES):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels)))
        try:
            out[(name, pairs)] = float(value)
        except ValueError:
            pass
    return out


def apiserver_deltas(before: dict, after: dict) -> dict:
    """Mean request latency by (verb, resource) and APF wait by priority level over the window."""
    def agg(prefix: str, keys: tuple[str, ...]) -> dict[str, dict]:
        acc: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
        for (name, labels), value in after.items():
            if not name.startswith(prefix):
                continue
            d = dict(labels)
            if d.get("verb") == "WATCH":
                continue
            group = " ".join(d.get(k, "") for k in keys)
            delta = value - before.get((name, labels), 0.0)
            acc[group][0 if name.endswith("_sum") else 1] += delta
        return {g: {"count": int(c), "mean_ms": round(1000 * s_ / c, 1)} for g, (s_, c) in acc.items() if c > 0}

    requests_ = agg("apiserver_request_duration_seconds", ("verb", "resource", "subresource"))
    waits = agg("apiserver_flowcontrol_request_wait_duration_seconds", ("priority_level", "flow_schema"))
    rejected = {}
    for (name, labels), value in after.items():
        if name == "apiserver_flowcontrol_rejected_requests_total":
            delta = value - before.get((name, labels), 0.0)
            if delta:
                d = dict(labels)
                rejected[f"{d.get('priority_level')} {d.get('flow_schema')} {d.get('reason')}"] = int(delta)
    top = dict(sorted(requests_.items(), key=lambda kv: -kv[1]["count"])[:15])
    return {"requests": top, "apf_wait": waits, "apf_rejected": rejected}


# --- the cluster side ----------------------------------------------------------------------

class ClusterCli:
    """What tests/support/chart.py needs of a cluster: kubectl with the admin kubeconfig."""

    def __init__(self, kubeconfig: str):
        self.kubeconfig = kubeconfig
        self.bin_dir = localcluster.binary_dir()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin_dir / "kubectl"), "--kubeconfig", self.kubeconfig, *args],
                              input=input, capture_output=True, text=True, check=check, timeout=120)


def default_gpu_product() -> str:
    try:
        from optimodel.operator.settings import OperatorSettings

        return OperatorSettings.from_env({}).default_gpu_product
    except Exception:  # noqa: BLE001 - someone's in-progress edit; the documented default
        return "NVIDIA-H100-80GB-HBM3"


def add_gpu_nodes(api: Api, count: int, gpus: int, product: str) -> None:
    """kwok nodes shaped like localcluster's, big enough for one builder + one Triton per GPU."""
    def create(i: int) -> None:
        node = localcluster._node_manifest(SCALE_POOL, i, product, gpus, "9.0")
        alloc = node["status"]["allocatable"]
        # Per GPU: a builder (8 CPU, 32Gi by default) or a Triton pod (2 CPU, 8Gi + init).
        alloc.update({"cpu": str(10 * gpus + 4), "memory": f"{40 * gpus + 16}Gi",
                      "pods": str(max(110, 2 * gpus + 10))})
        node["status"]["capacity"] = dict(alloc)
        try:
            api.request("POST", "/api/v1/nodes", node)
        except ApiError as err:
            if err.status != 409:
                raise

    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))


def nodes_ready(api: Api, selector: str) -> int:
    items = api.request("GET", "/api/v1/nodes", params={"labelSelector": selector})["items"]
    return sum(1 for n in items for c in n.get("status", {}).get("conditions", [])
               if c["type"] == "Ready" and c["status"] == "True")


def create_namespace(api: Api, name: str) -> None:
    try:
        api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                     "pod-security.kubernetes.io/enforce-version": "latest"}}})
    except ApiError as err:
        if err.status != 409:
            raise


# --- the run -------------------------------------------------------------------------------

class Run:
    """Everything observed during one run (times are monotonic seconds since the first create)."""

    def __init__(self, n: int, namespaces: list[str]):
        self.n = n
        self.namespaces = set(namespaces)
        self.lock = threading.Lock()
        self.t0: float | None = None
        self.models: dict[tuple[str, str], dict] = {}
        self.phases: dict[tuple[str, str], str] = {}
        self.jobs: set[tuple[str, str]] = set()
        self.finished_pods: set[tuple[str, str]] = set()
        self.create_errors: list[str] = []
        self.finish_errors: list[str] = []
        self.watch_errors: collections.Counter = collections.Counter()
        self.marks: dict[str, float] = {}
        self.all_jobs = threading.Event()
        self.all_ready = threading.Event()
        self.extra_jobs = 0  # more than one Job per model (should not happen)
        self.events: collections.Counter = collections.Counter()  # (resource, type) seen by watches

    def rel(self) -> float:
        return time.monotonic() - self.t0 if self.t0 is not None else 0.0

    def rec(self, ns: str, name: str) -> dict:
        return self.models.setdefault((ns, name), {})

    def stamp(self, ns: str, name: str, what: str) -> None:
        r = self.rec(ns, name)
        if what not in r:
            r[what] = self.rel()

    # watch handlers (watcher threads) -----------------------------------------------------

    def on_job(self, _type: str, job: dict) -> None:
        meta = job["metadata"]
        if meta["namespace"] not in self.namespaces:
            return
        self.events[("Job", _type)] += 1
        model = (meta.get("labels") or {}).get(MODEL_LABEL)
        if not model:
            return
        with self.lock:
            if (meta["namespace"], meta["name"]) not in self.jobs:
                self.jobs.add((meta["namespace"], meta["name"]))
                if "job_seen" in self.rec(meta["namespace"], model):
                    self.extra_jobs += 1
                self.stamp(meta["namespace"], model, "job_seen")
                if len(self.jobs) >= self.n and "all_jobs" not in self.marks:
                    self.marks["all_jobs"] = self.rel()
                    self.all_jobs.set()
            for c in (job.get("status") or {}).get("conditions") or []:
                if c.get("type") == "Complete" and c.get("status") == "True":
                    self.stamp(meta["namespace"], model, "job_complete")

    def on_deployment(self, _type: str, dep: dict) -> None:
        meta = dep["metadata"]
        if meta["namespace"] not in self.namespaces:
            return
        self.events[("Deployment", _type)] += 1
        with self.lock:
            self.stamp(meta["namespace"], meta["name"], "deploy_seen")
            if ((dep.get("status") or {}).get("readyReplicas") or 0) >= 1:
                self.stamp(meta["namespace"], meta["name"], "deploy_ready")

    def on_model(self, kind: str, body: dict) -> None:
        meta = body["metadata"]
        if meta["namespace"] not in self.namespaces or kind == "DELETED":
            return
        self.events[("OptimizedModel", kind)] += 1
        phase = (body.get("status") or {}).get("phase") or "(none)"
        key = (meta["namespace"], meta["name"])
        with self.lock:
            self.phases[key] = phase
            if phase == "Building":
                self.stamp(*key, "building")
            if phase == "Ready":
                self.stamp(*key, "ready")
                ready = sum(1 for r in self.models.values() if "ready" in r)
                if ready >= self.n and "all_ready" not in self.marks:
                    self.marks["all_ready"] = self.rel()
                    self.all_ready.set()

    def ready_count(self) -> int:
        with self.lock:
            return sum(1 for r in self.models.values() if "ready" in r)


class Kubelet:
    """Plays the kubelet for builder pods: terminated, exit 0, a success summary."""

    def __init__(self, api: Api, run: Run, wait_scheduled: bool, workers: int = 8):
        self.api, self.run, self.wait_scheduled = api, run, wait_scheduled
        self.pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="kubelet")
        self.submitted: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def on_pod(self, _type: str, pod: dict) -> None:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        if meta["namespace"] not in self.run.namespaces or _type == "DELETED":
            return
        if status.get("phase") in ("Succeeded", "Failed"):
            return
        if self.wait_scheduled and not spec.get("nodeName"):
            return  # a kubelet runs a pod only once it is bound to its node
        key = (meta["namespace"], meta["name"])
        with self.lock:
            if key in self.submitted:
                return
            self.submitted.add(key)
        self.pool.submit(self.finish, pod)

    def finish(self, pod: dict) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        model = meta["labels"][MODEL_LABEL]
        build_key = (meta.get("annotations") or {}).get(KEY_ANNOTATION)
        if build_key is None:  # the Job's annotation (the pod template carries it today)
            job = meta["labels"].get("batch.kubernetes.io/job-name") or meta["labels"]["job-name"]
            build_key = self.api.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{job}")[
                "metadata"]["annotations"][KEY_ANNOTATION]
        with self.run.lock:
            self.run.stamp(ns, model, "pod_seen")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        container = pod["spec"]["containers"][0]
        patch = {"status": {
            "phase": "Succeeded",
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}],
            "containerStatuses": [{
                "name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                "restartCount": 0, "started": False,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                         "message": json.dumps(success_summary(build_key, model)),
                                         "startedAt": now, "finishedAt": now}},
            }],
        }}
        for attempt in range(5):
            try:
                self.api.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", patch,
                                 content_type="application/strategic-merge-patch+json")
                break
            except Exception as err:  # noqa: BLE001
                if attempt == 4:
                    with self.run.lock:
                        self.run.finish_errors.append(f"{ns}/{name}: {err}")
                    return
                time.sleep(0.2 * (attempt + 1))
        with self.run.lock:
            self.run.stamp(ns, model, "build_finished")


def model_body(name: str) -> dict:
    # Minimal spec like bench/operator_latency.py; autoscaling as the defaults give it (enabled,
    # engine auto = HPA without KEDA, minReplicas 1), the operator's default GPU product.
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OptimizedModel", "metadata": {"name": name},
            "spec": {"model": {"uri": f"s3://models/{name}/", "format": "onnx"}}}


# --- reporting -----------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def latency_rows(models: dict) -> list[dict]:
    spans = [
        ("create -> build Job seen", "created", "job_seen", "operator"),
        ("build Job -> builder pod scheduled (bench kubelet)", "job_seen", "pod_seen",
         "Job controller + scheduler"),
        ("build finished (bench) -> Job Complete", "build_finished", "job_complete", "Job controller"),
        ("Job Complete -> Deployment seen", "job_complete", "deploy_seen", "operator"),
        ("Deployment seen -> readyReplicas >= 1", "deploy_seen", "deploy_ready",
         "Deployment/ReplicaSet controllers, scheduler, kwok"),
        ("readyReplicas >= 1 -> phase Ready", "deploy_ready", "ready", "operator"),
        ("build finished -> phase Ready (end to end)", "build_finished", "ready", "all"),
    ]
    rows = []
    for label, a, b, who in spans:
        vals = [r[b] - r[a] for r in models.values() if a in r and b in r]
        rows.append({"span": label, "who": who, "count": len(vals),
                     "p50": pct(vals, 0.5), "p90": pct(vals, 0.9), "p99": pct(vals, 0.99),
                     "max": max(vals) if vals else None})
    return rows


def fmt(v, digits: int = 1, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def machine_info() -> dict:
    mem_kb = 0
    cpu_model = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "operator",
                                "optimodel"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit, dirty = "", ""
    import hashlib

    digest = hashlib.sha256()
    for pkg in ("operator", "optimodel"):
        for f in sorted((REPO / pkg).rglob("*.py")):
            digest.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return {"nproc": os.cpu_count(), "operator_code_sha256": digest.hexdigest()[:12], "memory_gib": round(mem_kb / 1024 / 1024, 1), "cpu_model": cpu_model,
            "kernel": platform.release(), "python": platform.python_version(),
            "kube_version": localcluster.KUBE_VERSION,
            "git_commit": commit + (" (operator/ or optimodel/ modified in the work tree)" if dirty else ""),
            "loadavg_at_start": os.getloadavg()}


def operator_log_summary(path: Path) -> dict:
    if not path.exists():
        return {}
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    levels = collections.Counter()
    messages = collections.Counter()
    for line in lines:
        m = re.match(r"\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)", line)
        if m:
            levels[m.group(1)] += 1
            if m.group(1) in ("WARNING", "ERROR", "CRITICAL"):
                # Group similar messages: strip object names, numbers and quoted values.
                msg = re.sub(r"'[^']*'|\"[^\"]*\"|\b[0-9a-f]{8,}\b|\d+(\.\d+)?", "#", m.group(3))
                messages[f"{m.group(1)} {m.group(2)}: {msg[:160]}"] += 1
    return {"lines": len(lines), "levels": dict(levels), "tracebacks": text.count("Traceback"),
            "top_problems": messages.most_common(12),
            "build_jobs_created_lines": sum(1 for ln in lines if "created build Job" in ln)}


def write_results(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    m, n = dict(result.get("marks", {})), result["models"]
    per_model = result.get("per_model") or {}
    for mark, field in (("last_job_complete", "job_complete"), ("last_deploy_ready", "deploy_ready")):
        times = [r[field] for r in per_model.values() if field in r]
        if times and len(times) == n:
            m[mark] = max(times)
    op = result.get("operator", {})
    mi = result["machine"]
    ready_after = result.get("ready_after_last_build_s")
    lines = [
        f"# Operator at scale: {n} OptimizedModels on the local control plane (kwok nodes)",
        "",
        f"{result['date']}; {mi['nproc']} CPUs ({mi['cpu_model']}), {mi['memory_gib']} GiB memory; "
        f"Kubernetes {mi['kube_version']}; commit {mi['git_commit']}, operator code sha256 "
        f"{mi['operator_code_sha256']} (operator/ + optimodel/ *.py); "
        f"load average at start {', '.join(f'{x:.2f}' for x in mi['loadavg_at_start'])}"
        + (f", at the end {', '.join(f'{x:.2f}' for x in result['loadavg_at_end'])}"
           if result.get("loadavg_at_end") else "") + " (other work shares this machine).",
        f"Operator: `optimodel operator` subprocess, {result['config']['rbac_note']}; "
        f"{result['config']['namespaces']} namespace(s); {result['config']['nodes_added']} extra kwok nodes "
        f"x {result['config']['gpus_per_node']} GPUs ({result['config']['gpu_product']}). "
        f"Builder pods finished by the bench "
        f"{'once scheduled' if result['config']['wait_scheduled'] else 'as soon as created'}.",
        "",
    ]
    if result.get("outcome") != "complete":
        lines += [f"**Incomplete run: {result.get('outcome')}** — {result.get('ready', 0)}/{n} Ready; "
                  f"phases: {json.dumps(result.get('phases', {}))}.", ""]
    lines += [
        "| metric | value |",
        "|---|---|",
        f"| models (N) | {n} |",
        f"| first create -> all N creates returned | {fmt(m.get('creates_done'), 1, ' s')} "
        f"({fmt(result.get('create_rate'), 0)} creates/s) |",
        f"| first create -> all N build Jobs exist | {fmt(m.get('all_jobs'), 1, ' s')} |",
        f"| first create -> last build finished (bench kubelet) | {fmt(m.get('last_build_finished'), 1, ' s')} |",
        f"| **last build finished -> all N Ready** (goal <= {GOAL_READY_SECONDS:.0f} s) | "
        f"**{fmt(ready_after, 1, ' s')}** |",
        f"| last build Job Complete (controller-manager) -> all N Ready | "
        f"{fmt(m['all_ready'] - m['last_job_complete'] if 'all_ready' in m and 'last_job_complete' in m else None, 1, ' s')} "
        f"(last Job Complete at {fmt(m.get('last_job_complete'), 1, ' s')}, last Deployment ready at "
        f"{fmt(m.get('last_deploy_ready'), 1, ' s')}) |",
        f"| total: first create -> all N Ready | {fmt(m.get('all_ready'), 1, ' s')} |",
        f"| models Ready at the end | {result.get('ready', 0)} / {n} |",
        f"| **operator peak RSS** (goal < {GOAL_RSS_MB:.0f} MB) | **{fmt(op.get('peak_rss_mb'), 0, ' MB')}** "
        f"(sampled group peak {fmt(op.get('peak_sampled_rss_mb'), 0)} MB, VmHWM {fmt(op.get('vmhwm_mb'), 0)} MB; "
        f"idle before the run {fmt(op.get('idle_rss_mb'), 0)} MB) |",
        f"| operator CPU seconds (user+sys), first create -> all Ready (or the end) | {fmt(op.get('cpu_s_run'), 1, ' s')} "
        f"(whole life incl. startup: {fmt(op.get('cpu_s_total'), 1, ' s')}) |",
        f"| operator processes in its group (max) | {op.get('max_pids', 'n/a')} |",
    ]
    met = result.get("metrics_at_end") or {}
    if met:
        count = met.get("reconcile_seconds_count") or 0
        lines += [
            f"| reconciles (ok / error) | {met.get('reconcile_ok', 0):.0f} / {met.get('reconcile_error', 0):.0f} "
            f"({(met.get('reconcile_ok', 0) + met.get('reconcile_error', 0)) / n:.1f} per model) |",
            f"| mean reconcile duration | {fmt(met['reconcile_seconds_sum'] / count * 1000 if count else None, 0, ' ms')} |",
            f"| build Jobs created (operator counter) | {met.get('builds_created', 0):.0f} "
            f"(retried: {met.get('builds_retried', 0):.0f}) |",
            f"| child object writes (operator counter: creates, and applies that changed a field the "
            f"operator owns) | {met.get('child_writes', 0):.0f} |",
            f"| API requests retried by the operator | {met.get('api_retries', 0):.0f} |",
            f"| work queue depth, max seen (1 s samples) | {result.get('max_workqueue_depth', 'n/a')} |",
        ]
    if "queue_drained_s" in result:
        lines.append(f"| operator work queue empty after all Ready at | "
                     f"{fmt(result['queue_drained_s'], 1, ' s')} (first create = 0) |")
    quiet = result.get("quiet")
    if quiet:
        moved = ", ".join(f"{k} +{v:g}" for k, v in quiet["counter_deltas"].items() if "seconds" not in k)
        lines.append(f"| idle churn: in {quiet['seconds']:.0f} s after the queue drained | "
                     f"{quiet['reconciles']:.0f} reconciles, {quiet['child_writes']:.0f} child writes; "
                     f"watch events seen by the bench: {json.dumps(quiet['watch_events'])}; counters that moved: "
                     f"{moved or 'none'} |")
    lines += ["", "Per-model latencies (seconds; p50 / p90 / p99 / max over models):", "",
              "| span | who | n | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for row in result.get("latencies", []):
        lines.append(f"| {row['span']} | {row['who']} | {row['count']} | {fmt(row['p50'], 2)} | "
                     f"{fmt(row['p90'], 2)} | {fmt(row['p99'], 2)} | {fmt(row['max'], 2)} |")
    cp = result.get("control_plane_cpu_s")
    if cp:
        lines += ["", "CPU seconds used during the run (first create -> end) by the control plane "
                  "and the bench: " + ", ".join(f"{k} {v:.1f}" for k, v in cp.items())
                  + f" (the machine has {mi['nproc']} CPUs: {mi['nproc']} x "
                  f"{fmt(m.get('all_ready') or result.get('operator', {}).get('measured_until_s'), 0)} s "
                  "of CPU time in the window)."]
    aps = result.get("apiserver") or {}
    if aps.get("requests"):
        lines += ["", "API server, first create -> end (its own metrics; all clients): mean latency of the "
                  "busiest non-watch requests: " + ", ".join(
                      f"{k.strip()} {v['mean_ms']:.0f} ms x{v['count']}" for k, v in list(aps["requests"].items())[:8])
                  + ". APF queue wait by priority level / flow schema: " + (", ".join(
                      f"{k} {v['mean_ms']:.0f} ms x{v['count']}" for k, v in aps.get("apf_wait", {}).items()
                      if v["mean_ms"] >= 1) or "none >= 1 ms")
                  + (f". APF rejections: {json.dumps(aps['apf_rejected'])}" if aps.get("apf_rejected") else "")
                  + "."]
    ol = result.get("operator_log") or {}
    if ol:
        lines += ["", f"Operator log: {ol.get('lines', 0)} lines, levels {json.dumps(ol.get('levels', {}))}, "
                  f"{ol.get('tracebacks', 0)} tracebacks."]
        for msg, count in ol.get("top_problems", [])[:6]:
            lines.append(f"- {count}x `{msg}`")
    if result.get("stuck"):
        lines += ["", "Models not Ready at the end (first 10):", ""]
        lines += [f"- {s}" for s in result["stuck"][:10]]
    errors = (result.get("create_errors") or []) + (result.get("finish_errors") or [])
    if errors:
        lines += ["", f"Bench errors ({len(errors)}), first: `{errors[0]}`"]
    lines += ["", f"Raw numbers: `{out.with_suffix('.json').name}`. "
              f"Reproduce: `PYTHONSAFEPATH=1 <venv>/bin/python bench/operator_scale.py --models {n}`.", ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


# --- main ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--namespaces", type=int, default=2, help="models spread round-robin over these")
    parser.add_argument("--deadline", type=float, default=600.0,
                        help="give up (writing partial results) this many seconds after the first create")
    parser.add_argument("--create-workers", type=int, default=16)
    parser.add_argument("--gpus-per-node", type=int, default=16)
    parser.add_argument("--rbac", choices=["chart", "admin"], default="chart",
                        help="chart: the operator runs as the chart's ServiceAccount with the chart's "
                        "namespaced RBAC (like tests/operator); admin: the admin kubeconfig")
    parser.add_argument("--no-wait-scheduled", dest="wait_scheduled", action="store_false",
                        help="finish builder pods as soon as they exist, not once bound to a node")
    parser.add_argument("--quiet-seconds", type=float, default=10.0,
                        help="after all Ready, count reconciles for this long (should be ~0)")
    parser.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra OPTIMODEL_* settings for the operator")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "operator_scale.md")
    parser.add_argument("--report-only", type=Path, metavar="JSON",
                        help="rewrite the markdown from a previous run's JSON; run nothing")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="where operator and control-plane logs are kept (default: a new /tmp dir)")
    args = parser.parse_args(argv)

    if args.report_only:
        write_results(args.out, json.loads(args.report_only.read_text()))
        return 0
    n = args.models
    namespaces = [f"scale-{i}" for i in range(max(1, args.namespaces))]
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="optimodel-operator-scale-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    state_dir = Path(tempfile.mkdtemp(prefix="optimodel-scale-"))

    def on_sigterm(*_):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)
    # Started in the background by a non-interactive shell, SIGINT arrives ignored: restore it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import_env: dict[str, str] = {}
    machine = machine_info()
    product = default_gpu_product()
    nodes = math.ceil(2 * n / args.gpus_per_node)
    rbac_note = ("as the Helm chart's ServiceAccount with the chart's namespaced RBAC (TokenRequest token)"
                 if args.rbac == "chart" else "with the admin kubeconfig")
    result: dict = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "models": n, "machine": machine, "outcome": "not started", "log_dir": str(log_dir),
        "config": {"namespaces": len(namespaces), "rbac": args.rbac, "rbac_note": rbac_note,
                   "gpus_per_node": args.gpus_per_node, "nodes_added": nodes, "gpu_product": product,
                   "wait_scheduled": args.wait_scheduled, "deadline_s": args.deadline,
                   "create_workers": args.create_workers, "operator_env": args.operator_env},
    }
    run = Run(n, namespaces)
    stop = threading.Event()
    op: OperatorProcess | None = None
    sampler: Sampler | None = None
    kubelet: Kubelet | None = None
    state = None
    cp_cpu_start: dict[str, float] = {}
    t0_ref: list = [None]
    try:
        log(f"starting a control plane in {state_dir}")
        state = localcluster.up(state_dir)
        api = Api(state.kubeconfig)
        cli = ClusterCli(state.kubeconfig)
        cli.kubectl("apply", "-f", str(REPO / "crds" / "optimizedmodel.yaml"))
        cli.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
        for ns in [*namespaces, RELEASE_NAMESPACE]:
            create_namespace(api, ns)
        # Established is not yet servable ("storage is (re)initializing", 429) for a moment.
        wait_for(lambda: _exists(api, f"{MODEL_PATH}/namespaces/{namespaces[0]}/{PLURAL}"),
                 timeout=60, interval=0.2, what="OptimizedModel storage")
        for ns in namespaces:  # the ServiceAccount admission plugin refuses pods until it exists
            wait_for(lambda ns=ns: _exists(api, f"/api/v1/namespaces/{ns}/serviceaccounts/default"),
                     timeout=60, interval=0.5, what=f"default ServiceAccount in {ns}")
        log(f"adding {nodes} kwok nodes x {args.gpus_per_node} GPUs ({product})")
        add_gpu_nodes(api, nodes, args.gpus_per_node, product)
        wait_for(lambda: nodes_ready(api, f"optimodel.dev/pool={SCALE_POOL}") >= nodes,
                 timeout=120, interval=0.5, what=f"{nodes} extra nodes Ready")

        kubeconfig = state.kubeconfig
        if args.rbac == "chart":
            from chart import install_operator_rbac, token_kubeconfig  # tests/support/chart.py

            username = install_operator_rbac(cli, RELEASE_NAMESPACE, namespaces)
            kubeconfig = token_kubeconfig(cli, username, state_dir / "operator.kubeconfig")
        env = {
            "OPTIMODEL_NAMESPACES": ",".join(namespaces),
            "OPTIMODEL_ARTIFACT_ROOT": "s3://optimodel-artifacts/builds",
            "OPTIMODEL_ARTIFACT_CREDENTIALS_SECRET": "artifact-store",
            "OPTIMODEL_BUILDER_IMAGE": "registry.local/optimodel-builder:test",
            "OPTIMODEL_OPERATOR_IMAGE": "registry.local/optimodel-operator:test",
            "OPTIMODEL_TRITON_IMAGE": "registry.local/tritonserver:test",
        }
        env.update(import_env)
        for item in args.operator_env:
            key, _, value = item.partition("=")
            env[key] = value
        op = OperatorProcess(kubeconfig, env, log_dir / "operator.log")
        op.start()
        metrics_url = f"http://127.0.0.1:{op.metrics_port}/metrics"
        log(f"operator pid {op.proc.pid}, metrics {metrics_url}, log {op.log_path}")

        def operator_up() -> bool:
            if op.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {op.proc.returncode} at startup:\n{op.log_tail(3000)}")
            return scrape_metrics(metrics_url) is not None

        wait_for(operator_up, timeout=60, interval=0.2, what="operator /metrics")
        time.sleep(3)  # kopf's watches start after /metrics: startup is not what we measure
        if op.proc.poll() is not None:
            raise RuntimeError(f"operator exited with {op.proc.returncode} at startup:\n{op.log_tail(3000)}")

        sampler = Sampler(op.proc.pid, metrics_url, t0_ref)
        idle = sampler.sample()
        result["operator"] = {"idle_rss_mb": round(idle["rss_mb"], 1)}
        sampler.samples.clear()
        kubelet = Kubelet(api, run, args.wait_scheduled)
        watchers = [
            ("/apis/batch/v1/jobs", BUILDER, run.on_job),
            ("/api/v1/pods", BUILDER, kubelet.on_pod),
            ("/apis/apps/v1/deployments", SERVER, run.on_deployment),
            (f"{MODEL_PATH}/{PLURAL}", None, run.on_model),
        ]
        for path, selector, handler in watchers:
            threading.Thread(target=watch_loop, args=(api, path, selector, handler, stop, run.watch_errors),
                             name=f"watch{path}", daemon=True).start()
        time.sleep(1)  # watches established
        cp_cpu_start = {name: (_proc_stat(pid) or (0, 0.0))[1] for name, pid in state.pids.items()}
        op_cpu_start = group_usage(op.proc.pid)["cpu_s"]
        bench_cpu_start = _self_cpu()
        apiserver_before = scrape_apiserver(api)
        sampler.start()

        # Create N models as fast as a thread pool can.
        log(f"creating {n} models in {len(namespaces)} namespace(s)")
        names = [(namespaces[i % len(namespaces)], f"m{i:04d}") for i in range(n)]

        def create(item: tuple[str, str]) -> None:
            ns, name = item
            try:
                api.request("POST", f"{MODEL_PATH}/namespaces/{ns}/{PLURAL}", model_body(name))
            except Exception as err:  # noqa: BLE001
                with run.lock:
                    run.create_errors.append(f"{ns}/{name}: {err}")
                return
            with run.lock:
                run.stamp(ns, name, "created")

        run.t0 = time.monotonic()
        t0_ref[0] = run.t0
        result["outcome"] = "running"
        with cf.ThreadPoolExecutor(args.create_workers, thread_name_prefix="create") as pool:
            list(pool.map(create, names))
        run.marks["creates_done"] = run.rel()
        result["create_rate"] = n / run.marks["creates_done"] if run.marks["creates_done"] else None
        log(f"{n} creates returned after {run.marks['creates_done']:.1f}s "
            f"({len(run.create_errors)} errors)")

        # Wait for all Ready (or the deadline, or the operator dying), reporting progress.
        deadline = run.t0 + args.deadline
        last_report = 0.0
        outcome = "complete"
        while not run.all_ready.is_set():
            if op.proc.poll() is not None:
                outcome = f"operator exited with {op.proc.returncode}"
                break
            if time.monotonic() >= deadline:
                outcome = f"deadline of {args.deadline:.0f}s reached"
                break
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                with run.lock:
                    finished = sum(1 for r in run.models.values() if "build_finished" in r)
                    hist = collections.Counter(run.phases.values())
                s = sampler.samples[-1] if sampler.samples else {}
                log(f"t={run.rel():6.1f}s jobs {len(run.jobs)}/{n} builds finished {finished}/{n} "
                    f"ready {run.ready_count()}/{n} phases {dict(hist)} "
                    f"operator rss {s.get('rss_mb', 0):.0f}MB cpu {s.get('cpu_s', 0) - op_cpu_start:.1f}s")
            run.all_ready.wait(0.2)
        t_end = run.rel()
        result["loadavg_at_end"] = os.getloadavg()
        end_usage = sampler.sample()
        end_metrics = scrape_metrics(metrics_url)
        cp_cpu_end = {name: (_proc_stat(pid) or (0, 0.0))[1] for name, pid in state.pids.items()}
        result["outcome"] = outcome
        with run.lock:
            finished_times = [r["build_finished"] for r in run.models.values() if "build_finished" in r]
            if finished_times:
                run.marks["last_build_finished"] = max(finished_times)
            if finished_times and len(finished_times) < n:
                run.marks["last_build_finished_partial"] = True
        if outcome == "complete" and "last_build_finished" in run.marks:
            result["ready_after_last_build_s"] = run.marks["all_ready"] - run.marks["last_build_finished"]
        result["operator"].update({
            "peak_sampled_rss_mb": round(sampler.peak_rss_mb, 1),
            "vmhwm_mb": round(sampler.peak_hwm_mb, 1),
            "peak_rss_mb": round(max(sampler.peak_rss_mb, sampler.peak_hwm_mb), 1),
            "rss_at_end_mb": round(end_usage["rss_mb"], 1),
            "cpu_s_run": round(end_usage["cpu_s"] - op_cpu_start, 2),
            "cpu_s_total": round(end_usage["cpu_s"], 2),
            "max_pids": sampler.max_pids,
            "measured_until_s": round(t_end, 2),
        })
        result["control_plane_cpu_s"] = {k: round(cp_cpu_end.get(k, 0) - v, 1) for k, v in cp_cpu_start.items()}
        result["control_plane_cpu_s"]["this bench"] = round(_self_cpu() - bench_cpu_start, 1)
        try:
            result["apiserver"] = apiserver_deltas(apiserver_before, scrape_apiserver(api))
        except Exception as err:  # noqa: BLE001 - context, not the measurement
            result["apiserver"] = {"error": str(err)}
        result["metrics_raw_at_end"] = end_metrics
        result["metrics_at_end"] = summarize_metrics(end_metrics) if end_metrics else None

        # Idle churn: after everything is Ready and the operator's queue has drained, a
        # level-triggered operator at rest should reconcile (and write) ~nothing.
        if outcome == "complete" and args.quiet_seconds > 0 and end_metrics:
            drain_deadline = time.monotonic() + max(30.0, deadline - time.monotonic())
            drained = None
            while time.monotonic() < drain_deadline:
                raw = scrape_metrics(metrics_url)
                if raw is None or summarize_metrics(raw)["workqueue_depth"] == 0:
                    drained = run.rel()
                    break
                time.sleep(0.5)
            result["queue_drained_s"] = round(drained, 2) if drained is not None else None
            before_raw = scrape_metrics(metrics_url)
            events_before = collections.Counter(run.events)
            time.sleep(args.quiet_seconds)
            after_raw = scrape_metrics(metrics_url)
            if before_raw and after_raw:
                before, after = summarize_metrics(before_raw), summarize_metrics(after_raw)
                events = collections.Counter(run.events)
                events.subtract(events_before)
                result["quiet"] = {
                    "seconds": args.quiet_seconds,
                    "reconciles": (after["reconcile_ok"] + after["reconcile_error"])
                    - (before["reconcile_ok"] + before["reconcile_error"]),
                    "child_writes": after["child_writes"] - before["child_writes"],
                    "watch_events": {f"{k[0]} {k[1]}": v for k, v in events.items() if v},
                    "counter_deltas": {k: after_raw[k] - before_raw.get(k, 0) for k in after_raw
                                       if not k.startswith("optimodel_workqueue")
                                       and after_raw[k] != before_raw.get(k, 0)},
                }
        return 0 if outcome == "complete" else 1
    except KeyboardInterrupt as err:
        result["outcome"] = f"interrupted ({str(err) or 'Ctrl-C'})"
        return 130
    except Exception as err:  # noqa: BLE001 - record, then clean up
        result["outcome"] = f"error: {type(err).__name__}: {err}"
        traceback.print_exc()
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop.set()
        if sampler:
            sampler.stop.set()
        if kubelet:
            kubelet.pool.shutdown(wait=False, cancel_futures=True)
        try:
            if run.t0 is not None:
                _finish_result(result, run, sampler, api)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        if op:
            op.stop()
            result.setdefault("operator", {})["exit_code"] = op.proc.returncode if op.proc else None
            result["operator_log"] = operator_log_summary(op.log_path)
        if state is not None:
            try:
                shutil.copytree(state_dir / "logs", log_dir / "control-plane", dirs_exist_ok=True)
            except OSError:
                pass
        try:
            localcluster.down(state_dir)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        shutil.rmtree(state_dir, ignore_errors=True)
        if run.t0 is not None:
            try:
                write_results(args.out, result)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        log(f"outcome: {result['outcome']}; logs in {log_dir}")


def _self_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _exists(api: Api, path: str) -> bool:
    try:
        api.request("GET", path)
        return True
    except ApiError:
        return False


def _finish_result(result: dict, run: Run, sampler: Sampler | None, api: Api) -> None:
    """Counts, phase histogram, latencies and stuck models, from what the watches saw."""
    with run.lock:
        models = {f"{ns}/{name}": dict(r) for (ns, name), r in run.models.items()}
        phases = dict(run.phases)
        result["marks"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in run.marks.items()}
        result["ready"] = sum(1 for r in models.values() if "ready" in r)
        result["phases"] = dict(collections.Counter(phases.values()))
        result["jobs_seen"] = len(run.jobs)
        result["extra_jobs"] = run.extra_jobs
        result["builds_finished"] = sum(1 for r in models.values() if "build_finished" in r)
        result["create_errors"] = run.create_errors[:50]
        result["finish_errors"] = run.finish_errors[:50]
        result["watch_errors"] = dict(run.watch_errors)
    result["latencies"] = latency_rows(models)
    result["per_model"] = {k: {s: round(t, 3) for s, t in v.items()} for k, v in sorted(models.items())}
    not_ready = sorted(k for k, r in models.items() if "ready" not in r)
    stuck = []
    for key in not_ready[:10]:
        ns, name = key.split("/")
        try:
            status = api.request("GET", f"{MODEL_PATH}/namespaces/{ns}/{PLURAL}/{name}").get("status") or {}
            conds = {c["type"]: f"{c['status']} {c.get('reason')}: {c.get('message', '')[:80]}"
                     for c in status.get("conditions") or []}
            stuck.append(f"{key}: phase {status.get('phase')}; seen {sorted(models[key])}; {conds}")
        except Exception as err:  # noqa: BLE001
            stuck.append(f"{key}: seen {sorted(models[key])}; (read failed: {err})")
    result["stuck"] = stuck
    if sampler:
        result["operator_samples"] = sampler.samples
        result["metrics_timeline"] = sampler.metric_samples
        depths = [m.get("workqueue_depth", 0) for m in sampler.metric_samples]
        result["max_workqueue_depth"] = int(max(depths)) if depths else None


if __name__ == "__main__":
    sys.exit(main())
