"""Desired state as pure functions: typed spec + settings -> Kubernetes manifest dicts.

Nothing here talks to the API server or reads the clock, so every builder is tested with exact
equality and no cluster. Names are deterministic (the same build is never created twice), every
child carries an owner reference (garbage collection) and the ``app.kubernetes.io/*`` labels,
and every pod we create passes Pod Security ``restricted``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from optimodel import artifacts
from optimodel.api.crd import GROUP, KIND, VERSION
from optimodel.api.spec import BuildSpec, OptimizedModelSpec
from optimodel.api.report import Benchmark, EngineInfo
from optimodel.api.status import BenchmarkStatus
from optimodel.operator.settings import OperatorSettings
from optimodel.triton.metrics import hpa_pods_metric, keda_query
from optimodel.storage import ARTIFACT_ENV_PREFIX

MODEL_LABEL = "optimodel.dev/model"
KEY_ANNOTATION = "optimodel.dev/build-key"
ATTEMPT_ANNOTATION = "optimodel.dev/build-attempt"
SUMMARY_ANNOTATION = "optimodel.dev/build-summary"
"""On a finished build Job: the builder's summary, copied from the pod's termination message so
the outcome survives the pod's garbage collection."""
ENGINE_ANNOTATION = "optimodel.dev/engine"
"""On the Triton Deployment: the served engine and its benchmark, so status can be rebuilt."""
REBUILD_ANNOTATION = "optimodel.dev/rebuild"
"""On the OptimizedModel, set by the user: a new value forces a new build (a new build key)."""
FIELD_MANAGER = "optimodel-operator"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
MODELS_DIR = "/models"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
PRESTOP_SECONDS = 10
"""How long a terminating Triton pod keeps serving while Services stop routing to it."""
DRAIN_SECONDS = 15
"""How long Triton may take after SIGTERM to finish in-flight requests."""
# Triton's administrative endpoints (besides load/unload, which --model-control-mode=none
# refuses outright): changing log settings (including the log file), tracing, and registering
# shared-memory regions. No client of an optimodel service needs them, so they are restricted
# to requests carrying a header whose value is a random key in a Secret the operator creates
# and nobody reads (see ``triton_admin_secret``): closed to every client of the Service.
RESTRICTED_APIS = ("model-repository", "logging", "trace", "shared-memory")
ADMIN_KEY_HEADER = "optimodel-admin-key"
ADMIN_KEY_ENV = "OPTIMODEL_TRITON_ADMIN_KEY"
ADMIN_KEY_SECRET_KEY = "key"


@dataclass(frozen=True)
class ModelRef:
    """The parts of an ``OptimizedModel`` object the builders need."""

    name: str
    namespace: str
    uid: str
    spec: OptimizedModelSpec
    rebuild: str | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "ModelRef":
        meta = body["metadata"]
        return cls(meta["name"], meta["namespace"], meta["uid"],
                   OptimizedModelSpec.model_validate(body.get("spec") or {}),
                   (meta.get("annotations") or {}).get(REBUILD_ANNOTATION) or None)


# --- naming, labels, ownership ------------------------------------------------------------

def job_name(model: ModelRef, key: str, attempt: int = 0) -> str:
    """``<name>-build-<key[:10]>`` (``-r<attempt>`` for retries), at most 63 characters."""
    if attempt == 0:
        return f"{model.name[:46]}-build-{key[:10]}"
    suffix = f"-r{attempt}"
    return f"{model.name[:46 - len(suffix)]}-build-{key[:10]}{suffix}"


def labels(model: ModelRef, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "optimodel",
        "app.kubernetes.io/instance": model.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "optimodel",
        "app.kubernetes.io/managed-by": "optimodel-operator",
        MODEL_LABEL: model.name,
    }


def selector_labels(model: ModelRef) -> dict[str, str]:
    """Immutable Deployment selector: never add labels here after the first release."""
    return {"app.kubernetes.io/instance": model.name, "app.kubernetes.io/component": "server",
            MODEL_LABEL: model.name}


def owner_reference(model: ModelRef) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": model.name,
            "uid": model.uid, "controller": True, "blockOwnerDeletion": True}


