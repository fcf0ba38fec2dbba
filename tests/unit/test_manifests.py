"""Desired state is pure: exact manifests for a fixed spec and settings, no cluster."""

from __future__ import annotations

import json

import pytest

from optimodel.api.spec import OptimizedModelSpec
from optimodel.api.report import EngineInfo
from optimodel.operator import manifests as m
from optimodel.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(
    builder_image="reg/builder:1", operator_image="reg/operator:1", triton_image="reg/triton:1",
    artifact_root="pvc://artifacts/builds", prometheus_url="http://prom:9090",
)
SPEC = {
    "model": {"uri": "pvc://models/minilm", "format": "huggingface", "credentialsSecret": "hub"},
    "optimization": {"precision": "int8", "calibration": {"uri": "s3://data/calib.txt", "samples": 64}},
    "serving": {"gpu": {"product": "NVIDIA-L4", "count": 1}},
    "autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetQueueDepth": 2.5},
}
KEY = "ab" * 32
MODEL = m.ModelRef("minilm", "ml", "uid-1", OptimizedModelSpec.model_validate(SPEC))
ENGINE = EngineInfo(key=KEY, uri=f"pvc://artifacts/builds/ml/minilm/{KEY}", model_name="minilm", precision="int8",
                    target="tensorrt", platform="tensorrt_plan", gpu_product="NVIDIA-L4", compute_capability="8.9",
                    runtime_version="tensorrt 10.8.0.43", size_bytes=45_000_000)

LABELS = lambda component: {  # noqa: E731
    "app.kubernetes.io/name": "optimodel", "app.kubernetes.io/instance": "minilm",
    "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": "optimodel",
    "app.kubernetes.io/managed-by": "optimodel-operator", "optimodel.dev/model": "minilm",
}
OWNER = [{"apiVersion": "optimodel.dev/v1alpha1", "kind": "OptimizedModel", "name": "minilm",
          "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}
TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
SELECTOR = {"app.kubernetes.io/instance": "minilm", "app.kubernetes.io/component": "server",
            "optimodel.dev/model": "minilm"}


def test_builder_job_exact():
    job = m.builder_job(MODEL, KEY, SETTINGS)
    spec_json = json.dumps(m.build_spec(MODEL, SETTINGS).to_wire(), sort_keys=True, separators=(",", ":"))
    output = f"pvc://artifacts/builds/ml/minilm/{KEY}"
    assert job == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "minilm-build-ababababab", "namespace": "ml", "labels": LABELS("builder"),
                     "ownerReferences": OWNER,
                     "annotations": {"optimodel.dev/build-key": KEY, "optimodel.dev/build-attempt": "0"}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 3600,
            "template": {
                "metadata": {"labels": LABELS("builder"), "annotations": {"optimodel.dev/build-key": KEY}},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "default",
                    "automountServiceAccountToken": False,
                    "securityContext": POD_SECURITY,
                    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
                    "tolerations": TOLERATIONS,
                    "containers": [{
                        "name": "builder",
                        "image": "reg/builder:1",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["optimodel"],
                        "args": ["build", "--spec-json", spec_json, "--build-key", KEY, "--output", output,
                                 "--artifact-scope", "pvc://artifacts/builds/ml/",
                                 "--model-name", "minilm", "--termination-message-path", "/dev/termination-log"],
                        "env": [{"name": "OPTIMODEL_PVC_ROOT", "value": "/mnt/pvc"},
                                {"name": "HOME", "value": "/tmp"}],
                        "resources": {"requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
                                      "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}},
                        "securityContext": CONTAINER_SECURITY,
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "volumeMounts": [{"name": "work", "mountPath": "/tmp"},
                                         {"name": "pvc-0", "mountPath": "/mnt/pvc/artifacts"},
                                         {"name": "pvc-1", "mountPath": "/mnt/pvc/models", "readOnly": True}],
                        "envFrom": [{"secretRef": {"name": "hub"}}],
                    }],
                    "volumes": [{"name": "work", "emptyDir": {}},
                                {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "artifacts"}},
                                {"name": "pvc-1", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}],
                },
            },
        },
    }


def test_builder_args_are_a_list_and_spec_json_round_trips():
    args = m.builder_job(MODEL, KEY, SETTINGS)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert all(isinstance(a, str) for a in args)
    payload = json.loads(args[args.index("--spec-json") + 1])
    assert payload["optimization"]["calibration"]["uri"] == "s3://data/calib.txt"
    assert payload["gpuProduct"] == "NVIDIA-L4"
    assert "serving" not in payload and "autoscaling" not in payload


