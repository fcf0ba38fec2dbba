"""The builder's report: the contract between ``optimodel build`` and the operator.

``report.json`` next to the Triton model repository holds the whole ``BuildReport``; the
container's termination message holds a ``BuildSummary`` (<= 4 KiB) that the operator reads from
the Job's pod without touching artifact storage.

One vocabulary: the summary carries the report's own objects (``EngineInfo``, and in
``Benchmark`` the ``SpeedupCheck`` and the published ``AccuracyResult``), and the model's status
and the Triton Deployment's engine record hold the same types (``optimodel.api.status``), so no
one copies them field by field. An engine's ``uri`` is always the build output root.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from optimodel.api.base import ObservedModel

TERMINATION_MESSAGE_LIMIT = 4096

FailureReason = Literal[
    "InvalidSpec",
    "ModelNotFound",
    "ModelLoadFailed",
    "UnsupportedModel",
    "ExportFailed",
    "CalibrationFailed",
    "CompileFailed",
    "AccuracyGateFailed",
    "OutOfMemory",
    "OutputWriteFailed",
    "AccessDenied",
    "BuildKeyMismatch",
    "CredentialsTooBroad",
    "Terminated",
    "InternalError",
]

EXIT_CODES: dict[str, int] = {
    "InvalidSpec": 2,
    "ModelNotFound": 10,
    "ModelLoadFailed": 11,
    "UnsupportedModel": 12,
    "ExportFailed": 13,
    "CalibrationFailed": 14,
    "CompileFailed": 15,
    "AccuracyGateFailed": 16,
    "OutOfMemory": 17,
    "OutputWriteFailed": 18,
    "AccessDenied": 19,
    "BuildKeyMismatch": 20,
    "CredentialsTooBroad": 21,
    "Terminated": 143,
    "InternalError": 1,
}
"""Documented process exit codes of ``optimodel build``, one per failure reason (0 = success)."""


class LatencyStats(ObservedModel):
    """Latency and throughput at one batch size."""

    batch_size: int
    sequence_length: int | None = Field(default=None, description=(
        "Tokens per sample, for text models (None: the model's fixed input shape)."))
    p50_ms: float
    p99_ms: float
    throughput: float = Field(description="Samples (sequences, images) per second.")
    repeats: int = Field(description="Timed windows it took for three to agree within 10%.")


class PerformanceProfile(ObservedModel):
    """Speed of one runnable (baseline or candidate) over the batch sweep."""

    runtime: str = Field(description="e.g. pytorch-eager-fp32, onnxruntime-cpu, tensorrt-10.8")
    device: str
    sweep: list[LatencyStats]
    headline: LatencyStats = Field(description="The batch size the summary speedup is quoted at.")
    shapes: list[LatencyStats] = Field(default_factory=list, description=(
        "The headline batch at other sequence lengths (text models whose sequence axis is dynamic): "
        "how the engine does away from the shape it was tuned for. Empty for fixed shapes."))


class AccuracyResult(ObservedModel):
    """One engine's agreement with the FP32 reference on one sample set (``sample_set``)."""

    metric: str
    value: float = Field(description="The gated value: the worst over every served output.")
    threshold: float
    passed: bool
    samples: int
    per_output: dict[str, float] = Field(default_factory=dict, description="Each served output's value.")
    sample_set: Literal["selection", "report"] | None = Field(
        default=None, description="selection: the set candidates were gated and chosen on; report: the "
        "separate set the selected engine was measured on once (the published accuracy).")
    source: str | None = Field(default=None, description="Where the samples came from: uri (your data), "
                               "builtin-sentences or synthetic.")


class Candidate(ObservedModel):
    """One compressed/compiled variant the builder tried."""

    name: str = Field(description="e.g. onnxruntime-int8-dynamic, tensorrt-fp16")
    precision: str
    target: str
    status: Literal["OK", "FAIL", "SKIPPED"]
    reason: str | None = None
    accuracy: AccuracyResult | None = None
    performance: PerformanceProfile | None = None
    size_bytes: int | None = None
    speedup: float | None = Field(default=None, description="Headline throughput / baseline's.")


class EngineInfo(ObservedModel):
    """The selected engine, and what it can only run on.

    One type for the report, the build summary, the model's ``status.engine`` and the Triton
    Deployment's engine record.
    """

    key: str = Field(description="Build key: sha256 of source, optimization, GPU and builder version.")
    uri: str = Field(description=(
        "The build output root: the folder holding repository/, repository-python/ and report.json "
        "(optimodel.triton.layout), which Triton's stager reads (stage-repository --from)."))
    model_name: str
    precision: str
    target: str
    platform: str = Field(description="Triton backend/platform of the served model.")
    gpu_product: str | None = None
    compute_capability: str | None = None
    runtime_version: str
    size_bytes: int