def metadata(model: ModelRef, name: str, component: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": model.namespace, "labels": labels(model, component),
            "ownerReferences": [owner_reference(model)], **extra}


# --- security ------------------------------------------------------------------------------

def pod_security_context(settings: OperatorSettings) -> dict[str, Any]:
    uid = settings.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


# --- build ---------------------------------------------------------------------------------

def on_cpu(model: ModelRef) -> bool:
    """``serving.gpu.count: 0``: built and served on CPU nodes, no GPU requested."""
    return model.spec.serving.gpu.count == 0


def gpu_product(model: ModelRef, settings: OperatorSettings) -> str | None:
    """The GPU type the engine is built for and served on; ``None`` on CPU."""
    if on_cpu(model):
        return None
    return model.spec.serving.gpu.product or settings.default_gpu_product


def placement(model: ModelRef, settings: OperatorSettings, product: str | None = None
              ) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(nodeSelector, tolerations) of builder and Triton pods: the GPU type, or the CPU pool."""
    if on_cpu(model):
        return dict(settings.cpu_node_selector), [dict(t) for t in settings.cpu_tolerations]
    return ({"nvidia.com/gpu.product": product or gpu_product(model, settings)},
            [dict(t) for t in settings.gpu_tolerations])


def placement_fields(node_selector: dict[str, str], tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    """Pod spec fields for a placement; empty ones are left out (the API server drops them, and a
    field we set but the server omits would look like drift on every reconcile)."""
    fields: dict[str, Any] = {}
    if node_selector:
        fields["nodeSelector"] = node_selector
    if tolerations:
        fields["tolerations"] = tolerations
    return fields


def gpu_resources(model: ModelRef) -> dict[str, str]:
    """The extended resource a pod requests (and limits) for its GPUs; none on CPU."""
    return {} if on_cpu(model) else {"nvidia.com/gpu": str(model.spec.serving.gpu.count)}


def builder_image(model: ModelRef, settings: OperatorSettings) -> str:
    if on_cpu(model):
        return settings.builder_cpu_image or settings.builder_image
    return settings.builder_image


def build_spec(model: ModelRef, settings: OperatorSettings) -> BuildSpec:
    """Exactly the inputs of the build key (serving edits are not among them)."""
    return BuildSpec(model=model.spec.model, optimization=model.spec.optimization,
                     gpu_product=gpu_product(model, settings),
                     builder_image=builder_image(model, settings), rebuild=model.rebuild)


def artifact_uri(model: ModelRef, key: str, settings: OperatorSettings) -> str:
    return f"{settings.artifact_root.rstrip('/')}/{model.namespace}/{model.name}/{key}"


def _pvc_claim(uri: str) -> str | None:
    return uri[len("pvc://"):].split("/", 1)[0] if uri.startswith("pvc://") else None


def artifact_scope_args(model: ModelRef, settings: OperatorSettings) -> list[str]:
    """``--artifact-scope <root>/<namespace>/`` for the builder and the stager: they refuse an
    output or source outside it, and an artifact credential that reaches beyond it (see
    ``optimodel.artifacts``); nothing when the installer opted into one shared credential."""
    if settings.artifact_credentials_shared:
        return []
    return [artifacts.SCOPE_ARG, artifacts.namespace_scope(settings.artifact_root, model.namespace)]


def _storage(model: ModelRef, settings: OperatorSettings, *, sources: list[str], writable: set[str],
             model_credentials: bool) -> tuple[list[dict], list[dict], list[dict]]:
    """Volumes, mounts and envFrom giving a pod access to the given storage URIs.

    pvc:// claims are mounted under ``settings.pvc_mount_root/<claim>`` (read-only unless in
    ``writable``); object-store credentials only ever come from Secret references. The artifact
    Secret's keys arrive prefixed (``OPTIMODEL_ARTIFACT_AWS_...``), so they can never be mistaken
    for, or shadowed by, the model Secret's standard ``AWS_*`` keys; the model Secret is only
    given where sources are read (``model_credentials``: the builder, not the stager).
    """
    claims: dict[str, bool] = {}
    for uri in sources:
        claim = _pvc_claim(uri)
        if claim:
            claims[claim] = claims.get(claim, False) or claim in writable
    # ``readOnly: false`` is never written: the API server drops false booleans, and a field we
    # set but the server omits would make every reconcile see a difference and patch again.
    volumes = [{"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": c, **({} if rw else {"readOnly": True})}}
               for i, (c, rw) in enumerate(sorted(claims.items()))]
    mounts = [{"name": f"pvc-{i}", "mountPath": f"{settings.pvc_mount_root}/{c}", **({} if rw else {"readOnly": True})}
              for i, (c, rw) in enumerate(sorted(claims.items()))]
    env_from = []
    if model_credentials and model.spec.model.credentials_secret:
        env_from.append({"secretRef": {"name": model.spec.model.credentials_secret}})
    if settings.artifact_credentials_secret:
        env_from.append({"prefix": ARTIFACT_ENV_PREFIX,
                         "secretRef": {"name": settings.artifact_credentials_secret}})
    return volumes, mounts, env_from


def builder_job(model: ModelRef, key: str, settings: OperatorSettings, attempt: int = 0) -> dict[str, Any]:
    """The builder Job: one pod on a GPU node of the serving GPU type, args as a list.

    ``attempt`` > 0 is a retry after an infrastructure failure (a new Job: a failed Job is final).
    """
    output = artifact_uri(model, key, settings)
    spec_json = json.dumps(build_spec(model, settings).to_wire(), sort_keys=True, separators=(",", ":"))
    sources = [model.spec.model.uri, output]
    if model.spec.optimization.calibration and model.spec.optimization.calibration.uri:
        sources.append(model.spec.optimization.calibration.uri)
    artifact_claim = _pvc_claim(output)
    volumes, mounts, env_from = _storage(model, settings, sources=sources, model_credentials=True,
                                         writable={artifact_claim} if artifact_claim else set())
    gpus = gpu_resources(model)
    node_selector, tolerations = placement(model, settings)
    container = {
        "name": "builder",
        "image": builder_image(model, settings),
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["optimodel"],
        "args": ["build", "--spec-json", spec_json, "--build-key", key, "--output", output,
                 *artifact_scope_args(model, settings),
                 "--model-name", model.name, "--termination-message-path", TERMINATION_MESSAGE_PATH],
        "env": [
            {"name": "OPTIMODEL_PVC_ROOT", "value": settings.pvc_mount_root},
            {"name": "HOME", "value": "/tmp"},
            *([{"name": "OPTIMODEL_ALLOWED_SOURCE_PREFIXES", "value": ",".join(settings.allowed_source_prefixes)}]
              if settings.allowed_source_prefixes else []),
        ],
        "resources": {
            "requests": {"cpu": settings.builder_cpu, "memory": settings.builder_memory, **gpus},
            "limits": {"memory": settings.builder_memory, **gpus},
        },
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "work", "mountPath": "/tmp"}, *mounts],
    }
    if env_from:
        container["envFrom"] = env_from
    job_spec: dict[str, Any] = {
        "backoffLimit": settings.build_backoff_limit,
        "activeDeadlineSeconds": settings.build_active_deadline_seconds,
        "template": {
            "metadata": {"labels": labels(model, "builder"), "annotations": {KEY_ANNOTATION: key}},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": settings.builder_service_account,
                "automountServiceAccountToken": False,
                "securityContext": pod_security_context(settings),
                **placement_fields(node_selector, tolerations),
                "containers": [container],
                "volumes": [{"name": "work", "emptyDir": {}}, *volumes],
            },
        },
    }
    if settings.build_ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = settings.build_ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(model, job_name(model, key, attempt), "builder",
                             annotations={KEY_ANNOTATION: key, ATTEMPT_ANNOTATION: str(attempt)}),
        "spec": job_spec,
    }


# --- serving -------------------------------------------------------------------------------

def rollout_strategy(model: ModelRef) -> dict[str, Any]:
    if model.spec.serving.rollout == "GPUFrugal":
        surge, unavailable = 0, 1
    else:
        surge, unavailable = 1, 0
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}


def desired_replicas(model: ModelRef) -> int:
    """Replicas at creation. With autoscaling on this is written once, then the autoscaler owns it."""
    if model.spec.autoscaling.enabled:
        return model.spec.autoscaling.min_replicas
    return model.spec.serving.replicas


def applied_by(obj: dict[str, Any] | None, path: tuple[str, ...], manager: str = FIELD_MANAGER) -> bool:
    """True when ``manager``'s server-side apply owns the field at ``path`` of the live ``obj``."""
    for entry in (obj or {}).get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        node = entry.get("fieldsV1") or {}
        for key in path:
            node = node.get(f"f:{key}")
            if node is None:
                break
        else:
            return True
    return False


