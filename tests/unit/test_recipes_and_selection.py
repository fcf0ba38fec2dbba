"""The candidate table and the selection rule, as tables: no model is built.

``recipes.plan`` + ``Recipe.skip_reason`` decide what a build tries on which machine;
``selection.select`` decides which measured candidate ships.
"""

from __future__ import annotations

import dataclasses

import pytest

from optimodel.api.report import AccuracyResult, Candidate, LatencyStats, PerformanceProfile
from optimodel.builder import recipes, selection
from optimodel.builder.errors import BuildError

CPU = recipes.Conditions(target="onnxruntime", auto=True, on_cpu=True, has_calibration=False)
CPU_CALIBRATED = recipes.Conditions(target="onnxruntime", auto=True, on_cpu=True, has_calibration=True)
ORT_GPU = recipes.Conditions(target="onnxruntime", auto=True, on_cpu=False, has_calibration=True,
                             compute_capability=8.9)
H100 = recipes.Conditions(target="tensorrt", auto=True, on_cpu=False, has_calibration=True,
                          compute_capability=9.0)
T4 = recipes.Conditions(target="tensorrt", auto=True, on_cpu=False, has_calibration=False,
                        compute_capability=7.5)


def tried(cond: recipes.Conditions, precision: str = "auto") -> list[str]:
    """The recipes a build would make (not skip) under ``cond``, for the spec's ``precision``."""
    cond = dataclasses.replace(cond, auto=precision == "auto")
    return [r.name for r in recipes.plan(cond.target, precision) if r.skip_reason(cond) is None]


@pytest.mark.parametrize(("cond", "precision", "expected"), [
    # CPU, auto, no calibration: FP32 and the two calibration-free dynamic INT8 recipes.
    (CPU, "auto", ["onnxruntime-fp32", "onnxruntime-int8-dynamic", "onnxruntime-int8-per-token"]),
    (CPU_CALIBRATED, "auto", ["onnxruntime-fp32", "onnxruntime-int8-dynamic", "onnxruntime-int8-per-token",
                              "onnxruntime-int8-smoothquant", "onnxruntime-int8-qdq"]),
    # Asked for by name, FP16 is built even where it will not pay off.
    (CPU, "fp16", ["onnxruntime-fp16"]),
    (CPU, "fp8", []),
    # ONNX Runtime on a GPU: no dynamic INT8 (CPU-only kernels), static Q/DQ stays.
    (ORT_GPU, "auto", ["onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8-qdq"]),
    (H100, "auto", ["tensorrt-fp32", "tensorrt-fp16", "tensorrt-bf16", "tensorrt-int8-qdq", "tensorrt-fp8-qdq"]),
    (H100, "int8", ["tensorrt-int8-qdq"]),
    # Turing: no BF16, no FP8; no calibration: no Q/DQ.
    (T4, "auto", ["tensorrt-fp32", "tensorrt-fp16"]),
])
def test_which_recipes_a_build_tries(cond, precision, expected):
    assert tried(cond, precision) == expected


def test_every_skip_says_why_and_names_the_way_out():
    reasons = {r.name: r.skip_reason(T4) for r in recipes.plan("tensorrt", "auto")}
    assert "8.0+" in reasons["tensorrt-bf16"] and "7.5" in reasons["tensorrt-bf16"]
    assert "8.9+" in reasons["tensorrt-fp8-qdq"]
    assert "calibration.uri" in reasons["tensorrt-int8-qdq"]
    fp16 = next(r for r in recipes.RECIPES if r.name == "onnxruntime-fp16").skip_reason(CPU)
    assert "ask for precision fp16" in fp16


def test_table_names_are_unique_and_prefixed_by_their_target():
    names = [r.name for r in recipes.RECIPES]
    assert len(names) == len(set(names))
    assert all(r.name.startswith(r.target + "-") and r.precision in r.name for r in recipes.RECIPES)


def candidate(name, throughput=None, accuracy=None, passed=True, status="OK") -> Candidate:
    perf = None
    if throughput is not None:
        stats = LatencyStats(batch_size=8, p50_ms=1.0, p99_ms=1.0, throughput=throughput, repeats=3)
        perf = PerformanceProfile(runtime="x", device="cpu", sweep=[stats], headline=stats)
    acc = None if accuracy is None else AccuracyResult(metric="cosine", value=accuracy, threshold=0.99,
                                                       passed=passed, samples=8)
    return Candidate(name=name, precision="x", target="onnxruntime", status=status, accuracy=acc,
                     performance=perf)


