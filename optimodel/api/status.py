"""The ``OptimizedModel`` status: what the operator observed, written only by the operator."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from optimodel.api.base import ObservedModel

Phase = Literal["Pending", "Building", "Deploying", "Ready", "Failed"]
ConditionType = Literal["Built", "Deployed", "Ready", "Autoscaling", "Synced"]


class Condition(ObservedModel):
    """A standard Kubernetes condition (metav1.Condition shape)."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    last_transition_time: str = Field(description="RFC 3339 time the status last changed.")
    observed_generation: int | None = None


class EngineStatus(ObservedModel):
    """The engine that is (or is about to be) served."""

    key: str = Field(description="Build key: sha256 of source, optimization, GPU and builder version.")
    uri: str = Field(description="Artifact location of the Triton model repository.")
    model_name: str | None = None
    precision: str | None = None
    target: str | None = None
    platform: str | None = None
    gpu_product: str | None = None
    compute_capability: str | None = None
    runtime_version: str | None = None
    size_bytes: int | None = None


class Throughput(ObservedModel):
    runtime: str | None = None
    throughput: float | None = Field(default=None, description="Samples per second.")
    batch_size: int | None = None


class AccuracyStatus(ObservedModel):
    metric: str
    value: float


class BenchmarkStatus(ObservedModel):
    """Measured by the builder in one run: the baseline and the selected engine."""

    baseline: Throughput | None = None
    optimized: Throughput | None = None
    speedup: float | None = None
    speedup_text: str | None = Field(default=None, description="e.g. 2.7x, for printer columns.")
    accuracy: AccuracyStatus | None = None
    report_uri: str | None = None


class BuildStatus(ObservedModel):
    """The build in flight (or the last one that failed)."""

    key: str
    job: str
    state: Literal["Running", "Succeeded", "Failed"]
    attempt: int = Field(default=0, description="0 for the first Job of this key; retries count up.")
    reason: str | None = None
    message: str | None = None


class OptimizedModelStatus(ObservedModel):
    """Observed state, reconciled level-triggered from the spec and the child objects."""

    phase: Phase = "Pending"
    observed_generation: int | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    engine: EngineStatus | None = None
    build: BuildStatus | None = None
    benchmark: BenchmarkStatus | None = None
    precision: str | None = Field(default=None, description="Precision of the served engine.")
    replicas: int | None = None
    ready_replicas: int | None = None
    autoscaler: str | None = Field(default=None, description="hpa, keda, or none.")
    endpoint: str | None = Field(default=None, description="In-cluster HTTP endpoint of Triton.")
    message: str | None = None