def replicas_to_apply(model: ModelRef, live: dict[str, Any] | None) -> int | None:
    """``spec.replicas`` in our apply, or None to leave it out (the autoscaler owns it).

    Without autoscaling it is the spec's. With autoscaling our field manager never sets it, so
    our apply can never undo an autoscaler's decision (a forced apply of a stale value would).
    The one exception: if our manager still owns the field (autoscaling was just switched on),
    leaving it out would delete it and Deployment would default it to 1, so we keep the live
    value until the autoscaler takes the field over with its first write. The initial value of
    a new Deployment is seeded by ``initial_replicas`` under another field manager.
    """
    if not model.spec.autoscaling.enabled:
        return model.spec.serving.replicas
    if live is not None and applied_by(live, ("spec", "replicas")):
        return (live.get("spec") or {}).get("replicas", desired_replicas(model))
    return None


INITIAL_REPLICAS_MANAGER = "optimodel-operator-initial-replicas"


def initial_replicas(model: ModelRef) -> dict[str, Any]:
    """Apply patch (for ``INITIAL_REPLICAS_MANAGER``) seeding a new autoscaled Deployment with
    ``minReplicas``: a separate owner, so the operator's own apply never owns the field and the
    autoscaler's first write takes it over."""
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": model.name, "namespace": model.namespace},
            "spec": {"replicas": desired_replicas(model)}}