def test_hostile_spec_strings_stay_single_arguments():
    hostile = {**SPEC, "model": {"uri": "s3://b/$(rm -rf /);`id`", "format": "onnx"}}
    ref = m.ModelRef("x", "ml", "u", OptimizedModelSpec.model_validate(hostile))
    container = m.builder_job(ref, KEY, SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["optimodel"]
    assert "sh" not in container["command"] and "-c" not in container["args"]
    assert json.loads(container["args"][2])["model"]["uri"] == "s3://b/$(rm -rf /);`id`"


def test_triton_deployment_exact():
    serving_json = json.dumps(MODEL.spec.serving.to_wire(), sort_keys=True, separators=(",", ":"))
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}}
    assert m.triton_deployment(MODEL, ENGINE, SETTINGS) == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "minilm", "namespace": "ml", "labels": LABELS("server"), "ownerReferences": OWNER,
                     "annotations": {"optimodel.dev/build-key": KEY,
                                     "optimodel.dev/engine": json.dumps({"engine": ENGINE.to_wire()},
                                                                        sort_keys=True, separators=(",", ":"))}},
        "spec": {
            "selector": {"matchLabels": SELECTOR},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": LABELS("server"),
                             "annotations": {"optimodel.dev/build-key": KEY, "prometheus.io/scrape": "true",
                                             "prometheus.io/port": "8002"}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": POD_SECURITY,
                    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
                    "tolerations": TOLERATIONS,
                    "terminationGracePeriodSeconds": 30,  # preStop 10 + drain 15 + 5
                    "initContainers": [{
                        "name": "stage-repository",
                        "image": "reg/operator:1",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["optimodel"],
                        "args": ["stage-repository", "--from", ENGINE.uri, "--to", "/models",
                                 "--model-name", "minilm", "--serving-json", serving_json, "--layout", "native",
                                 "--artifact-scope", "pvc://artifacts/builds/ml/"],
                        "env": [{"name": "OPTIMODEL_PVC_ROOT", "value": "/mnt/pvc"}, {"name": "HOME", "value": "/tmp"}],
                        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                        "securityContext": CONTAINER_SECURITY,
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "volumeMounts": [{"name": "models", "mountPath": "/models"},
                                         {"name": "tmp", "mountPath": "/tmp"},
                                         {"name": "pvc-0", "mountPath": "/mnt/pvc/artifacts", "readOnly": True}],
                        # no envFrom: the model's Secret (hub) is for reading sources, which staging does not
                    }],
                    "containers": [{
                        "name": "triton",
                        "image": "reg/triton:1",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["tritonserver"],
                        "args": ["--model-repository=/models", "--model-control-mode=none",
                                 "--strict-readiness=true", "--exit-on-error=true",
                                 "--exit-timeout-secs=15",
                                 "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002",
                                 "--allow-metrics=true",
                                 "--http-restricted-api=model-repository,logging,trace,shared-memory:"
                                 "optimodel-admin-key=$(OPTIMODEL_TRITON_ADMIN_KEY)",
                                 "--grpc-restricted-protocol=model-repository,logging,trace,shared-memory:"
                                 "optimodel-admin-key=$(OPTIMODEL_TRITON_ADMIN_KEY)"],
                        "env": [{"name": "HOME", "value": "/tmp"},
                                {"name": "OPTIMODEL_TRITON_ADMIN_KEY", "valueFrom": {"secretKeyRef": {
                                    "name": "minilm-triton-admin", "key": "key"}}}],
                        "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"},
                                  {"name": "grpc", "containerPort": 8001, "protocol": "TCP"},
                                  {"name": "metrics", "containerPort": 8002, "protocol": "TCP"}],
                        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 60},
                        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
                        "lifecycle": {"preStop": {"sleep": {"seconds": 10}}},
                        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                                          "periodSeconds": 10, "failureThreshold": 6},
                        "resources": {"requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
                                      "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"}},
                        "securityContext": CONTAINER_SECURITY,
                        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True},
                                         {"name": "tmp", "mountPath": "/tmp"},
                                         {"name": "shm", "mountPath": "/dev/shm"}],
                    }],
                    "volumes": [{"name": "models", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                                {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "artifacts", "readOnly": True}}],
                },
            },
        },
    }