@pytest.mark.parametrize(("candidates", "chosen", "passed_over"), [
    # The fastest passing candidate wins outright when it is more than 5% ahead.
    ([candidate("fp32", 100, 1.0), candidate("int8", 300, 0.995)], "int8", ()),
    # Within 5% of the fastest: a tie on speed, accuracy decides.
    ([candidate("fp32", 100, 1.0), candidate("a", 300, 0.991), candidate("b", 290, 0.998)], "b", ()),
    # Just outside the 5% band: speed decides.
    ([candidate("a", 300, 0.991), candidate("b", 280, 0.998)], "a", ()),
    # A faster candidate that missed the gate is passed over, and named.
    ([candidate("fp32", 100, 1.0), candidate("int8", 460, 0.989, passed=False), candidate("mixed", 330, 0.995)],
     "mixed", ("int8",)),
    # Candidates that were skipped, failed or never timed do not count.
    ([candidate("fp32", 100, 1.0), candidate("bf16", status="SKIPPED"), candidate("x", None, 0.999)], "fp32", ()),
    # An exact tie on speed and accuracy: the earlier row of the table (the simpler recipe).
    ([candidate("first", 200, 0.995), candidate("second", 200, 0.995)], "first", ()),
])
def test_selection(candidates, chosen, passed_over):
    got = selection.select(candidates, "cosine")
    assert got.chosen.name == chosen
    assert got.faster_but_failed == passed_over
    assert (got.warning is None) == (not passed_over)


def test_ranking_applies_the_rule_again_to_the_rest():
    # What report-accuracy falls back through when the chosen engine misses on the report set.
    got = selection.select([candidate("fp32", 100, 1.0), candidate("dyn", 460, 0.98, passed=False),
                            candidate("mixed", 330, 0.995), candidate("smooth", 320, 0.997),
                            candidate("qdq", 200, 0.993)], "cosine")
    assert [c.name for c in got.ranked] == ["smooth", "mixed", "qdq", "fp32"]


def test_lower_is_better_metrics_pick_the_smallest_error():
    a = candidate("a", 300, 0.02)
    b = candidate("b", 295, 0.001)
    assert selection.select([a, b], "max-abs").chosen.name == "b"


def test_nothing_passing_is_an_accuracy_gate_failure():
    with pytest.raises(BuildError) as err:
        selection.select([candidate("int8", 400, 0.9, passed=False)], "cosine")
    assert err.value.reason == "AccuracyGateFailed"


def report_result(value: float, threshold: float = 0.99) -> AccuracyResult:
    return AccuracyResult(metric="cosine", value=value, threshold=threshold, passed=value >= threshold,
                          samples=32, sample_set="report")


def test_confirm_measures_only_the_chosen_engine_when_it_holds():
    ranked = [candidate("mixed", 330, 0.995), candidate("fp32", 100, 1.0)]
    measured = []
    got = selection.confirm(ranked, lambda c: measured.append(c.name) or report_result(0.993), 0.99)
    assert (got.chosen.name, got.accuracy.value, got.warning, measured) == ("mixed", 0.993, None, ["mixed"])


def test_confirm_falls_back_and_says_so_when_the_chosen_engine_was_lucky():
    ranked = [candidate("mixed", 330, 0.9905), candidate("fp32", 100, 1.0)]
    on_report = {"mixed": 0.9887, "fp32": 0.99999}
    got = selection.confirm(ranked, lambda c: report_result(on_report[c.name]), 0.99)
    assert got.chosen.name == "fp32" and got.accuracy.value == 0.99999
    assert "mixed passed the gate on the selection set (cosine 0.9905" in got.warning
    assert "report set (0.9887" in got.warning and "selected fp32 instead" in got.warning


def test_confirm_fails_the_build_when_nothing_holds():
    with pytest.raises(BuildError) as err:
        selection.confirm([candidate("int8", 300, 0.991)], lambda c: report_result(0.97), 0.99)
    assert err.value.reason == "AccuracyGateFailed"
    assert "int8 passed the gate on the selection set" in err.value.message and "0.97" in err.value.message