def engine_annotation(engine: EngineInfo, benchmark: Benchmark | None) -> str:
    """The served engine (and its benchmark) as recorded on the Deployment (see ``ENGINE_ANNOTATION``):
    the status's own types, ``{"engine": EngineInfo, "benchmark": BenchmarkStatus}``."""
    record = {"engine": engine.to_wire(), **({"benchmark": benchmark.to_wire()} if benchmark else {})}
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def engine_from_deployment(live: dict[str, Any] | None) -> tuple[EngineInfo | None, BenchmarkStatus | None]:
    """Engine and benchmark recorded on a live Deployment (to rebuild a lost status); (None, None)
    for a record that does not read (then the build Jobs, or a cache-hit rebuild, tell)."""
    text = ((live or {}).get("metadata", {}).get("annotations") or {}).get(ENGINE_ANNOTATION)
    if not text:
        return None, None
    try:
        record = json.loads(text)
        engine = EngineInfo.model_validate(record["engine"])
        benchmark = BenchmarkStatus.model_validate(record["benchmark"]) if record.get("benchmark") else None
    except (ValueError, KeyError, TypeError):
        return None, None
    return engine, benchmark


def triton_admin_secret_name(model: ModelRef) -> str:
    return f"{model.name}-triton-admin"


def triton_admin_secret(model: ModelRef, key: str) -> dict[str, Any]:
    """The Secret holding the key of Triton's restricted endpoints (``RESTRICTED_APIS``).

    Created once, with a random ``key`` (``secrets.token_urlsafe``), and never read or updated:
    nobody needs to know the value, it only has to be unguessable, so the operator gets
    ``create`` on Secrets and nothing else. Owned by the model, so it goes with it.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(model, triton_admin_secret_name(model), "server"),
        "type": "Opaque",
        "stringData": {ADMIN_KEY_SECRET_KEY: key},
    }


def restricted_api_args() -> list[str]:
    """Triton flags closing ``RESTRICTED_APIS`` over HTTP and gRPC to anyone without the key.

    ``$(OPTIMODEL_TRITON_ADMIN_KEY)`` is expanded by the kubelet from the container's
    environment (the Secret), so the pod spec never holds the value.
    """
    lock = f"{','.join(RESTRICTED_APIS)}:{ADMIN_KEY_HEADER}=$({ADMIN_KEY_ENV})"
    return [f"--http-restricted-api={lock}", f"--grpc-restricted-protocol={lock}"]


def triton_deployment(model: ModelRef, engine: EngineInfo, settings: OperatorSettings,
                      live: dict[str, Any] | None = None, benchmark: Benchmark | None = None
                      ) -> dict[str, Any]:
    """Triton serving the engine; the repository is staged from artifact storage by an init container.

    ``live`` is the current Deployment, if any: it decides whether we set ``spec.replicas``.

    Triton's control API is closed (the Service in front of it authenticates nobody): the
    repository is complete before Triton starts, so it runs with ``--model-control-mode=none``.
    It then loads every model in the repository at startup (the init container stages exactly
    one) and its model-repository manager refuses every load and unload, over HTTP and gRPC
    alike (HTTP 503 / gRPC UNAVAILABLE; it is the server core that refuses, not a header check a
    client could satisfy). ``--load-model`` is only valid in explicit mode and is gone with it.

    The repository API (index included) and the other administrative endpoints (log settings
    and log file, tracing, shared-memory registration) are restricted on top, with
    ``--http-restricted-api`` / ``--grpc-restricted-protocol``, to requests carrying a header
    whose value is a random key from a Secret (``triton_admin_secret``): a
    restriction is only worth its value's secrecy, so not a constant (public, in this source)
    nor the pod UID (readable cluster-wide, kube-state-metrics exports it). Guarded by
    ``tests/serving/test_control_api_locked.py``, which runs a real Triton with these arguments.
    """
    serving = model.spec.serving
    volumes, mounts, env_from = _storage(model, settings, sources=[engine.uri], writable=set(),
                                         model_credentials=False)
    read_only_mounts = [{**m, "readOnly": True} for m in mounts]
    serving_json = json.dumps(serving.to_wire(), sort_keys=True, separators=(",", ":"))
    stage = {
        "name": "stage-repository",
        "image": settings.operator_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["optimodel"],
        "args": ["stage-repository", "--from", engine.uri, "--to", MODELS_DIR,
                 "--model-name", model.name, "--serving-json", serving_json,
                 "--layout", settings.triton_repository_layout, *artifact_scope_args(model, settings)],
        "env": [{"name": "OPTIMODEL_PVC_ROOT", "value": settings.pvc_mount_root},
                {"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        # Its error (e.g. CredentialsTooBroad) becomes the pod status's termination message,
        # which the Ready condition quotes (conditions.pod_problem).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR},
                         {"name": "tmp", "mountPath": "/tmp"}, *read_only_mounts],
    }
    if env_from:
        stage["envFrom"] = env_from
    gpus = gpu_resources(model)
    resources: dict[str, Any] = {
        "requests": {"cpu": settings.triton_cpu, "memory": settings.triton_memory, **gpus},
        "limits": {"memory": settings.triton_memory, **gpus},
    }
    node_selector, tolerations = placement(model, settings, engine.gpu_product)
    for name, quantity in (serving.resources or {}).items():
        resources["requests"][name] = quantity
        if name == "memory":
            resources["limits"]["memory"] = quantity
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}}
    triton = {
        "name": "triton",
        "image": settings.triton_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["tritonserver"],
        "args": [
            f"--model-repository={MODELS_DIR}",
            # No load/unload API: see the docstring (closes "Triton's control API is open").
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={DRAIN_SECONDS}",
            f"--http-port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
            "--allow-metrics=true",
            *restricted_api_args(),
        ],
        "env": [{"name": "HOME", "value": "/tmp"},
                {"name": ADMIN_KEY_ENV, "valueFrom": {"secretKeyRef": {
                    "name": triton_admin_secret_name(model), "key": ADMIN_KEY_SECRET_KEY}}}],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": {**probe, "periodSeconds": 10,
                         "failureThreshold": max(3, settings.triton_startup_seconds // 10)},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        # Drain without failing a request: the pod leaves the Service's endpoints as soon as it
        # terminates, but kube-proxy on every node needs a moment to stop routing to it, so
        # Triton keeps serving through the preStop pause, then finishes in-flight requests
        # (--exit-timeout-secs) after SIGTERM.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                          "periodSeconds": 10, "failureThreshold": 6},
        "resources": resources,
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "shm", "mountPath": "/dev/shm"}],
    }
    pod_labels = {**labels(model, "server"), **selector_labels(model)}
    replicas = replicas_to_apply(model, live)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(model, model.name, "server", annotations={
            KEY_ANNOTATION: engine.key, ENGINE_ANNOTATION: engine_annotation(engine, benchmark)}),
        "spec": {
            **({"replicas": replicas} if replicas is not None else {}),
            "selector": {"matchLabels": selector_labels(model)},
            "strategy": rollout_strategy(model),
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {KEY_ANNOTATION: engine.key,
                                    "prometheus.io/scrape": "true",
                                    "prometheus.io/port": str(METRICS_PORT)},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(settings),
                    **placement_fields(node_selector, tolerations),
                    "terminationGracePeriodSeconds": PRESTOP_SECONDS + DRAIN_SECONDS + 5,
                    "initContainers": [stage],
                    "containers": [triton],
                    "volumes": [
                        {"name": "models", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                        *volumes,
                    ],
                },
            },
        },
    }


def triton_service(model: ModelRef) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(model, model.name, "server"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(model),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def endpoint(model: ModelRef) -> str:
    return f"http://{model.name}.{model.namespace}.svc:{HTTP_PORT}/v2/models/{model.name}"


def pod_disruption_budget(model: ModelRef) -> dict[str, Any]:
    """At most one Triton pod voluntarily evicted at a time (never blocks a drain entirely)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(model, model.name, "server"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(model)}},
    }