def test_triton_admin_secret_exact():
    assert m.triton_admin_secret(MODEL, "k3y") == {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "minilm-triton-admin", "namespace": "ml", "labels": LABELS("server"),
                     "ownerReferences": OWNER},
        "stringData": {"key": "k3y"},
    }


def test_credentials_reach_only_the_side_that_uses_them():
    """The artifact Secret arrives prefixed in builder and stager alike, so the model Secret's
    standard AWS keys can never shadow it (or be shadowed); the model Secret only reaches the
    builder, which reads the sources."""
    settings = SETTINGS.model_copy(update={"artifact_root": "s3://store/opt",
                                           "artifact_credentials_secret": "artifact-store"})
    builder = m.builder_job(MODEL, KEY, settings)["spec"]["template"]["spec"]["containers"][0]
    stage = m.triton_deployment(MODEL, ENGINE, settings)["spec"]["template"]["spec"]["initContainers"][0]
    artifact = {"prefix": "OPTIMODEL_ARTIFACT_", "secretRef": {"name": "artifact-store"}}
    assert builder["envFrom"] == [{"secretRef": {"name": "hub"}}, artifact]
    assert stage["envFrom"] == [artifact]
    for container in (builder, stage):
        args = container["args"]
        assert args[args.index("--artifact-scope") + 1] == "s3://store/opt/ml/"


def test_shared_credentials_opt_in_drops_the_scope():
    settings = SETTINGS.model_copy(update={"artifact_credentials_shared": True})
    builder = m.builder_job(MODEL, KEY, settings)["spec"]["template"]["spec"]["containers"][0]
    stage = m.triton_deployment(MODEL, ENGINE, settings)["spec"]["template"]["spec"]["initContainers"][0]
    assert "--artifact-scope" not in builder["args"] and "--artifact-scope" not in stage["args"]


@pytest.mark.parametrize("rollout,surge,unavailable", [("Surge", 1, 0), ("GPUFrugal", 0, 1)])
def test_rollout_strategies(rollout, surge, unavailable):
    ref = m.ModelRef("x", "ml", "u", OptimizedModelSpec.model_validate({**SPEC, "serving": {"rollout": rollout}}))
    assert m.rollout_strategy(ref)["rollingUpdate"] == {"maxSurge": surge, "maxUnavailable": unavailable}


def test_fixed_replicas_when_autoscaling_is_off():
    spec = {**SPEC, "serving": {"replicas": 3}, "autoscaling": {"enabled": False}}
    ref = m.ModelRef("x", "ml", "u", OptimizedModelSpec.model_validate(spec))
    assert m.desired_replicas(ref) == 3
    assert m.autoscaler_engine(ref, keda_installed=True) is None


def test_service_pdb_and_podmonitor_exact():
    assert m.triton_service(MODEL)["spec"] == {
        "type": "ClusterIP", "selector": SELECTOR,
        "ports": [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
                  {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP"},
                  {"name": "metrics", "port": 8002, "targetPort": "metrics", "protocol": "TCP"}]}
    assert m.pod_disruption_budget(MODEL)["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}
    assert m.pod_monitor(MODEL)["spec"] == {
        "selector": {"matchLabels": SELECTOR},
        "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}]}


BEHAVIOR = {
    "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15},
                             {"type": "Pods", "value": 4, "periodSeconds": 15}]},
    "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Min",
                  "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
}


def test_hpa_exact():
    assert m.horizontal_pod_autoscaler(MODEL) == {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "minilm", "namespace": "ml", "labels": LABELS("autoscaler"), "ownerReferences": OWNER},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "minilm"},
            "minReplicas": 2, "maxReplicas": 5,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": "nv_inference_pending_request_count"},
                "target": {"type": "AverageValue", "averageValue": "2500m"}}}],
            "behavior": BEHAVIOR,
        },
    }


def test_scaled_object_exact():
    from optimodel.triton.metrics import keda_query

    assert m.scaled_object(MODEL, SETTINGS)["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "minilm"},
        "minReplicaCount": 2, "maxReplicaCount": 5, "pollingInterval": 15, "cooldownPeriod": 300,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": BEHAVIOR}},
        "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
            "serverAddress": "http://prom:9090", "query": keda_query("ml", "minilm"), "threshold": "2.5"}}],
    }


@pytest.mark.parametrize("engine,keda,expected", [
    ("auto", True, "keda"), ("auto", False, "hpa"), ("hpa", True, "hpa"), ("keda", False, "keda")])
