"""Typed operator settings, read once from ``OPTIMODEL_*`` environment variables.

The Helm chart sets these from ``values.yaml``; every field documents its variable. Settings
are operator-wide policy (images, where artifacts live, how long builds may take); per-model
choices belong in the ``OptimizedModel`` spec.
"""

from __future__ import annotations

import json
import os
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from optimodel.triton.layout import Layout

ENV_PREFIX = "OPTIMODEL_"

DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


class OperatorSettings(BaseModel):
    """Operator-wide configuration. Environment variable = OPTIMODEL_ + field name upper-cased."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces to watch (comma-separated); empty = the whole cluster.",
    )
    allowed_source_prefixes: list[str] = Field(
        default_factory=list,
        description="URI prefixes model and calibration sources must start with (comma-separated; "
        "empty = any). Passed to every build Job, whose builder refuses other sources; the chart's "
        "ValidatingAdmissionPolicy refuses them at apply time.",
    )
    builder_image: str = Field(
        default="ghcr.io/optimodel/optimodel-builder:0.1.0",
        description="Image of the builder Job (Dockerfile target `builder`).",
    )
    operator_image: str = Field(
        default="ghcr.io/optimodel/optimodel-operator:0.1.0",
        description="Image of the operator; also runs the repository-staging init container.",
    )
    triton_image: str = Field(
        default="nvcr.io/nvidia/tritonserver:25.01-py3",
        description="NVIDIA Triton Inference Server image serving the engines.",
    )
    triton_tensorrt_version: str | None = Field(
        default="10.8.0.43",
        description="TensorRT release in triton_image (the NGC 25.01 release notes list 10.8.0.43). "
        "A TensorRT engine built with another major.minor.patch is refused (TensorRTVersionMismatch) "
        "and the previous engine keeps serving; empty = no check.",
    )
    builder_cpu_image: str | None = Field(
        default=None,
        description="Image of build Jobs for models served on CPU (spec.serving.gpu.count 0), "
        "e.g. the Dockerfile target `builder-cpu`; unset = builder_image.",
    )
    triton_repository_layout: Layout = Field(
        default="native",
        description="Which repository variant of a build the Triton image serves: native "
        "(ONNX Runtime / TensorRT backends, NVIDIA's image) or python (Python backend running "
        "ONNX Runtime, for a Triton without the ONNX Runtime backend such as the local CPU image).",
    )
    image_pull_policy: str = Field(default="IfNotPresent")
    artifact_root: str = Field(
        default="pvc://optimodel-artifacts",
        description="Where builds write <root>/<namespace>/<name>/<build-key>/: pvc://claim[/path] "
        "(the claim must exist in each model namespace) or s3://bucket[/prefix].",
    )
    artifact_credentials_secret: str | None = Field(
        default=None,
        description="Secret in each model's namespace holding that namespace's artifact-store "
        "credential (AWS_ACCESS_KEY_ID, ... for s3:// roots), limited by the store's policy to "
        "<root>/<namespace>/ (`optimodel artifact-policy`). Builder and staging containers get its "
        "keys prefixed OPTIMODEL_ARTIFACT_; the operator never reads it.",
    )
    artifact_credentials_shared: bool = Field(
        default=False,
        description="Opt-in for single-tenant clusters: one artifact credential for every "
        "namespace. Off (the default), builder and staging containers get --artifact-scope "
        "<root>/<namespace>/ and refuse an s3:// credential that may list beyond it "
        "(CredentialsTooBroad).",
    )
    default_gpu_product: str = Field(
        default="NVIDIA-H100-80GB-HBM3",
        description="nvidia.com/gpu.product used when spec.serving.gpu.product is empty.",
    )
    gpu_tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [dict(t) for t in DEFAULT_GPU_TOLERATIONS],
        description="Tolerations (JSON list) added to builder and Triton pods for GPU node taints.",
    )
    cpu_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="nodeSelector (JSON object) of builder and Triton pods of models served on "
        "CPU (spec.serving.gpu.count 0).",
    )
    cpu_tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Tolerations (JSON list) of builder and Triton pods of models served on CPU.",
    )
    build_backoff_limit: int = Field(default=0, ge=0, le=10,
                                     description="Job backoffLimit: builds are deterministic, retry rarely helps.")
    build_max_attempts: int = Field(
        default=4, ge=1, le=20,
        description="Build Jobs per build key when builds fail for infrastructure reasons (OOM kill, "
        "eviction, preemption, lost node, deadline); model failures are never retried.")
    build_retry_base_seconds: float = Field(
        default=30, ge=0, description="Wait before the first infrastructure retry; doubles each attempt.")
    build_retry_max_seconds: float = Field(default=600, ge=0, description="Cap of the retry wait.")
    resync_seconds: float = Field(
        default=300, gt=0, description="Every model is reconciled at least this often, so drift in "
        "its children is repaired even without an event.")
    workers: int = Field(default=8, ge=1, le=64, description="Models reconciled in parallel.")
    retry_base_seconds: float = Field(
        default=1, gt=0, description="Backoff after a failed reconcile; doubles per failure.")
    retry_max_seconds: float = Field(default=120, gt=0, description="Cap of the reconcile backoff.")
    leader_election: bool = Field(
        default=False, description="Run as one of several replicas: only the holder of a Lease "
        "acts (the chart turns this on).")
    leader_election_namespace: str | None = Field(
        default=None, description="Namespace of the Lease (the chart sets the release namespace).")
    leader_election_lease_name: str = Field(default="optimodel-operator")
    lease_duration_seconds: float = Field(
        default=15, gt=0, description="A leader that has not renewed for this long is replaced.")
    renew_deadline_seconds: float = Field(
        default=10, gt=0, description="A leader that cannot renew within this long stops acting.")
    lease_retry_seconds: float = Field(default=2, gt=0, description="How often the Lease is renewed or tried.")
    build_active_deadline_seconds: int = Field(default=3600, ge=60,
                                               description="Kill a build that runs longer than this.")
    build_ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete finished build Jobs after this long (unset = keep).",
    )
    builder_cpu: str = Field(default="8", description="CPU request of the builder container.")
    builder_memory: str = Field(default="32Gi", description="Memory request/limit of the builder.")
    builder_service_account: str = Field(
        default="default", description="ServiceAccount of builder pods (no API token is mounted).",
    )
    triton_startup_seconds: int = Field(
        default=600, ge=30, description="Startup-probe budget for Triton to load an engine.",
    )
    triton_cpu: str = Field(default="2")
    triton_memory: str = Field(default="8Gi")
    prometheus_url: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090",
        description="Prometheus that KEDA's trigger queries for queue depth.",
    )
    pvc_mount_root: str = Field(default="/mnt/pvc", description="Where pvc:// claims are mounted in pods.")
    run_as_user: int = Field(default=1000, ge=1, description="UID of every container we create.")

    @field_validator("namespaces", "allowed_source_prefixes", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("gpu_tolerations", "cpu_tolerations", "cpu_node_selector", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "OperatorSettings":
        """Build settings from the environment; unknown OPTIMODEL_* variables are ignored. An empty
        variable means the default, except for an optional setting that is on by default
        (``triton_tensorrt_version``): there, empty turns it off."""
        env = os.environ if environ is None else environ
        values = {}
        for name, field in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
            elif raw == "" and field.default is not None and type(None) in get_args(field.annotation):
                values[name] = None  # set but empty turns off a setting that is on by default
        return cls(**values)

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for docs and the chart's values comments."""
        rows = []
        for name, field in cls.model_fields.items():
            default = field.default_factory() if field.default_factory else field.default
            rows.append((ENV_PREFIX + name.upper(), json.dumps(default), field.description or ""))
        return rows