# --- autoscaling ---------------------------------------------------------------------------

def scaling_behavior(model: ModelRef) -> dict[str, Any]:
    """Scale up fast (double or +4 pods every 15 s), down slowly (one pod a minute, after a window)."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15},
                         {"type": "Pods", "value": 4, "periodSeconds": 15}],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": model.spec.autoscaling.scale_down_stabilization_seconds,
            "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        },
    }


def horizontal_pod_autoscaler(model: ModelRef) -> dict[str, Any]:
    """HPA on the per-pod queue-depth metric served by prometheus-adapter (the chart's rule)."""
    scaling = model.spec.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(model, model.name, "autoscaler"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": model.name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [hpa_pods_metric(scaling.target_queue_depth)],
            "behavior": scaling_behavior(model),
        },
    }


def scaled_object(model: ModelRef, settings: OperatorSettings) -> dict[str, Any]:
    """KEDA ScaledObject with a Prometheus trigger on the model's summed queue depth.

    KEDA divides the query's value by the replica count (metricType AverageValue), so the target
    is the average number of pending requests per pod, as with the HPA path.
    """
    scaling = model.spec.autoscaling
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(model, model.name, "autoscaler"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": model.name},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": scaling.scale_down_stabilization_seconds,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": scaling_behavior(model)}},
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": settings.prometheus_url,
                    "query": keda_query(model.namespace, model.name),
                    "threshold": f"{scaling.target_queue_depth:g}",
                },
            }],
        },
    }


def pod_monitor(model: ModelRef) -> dict[str, Any]:
    """Prometheus Operator PodMonitor scraping Triton's metrics port (with namespace/pod labels)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata(model, model.name, "server"),
        "spec": {
            "selector": {"matchLabels": selector_labels(model)},
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


def autoscaler_engine(model: ModelRef, keda_installed: bool) -> str | None:
    """hpa, keda, or None (autoscaling off). ``auto`` picks KEDA when its CRD is installed."""
    scaling = model.spec.autoscaling
    if not scaling.enabled:
        return None
    if scaling.engine == "auto":
        return "keda" if keda_installed else "hpa"
    return scaling.engine
