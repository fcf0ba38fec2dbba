"""The ``OptimizedModel`` status: what the operator observed, written only by the operator.

The engine and benchmark are the build report's shared types (``optimodel.api.report``), the
objects the builder's summary carried, embedded as kubebuilder status types embed shared ones.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, field_validator, model_validator

from optimodel.api.base import ObservedModel
from optimodel.api.report import Benchmark, EngineInfo

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


class BenchmarkStatus(Benchmark):
    """What the build published (the summary's Benchmark, as is), plus the speedup as text."""

    speedup_text: str | None = Field(default=None, description=(
        "speedup as text, e.g. 2.70x, for the Speedup printer column; derived from speedup."))

    @field_validator("accuracy", mode="wrap")
    @classmethod
    def _accuracy_of_an_older_shape(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Operators before the shared report types recorded accuracy as ``{metric, value}`` only:
        such a record (an old status, an old Deployment record) reads with no accuracy rather than
        not at all; the next build writes the whole ``AccuracyResult``."""
        try:
            return handler(value)
        except ValidationError:
            return None

    @model_validator(mode="after")
    def _derive_speedup_text(self) -> "BenchmarkStatus":
        self.speedup_text = f"{self.speedup:.2f}x" if self.speedup else None
        return self

    @classmethod
    def of(cls, benchmark: Benchmark) -> "BenchmarkStatus":
        """``benchmark`` in status: its own field values (the same objects), not copies."""
        return cls(**dict(benchmark))


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
    engine: EngineInfo | None = Field(default=None, description=(
        "The engine that is (or is about to be) served: the builder's EngineInfo, with uri the "
        "build output root the operator chose for it."))
    build: BuildStatus | None = None
    benchmark: BenchmarkStatus | None = None
    precision: str | None = Field(default=None, description="Precision of the served engine.")
    replicas: int | None = None
    ready_replicas: int | None = None
    autoscaler: str | None = Field(default=None, description="hpa, keda, or none.")
    endpoint: str | None = Field(default=None, description="In-cluster HTTP endpoint of Triton.")
    message: str | None = None
