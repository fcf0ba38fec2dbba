"""The candidates' lifecycle: made from the recipe table, compiled, gated.

Each function takes the variants and what it needs, and returns the variants. A candidate-level
problem (a precision the runtime cannot run, a graph TensorRT cannot parse, a failed gate)
marks that one candidate FAIL or SKIPPED, with the reason, and the build goes on; only "none is
left" is a build-level ``BuildError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optimodel.api.report import AccuracyResult, Candidate
from optimodel.builder import compress, recipes, samples, verify
from optimodel.builder.errors import BuildError
from optimodel.builder.loader import LoadedModel
from optimodel.builder.machine import Machine
from optimodel.builder.runners import OrtRunner, Runner
from optimodel.builder.steps import Skip

log = logging.getLogger("optimodel.builder")


@dataclass
class Variant:
    """One candidate in flight: its report entry plus the files and runner behind it."""

    candidate: Candidate
    graph: Path | None = None  # the candidate's ONNX graph
    artifact: Path | None = None  # what ships: the same ONNX graph, or a TensorRT plan
    runner: Runner | None = None

    @property
    def ok(self) -> bool:
        return self.candidate.status == "OK"


def _fail(variant: Variant, reason: str) -> None:
    variant.candidate.status = "FAIL"
    variant.candidate.reason = reason[:500]
    variant.runner = None
    log.warning("candidate %s: FAIL (%s)", variant.candidate.name, reason[:300])


def _skip(variant: Variant, reason: str) -> None:
    variant.candidate.status = "SKIPPED"
    variant.candidate.reason = reason
    log.info("candidate %s: SKIPPED (%s)", variant.candidate.name, reason)


def describe(variants: list[Variant]) -> str:
    return ", ".join(f"{v.candidate.name}={v.candidate.status}" for v in variants)


def conditions(machine: Machine, precision: str, has_calibration: bool) -> recipes.Conditions:
    gpu = machine.gpu() if machine.target == "tensorrt" else None
    return recipes.Conditions(target=machine.target, auto=precision == "auto", on_cpu=not machine.on_gpu,
                              has_calibration=has_calibration,
                              compute_capability=float(gpu.compute_capability) if gpu else None)


def make(model: LoadedModel, graph: Path, calibration: samples.Feeds | None, machine: Machine, precision: str,
         out: Path) -> list[Variant]:
    """One variant per row of ``recipes.plan``: made, skipped (with why) or failed (with why)."""
    out.mkdir(parents=True, exist_ok=True)
    base, base_note = graph, None
    if machine.target == "onnxruntime" and model.transformer:
        base, stats = compress.fuse_transformer(graph, out / "fused-fp32.onnx", model.transformer,
                                                use_gpu=machine.on_gpu)
        base_note = ("transformer fusion: " + ", ".join(f"{k} x{v}" for k, v in sorted(stats.items()))
                     if stats else "transformer fusion found nothing to fuse")
    inputs = recipes.Inputs(graph=graph, base=base, calibration=calibration, threads=machine.threads,
                            base_note=base_note)
    cond = conditions(machine, precision, calibration is not None)
    variants = []
    for recipe in recipes.plan(machine.target, precision):
        variant = Variant(Candidate(name=recipe.name, precision=recipe.precision, target=machine.target,
                                    status="OK"))
        variants.append(variant)
        try:
            why_not = recipe.skip_reason(cond)
            if why_not:
                raise Skip(why_not)
            variant.graph, variant.candidate.reason = recipe.make(inputs, out / f"{recipe.name}.onnx")
        except Skip as skip:
            _skip(variant, str(skip))
        except BuildError as exc:
            if exc.reason == "CalibrationFailed" and not cond.auto:
                raise
            _fail(variant, exc.message)
        except Exception as exc:
            _fail(variant, f"{type(exc).__name__}: {exc}")
    return variants


def compile_all(variants: list[Variant], machine: Machine, precision: str,
                compile_tensorrt: Callable[[Variant], None]) -> list[Variant]:
    """An ONNX Runtime session per graph, or a TensorRT engine (``compile_tensorrt``)."""
    for variant in variants:
        if not variant.ok:
            continue
        assert variant.graph is not None
        try:
            if machine.target == "tensorrt":
                compile_tensorrt(variant)
            else:
                variant.runner = OrtRunner(variant.graph, machine.threads, machine.providers(), machine.label())
                variant.artifact = variant.graph
            variant.candidate.size_bytes = variant.artifact.stat().st_size
        except BuildError as exc:
            _fail(variant, str(exc))
        except Exception as exc:
            _fail(variant, f"{type(exc).__name__}: {str(exc)[:400]}")
    if not any(v.ok for v in variants):
        detail = "; ".join(f"{v.candidate.name}: {v.candidate.status} ({v.candidate.reason})"
                           for v in variants) or "no candidate applies"
        reason = "OutOfMemory" if "out of memory" in detail.lower() else "CompileFailed"
        raise BuildError(reason, f"no candidate could be built for precision {precision} on "
                         f"{machine.target}: {detail}")
    return variants


def gate_all(variants: list[Variant], measure: Callable[[Runner], AccuracyResult], metric: str, threshold: float,
             held: samples.SampleSet) -> list[Variant]:
    """Each compiled candidate against the reference on the selection set (``measure``)."""
    for variant in variants:
        if not variant.ok:
            continue
        try:
            result = measure(variant.runner)
        except Exception as exc:
            _fail(variant, f"fails on the selection samples: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        variant.candidate.accuracy = result
        log.info("candidate %s: %s %.6f (threshold %s) -> %s", variant.candidate.name, result.metric,
                 result.value, result.threshold, "pass" if result.passed else "FAIL")
    verified = [v for v in variants if v.candidate.accuracy is not None]
    if not any(v.candidate.accuracy.passed for v in verified):
        detail = ", ".join(f"{v.candidate.name} {v.candidate.accuracy.value:.6g}" for v in verified)
        raise BuildError("AccuracyGateFailed", f"no candidate passes the accuracy gate "
                         f"({metric} {'<=' if metric in verify.LOWER_IS_BETTER else '>='} "
                         f"{threshold} on {held.count} selection samples, {held.source}): {detail}")
    return variants


def describe_accuracy(variants: list[Variant]) -> str:
    return ", ".join(f"{v.candidate.name} {v.candidate.accuracy.value:.4f}"
                     f"{'' if v.candidate.accuracy.passed else ' (fail)'}"
                     for v in variants if v.candidate.accuracy is not None)