class StepTiming(ObservedModel):
    step: str
    status: Literal["OK", "FAIL", "SKIPPED"]
    seconds: float
    detail: str | None = None


class SpeedupCheck(ObservedModel):
    """The selected engine re-timed against the baseline in the same time window.

    Windows alternate baseline, engine, engine, baseline, ... so that load which drifts during the
    check weighs on both sides alike; each pair gives one ratio, and the speedup is their median.
    The sweep's per-candidate speedups were timed minutes apart and only rank the candidates.
    """

    batch_size: int
    baseline_throughput: float = Field(description="Median over the baseline's windows.")
    engine_throughput: float = Field(description="Median over the engine's windows.")
    ratios: list[float] = Field(description="Engine / baseline throughput of each pair of windows.")
    speedup: float = Field(description="Median of the ratios.")


class BuildReport(ObservedModel):
    """Everything a build did and measured; written as ``report.json``."""

    api_version: Literal["optimodel.dev/v1alpha1"] = "optimodel.dev/v1alpha1"
    kind: Literal["BuildReport"] = "BuildReport"
    builder_version: str
    build_key: str
    succeeded: bool
    reason: str | None = None
    message: str | None = None
    engine: EngineInfo | None = None
    baseline: PerformanceProfile | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    selected: str | None = None
    speedup: float | None = Field(default=None, description="speedupCheck.speedup: the selected engine "
                                  "over the baseline, timed in the same window.")
    speedup_check: SpeedupCheck | None = None
    accuracy: AccuracyResult | None = None
    calibration_source: Literal["uri", "synthetic", "none"] = "none"
    versions: dict[str, str] = Field(default_factory=dict)
    steps: list[StepTiming] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class Benchmark(ObservedModel):
    """What a build published about its selected engine: the same-window speedup check and the
    accuracy on the report set, exactly as in ``BuildReport`` (the same objects, the same names).

    One type for the build summary, the model's ``status.benchmark`` and the Triton Deployment's
    engine record.
    """

    speedup: float | None = Field(default=None, description="speedupCheck.speedup: the selected engine "
                                  "over the baseline, timed in the same window.")
    speedup_check: SpeedupCheck | None = None
    accuracy: AccuracyResult | None = Field(default=None, description="The published accuracy: the "
                                            "selected engine on the report set.")
    report_uri: str | None = Field(default=None, description="Where the whole BuildReport is (report.json).")

    @classmethod
    def from_report(cls, report: BuildReport, report_uri: str | None = None) -> "Benchmark | None":
        """The report's published measurements (None when it has none, e.g. a failed build)."""
        if report.speedup is None and report.speedup_check is None and report.accuracy is None:
            return None
        return cls(speedup=report.speedup, speedup_check=report.speedup_check, accuracy=report.accuracy,
                   report_uri=report_uri)


class BuildSummary(ObservedModel):
    """The termination-message digest of a ``BuildReport`` (must fit in 4 KiB)."""

    succeeded: bool
    build_key: str
    reason: str | None = None
    message: str | None = None
    engine: EngineInfo | None = None
    benchmark: Benchmark | None = None

    @classmethod
    def from_report(cls, report: BuildReport, report_uri: str | None = None) -> "BuildSummary":
        return cls(succeeded=report.succeeded, build_key=report.build_key, reason=report.reason,
                   message=report.message, engine=report.engine,
                   benchmark=Benchmark.from_report(report, report_uri))

    def to_termination_message(self) -> str:
        """JSON within the kubelet's 4 KiB limit, never cut mid-JSON: what gives way is the
        message (cut short), then the accuracy's per-output values (report.json has them)."""
        data = self.to_wire()
        text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT and data.get("message"):
            overflow = len(text.encode()) - TERMINATION_MESSAGE_LIMIT + 16
            data["message"] = data["message"][: max(0, len(data["message"]) - overflow)] + "..."
            text = json.dumps(data, separators=(",", ":"))
        accuracy = (data.get("benchmark") or {}).get("accuracy") or {}
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT and accuracy.get("perOutput"):
            del accuracy["perOutput"]
            text = json.dumps(data, separators=(",", ":"))
        return text
