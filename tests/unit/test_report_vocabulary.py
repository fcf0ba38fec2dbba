"""One report vocabulary: the summary carries the report's objects, status holds the summary's."""

from __future__ import annotations

import json

from optimodel.api.report import (AccuracyResult, Benchmark, BuildReport, BuildSummary, EngineInfo,
                                  SpeedupCheck, TERMINATION_MESSAGE_LIMIT)
from optimodel.api.status import BenchmarkStatus, OptimizedModelStatus
from optimodel.operator import reconcile

KEY = "ab" * 32
OUTPUT = f"pvc://artifacts/builds/ml/minilm/{KEY}"
ENGINE = EngineInfo(key=KEY, uri=OUTPUT, model_name="minilm", precision="int8", target="onnxruntime",
                    platform="onnxruntime_onnx", runtime_version="onnxruntime 1.20.1", size_bytes=23_000_000)
CHECK = SpeedupCheck(batch_size=8, baseline_throughput=101.25, engine_throughput=273.5,
                     ratios=[2.69, 2.7, 2.71, 2.7, 2.68, 2.72], speedup=2.7)
ACCURACY = AccuracyResult(metric="cosine", value=0.9951, threshold=0.99, passed=True, samples=64,
                          per_output={"last_hidden_state": 0.9951}, sample_set="report",
                          source="builtin-sentences")


def report(**update) -> BuildReport:
    fields = dict(builder_version="0.1.0", build_key=KEY, succeeded=True, engine=ENGINE,
                  selected="onnxruntime-int8-dynamic", speedup=CHECK.speedup, speedup_check=CHECK, accuracy=ACCURACY)
    return BuildReport(**{**fields, **update})


def test_summary_carries_the_reports_objects():
    summary = BuildSummary.from_report(report(), report_uri=f"{OUTPUT}/report.json")
    assert summary.engine is ENGINE
    assert summary.benchmark.speedup_check is CHECK and summary.benchmark.accuracy is ACCURACY
    assert summary.benchmark.speedup == CHECK.speedup
    assert summary.benchmark.report_uri == f"{summary.engine.uri}/report.json"
    # ... and reads back from the termination message as the same values.
    assert BuildSummary.model_validate_json(summary.to_termination_message()) == summary


def test_a_failed_build_has_no_benchmark():
    failed = BuildReport(builder_version="0", build_key=KEY, succeeded=False, reason="ExportFailed", message="x")
    assert BuildSummary.from_report(failed).benchmark is None


def test_success_summary_fits_and_gives_up_per_output_values_first():
    summary = BuildSummary.from_report(report(), report_uri=f"{OUTPUT}/report.json")
    text = summary.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert json.loads(text)["benchmark"]["accuracy"]["perOutput"] == ACCURACY.per_output
    many = ACCURACY.model_copy(update={"per_output": {f"output_{i:03d}": 0.99 for i in range(300)}})
    text = BuildSummary.from_report(report(accuracy=many)).to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    accuracy = json.loads(text)["benchmark"]["accuracy"]
    assert "perOutput" not in accuracy and accuracy["value"] == many.value


def test_status_holds_the_summarys_objects():
    summary = BuildSummary.from_report(report(), report_uri=f"{OUTPUT}/report.json")
    bench = BenchmarkStatus.of(summary.benchmark)
    assert bench.speedup_check is summary.benchmark.speedup_check and bench.accuracy is summary.benchmark.accuracy
    assert bench.speedup_text == "2.70x"
    wire = bench.to_wire()
    assert {k: v for k, v in wire.items() if k != "speedupText"} == summary.benchmark.to_wire()
    engine = reconcile._served_engine(summary.engine, summary.build_key, OUTPUT)
    assert engine == summary.engine  # the builder's output root is the operator's


def test_the_operator_serves_from_its_own_output_root():
    """Whatever a builder says, the stager reads where the operator put the build."""
    elsewhere = ENGINE.model_copy(update={"uri": "s3://someone-else/minilm"})
    engine = reconcile._served_engine(elsewhere, KEY, OUTPUT)
    assert engine.uri == OUTPUT and engine.model_copy(update={"uri": elsewhere.uri}) == elsewhere


def test_a_status_of_an_older_operator_reads():
    """Status before the shared types: throughputs flattened, accuracy only metric and value.
    It reads (engine, conditions, speedup kept), so an upgrade neither rebuilds it nor re-announces
    conditions; what the new shape has and the old lacks stays empty until the next build."""
    old = {
        "phase": "Ready",
        "conditions": [{"type": "Built", "status": "True", "reason": "EngineBuilt", "message": "built",
                        "lastTransitionTime": "2025-01-01T00:00:00Z"}],
        "engine": ENGINE.to_wire(),
        "benchmark": {"baseline": {"throughput": 101.25, "batchSize": 8},
                      "optimized": {"throughput": 273.5, "batchSize": 8, "runtime": "onnxruntime"},
                      "speedup": 2.7, "speedupText": "2.70x", "accuracy": {"metric": "cosine", "value": 0.9951},
                      "reportUri": f"{OUTPUT}/report.json"},
        "precision": "int8",
    }
    status = reconcile.read_status({"metadata": {"namespace": "ml", "name": "minilm"}, "status": old})
    assert status.engine == ENGINE and status.conditions[0].reason == "EngineBuilt"
    assert status.benchmark == BenchmarkStatus(speedup=2.7, report_uri=f"{OUTPUT}/report.json")
    assert status.benchmark.speedup_text == "2.70x"


def test_status_round_trips():
    status = OptimizedModelStatus(engine=ENGINE, benchmark=BenchmarkStatus.of(Benchmark(
        speedup=2.7, speedup_check=CHECK, accuracy=ACCURACY, report_uri=f"{OUTPUT}/report.json")))
    assert OptimizedModelStatus.model_validate(status.to_wire()) == status


def test_an_upgrade_removes_what_no_longer_reads_and_announces_nothing():
    """The first write after an upgrade patches the stored status, not the one read: the old
    accuracy (which the current schema would refuse) is removed; no condition changed, no Event."""
    stored = {"phase": "Ready", "engine": ENGINE.to_wire(), "conditions": [
        {"type": "Built", "status": "True", "reason": "EngineBuilt", "message": "built",
         "lastTransitionTime": "2025-01-01T00:00:00Z"}],
        "benchmark": {"speedup": 2.7, "speedupText": "2.70x", "accuracy": {"metric": "cosine", "value": 0.99}}}
    body = {"metadata": {"namespace": "ml", "name": "minilm"}, "status": stored}
    old = reconcile.read_status(body)

    class Recorder:
        patches: list = []
        events: list = []

        def patch_model_status(self, namespace, name, patch):
            self.patches.append(patch)

        def post_event(self, *args):
            self.events.append(args)

    kube = Recorder()
    reconcile.write_status(kube, body, old, old)
    (patch,) = kube.patches
    assert patch["benchmark"] == {"speedup": 2.7, "speedupText": "2.70x", "accuracy": None}
    assert patch["engine"] == ENGINE.to_wire() and kube.events == []