def test_autoscaler_engine_choice(engine, keda, expected):
    ref = m.ModelRef("x", "ml", "u", OptimizedModelSpec.model_validate({**SPEC, "autoscaling": {"engine": engine}}))
    assert m.autoscaler_engine(ref, keda_installed=keda) == expected


def test_long_names_stay_valid_label_values():
    ref = m.ModelRef("m" * 63, "ml", "u", MODEL.spec)
    assert len(m.job_name(ref, KEY)) <= 63


# --- serving on CPU (spec.serving.gpu.count 0) ---------------------------------------------

CPU_SETTINGS = OperatorSettings(
    builder_image="reg/builder:1", builder_cpu_image="reg/builder-cpu:1", operator_image="reg/operator:1",
    triton_image="reg/triton-cpu:1", triton_repository_layout="python", artifact_root="s3://engines",
    cpu_node_selector={"pool": "cpu"},
    cpu_tolerations=[{"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}],
)
CPU_MODEL = m.ModelRef("minilm", "ml", "uid-1", OptimizedModelSpec.model_validate(
    {**SPEC, "optimization": {"precision": "auto"}, "serving": {"gpu": {"count": 0}}}))
CPU_ENGINE = EngineInfo(key=KEY, uri=f"s3://engines/ml/minilm/{KEY}", model_name="minilm", precision="int8",
                        target="onnxruntime", platform="onnxruntime_onnx", runtime_version="onnxruntime 1.20.1",
                        size_bytes=23_000_000)


def test_cpu_model_builds_and_serves_on_the_cpu_pool_without_gpus():
    job_pod = m.builder_job(CPU_MODEL, KEY, CPU_SETTINGS)["spec"]["template"]["spec"]
    (builder,) = job_pod["containers"]
    assert builder["image"] == "reg/builder-cpu:1"
    assert builder["resources"] == {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"memory": "32Gi"}}
    assert job_pod["nodeSelector"] == {"pool": "cpu"}
    assert job_pod["tolerations"] == CPU_SETTINGS.cpu_tolerations
    assert m.build_spec(CPU_MODEL, CPU_SETTINGS).gpu_product is None

    pod = m.triton_deployment(CPU_MODEL, CPU_ENGINE, CPU_SETTINGS)["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    assert triton["image"] == "reg/triton-cpu:1"
    assert triton["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    assert (pod["nodeSelector"], pod["tolerations"]) == ({"pool": "cpu"}, CPU_SETTINGS.cpu_tolerations)
    stage_args = pod["initContainers"][0]["args"]
    assert stage_args[stage_args.index("--layout") + 1] == "python"


def test_cpu_placement_without_settings_leaves_the_fields_out():
    """An empty nodeSelector/tolerations is omitted: the API server would drop it and every
    reconcile would see a difference."""
    settings = OperatorSettings(builder_image="reg/builder:1")
    pod = m.builder_job(CPU_MODEL, KEY, settings)["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert pod["containers"][0]["image"] == "reg/builder:1"  # no CPU image configured: the one builder


def test_gpu_and_cpu_models_of_the_same_source_have_different_build_keys():
    from optimodel.api.key import build_key

    gpu = m.ModelRef("minilm", "ml", "uid-1", OptimizedModelSpec.model_validate(
        {**SPEC, "optimization": {"precision": "auto"}}))
    assert build_key(m.build_spec(gpu, CPU_SETTINGS)) != build_key(m.build_spec(CPU_MODEL, CPU_SETTINGS))


def _live(replicas: int, *owners: tuple[str, str]) -> dict:
    """A live Deployment whose spec.replicas is owned by (manager, operation) entries."""
    fields = {"f:spec": {"f:replicas": {}}}
    return {"metadata": {"managedFields": [{"manager": mgr, "operation": op, "fieldsV1": fields}
                                           for mgr, op in owners]},
            "spec": {"replicas": replicas}}


@pytest.mark.parametrize("autoscaling,live,expected", [
    (False, None, 3),  # no autoscaler: the spec's replicas, always
    (False, _live(7, ("kube-controller-manager", "Update")), 3),
    (True, None, None),  # new Deployment: seeded by initial_replicas under another manager
    (True, _live(5, ("kube-controller-manager", "Update")), None),  # the autoscaler owns it
    (True, _live(4, ("optimodel-operator", "Apply")), 4),  # just switched on: keep, don't delete
    (True, _live(4, ("optimodel-operator", "Update")), None),  # an Update entry is not our apply
], ids=["off-new", "off-scaled", "on-new", "on-autoscaler-owns", "on-we-own", "on-update-entry"])
def test_replicas_we_apply_never_fight_the_autoscaler(autoscaling, live, expected):
    spec = {**SPEC, "serving": {"replicas": 3}, "autoscaling": {"enabled": autoscaling, "minReplicas": 2}}
    ref = m.ModelRef("minilm", "ml", "uid-1", OptimizedModelSpec.model_validate(spec))
    assert m.replicas_to_apply(ref, live) == expected
    deployment = m.triton_deployment(ref, ENGINE, SETTINGS, live)
    assert deployment["spec"].get("replicas") == expected


def test_initial_replicas_seed_min_replicas_under_a_separate_manager():
    assert m.INITIAL_REPLICAS_MANAGER != m.FIELD_MANAGER
    assert m.initial_replicas(MODEL)["spec"] == {"replicas": MODEL.spec.autoscaling.min_replicas}


def test_engine_record_round_trips_through_the_deployment():
    from optimodel.api.report import AccuracyResult, Benchmark, SpeedupCheck
    from optimodel.api.status import BenchmarkStatus

    check = SpeedupCheck(batch_size=8, baseline_throughput=100.0, engine_throughput=250.0,
                         ratios=[2.4, 2.5, 2.6], speedup=2.5)
    accuracy = AccuracyResult(metric="cosine", value=0.995, threshold=0.99, passed=True, samples=64,
                              per_output={"last_hidden_state": 0.995}, sample_set="report", source="synthetic")
    bench = BenchmarkStatus.of(Benchmark(speedup=2.5, speedup_check=check, accuracy=accuracy,
                                         report_uri=f"{ENGINE.uri}/report.json"))
    assert bench.speedup_check is check and bench.accuracy is accuracy  # the objects, not copies
    assert bench.speedup_text == "2.50x"
    deployment = m.triton_deployment(MODEL, ENGINE, SETTINGS, benchmark=bench)
    assert m.engine_from_deployment(deployment) == (ENGINE, bench)
    assert m.engine_from_deployment(None) == (None, None)
    broken = {"metadata": {"annotations": {m.ENGINE_ANNOTATION: "{not json"}}}
    assert m.engine_from_deployment(broken) == (None, None)


def test_engine_record_of_an_older_operator():
    """Before the shared report types, the record's benchmark flattened the throughputs and kept
    only the accuracy's metric and value: it reads, with what no longer exists left out."""
    from optimodel.api.status import BenchmarkStatus

    old = {"engine": ENGINE.to_wire(), "benchmark": {
        "baseline": {"throughput": 100.0, "batchSize": 8},
        "optimized": {"throughput": 250.0, "batchSize": 8, "runtime": "tensorrt"},
        "speedup": 2.5, "speedupText": "2.50x", "accuracy": {"metric": "cosine", "value": 0.995},
        "reportUri": f"{ENGINE.uri}/report.json"}}
    deployment = {"metadata": {"annotations": {m.ENGINE_ANNOTATION: json.dumps(old)}}}
    assert m.engine_from_deployment(deployment) == (
        ENGINE, BenchmarkStatus(speedup=2.5, report_uri=f"{ENGINE.uri}/report.json"))
    # An engine that does not read (here: no model name, platform...) is no record at all.
    partial = {"engine": {"key": KEY, "uri": ENGINE.uri}}
    assert m.engine_from_deployment({"metadata": {"annotations": {m.ENGINE_ANNOTATION: json.dumps(partial)}}}) == (
        None, None)


def test_retry_job_names_stay_valid_and_distinct():
    ref = m.ModelRef("x" * 63, "ml", "uid-1", OptimizedModelSpec.model_validate(SPEC))
    names = [m.job_name(ref, KEY, attempt) for attempt in range(12)]
    assert len(set(names)) == 12
    assert all(len(n) <= 63 and n[0].isalpha() for n in names)
    assert names[0] == f"{'x' * 46}-build-{KEY[:10]}"


def test_the_source_policy_reaches_the_builder_only_when_set():
    env = m.builder_job(MODEL, KEY, SETTINGS)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "OPTIMODEL_ALLOWED_SOURCE_PREFIXES" not in {e["name"] for e in env}
    strict = SETTINGS.model_copy(update={"allowed_source_prefixes": ["s3://models/", "hf://org/"]})
    env = m.builder_job(MODEL, KEY, strict)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "OPTIMODEL_ALLOWED_SOURCE_PREFIXES", "value": "s3://models/,hf://org/"} in env
