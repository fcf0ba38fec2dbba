"""The build pipeline: fetch -> load -> calibration data -> evaluation sets -> reference -> prune ->
export -> candidates -> compile -> verify -> benchmark -> select -> report accuracy -> speedup check ->
write.

``Build.run`` composes the steps: each takes its inputs as arguments and returns its result,
and ``run`` hands one step's result to the next. Where the candidates run is ``machine.py``;
what they are is the table in ``recipes.py`` and their lifecycle ``candidates.py``; which one
ships is ``selection.py``; which samples each number comes from is ``samples.evaluation_sets``.
What the report needs is collected in ``Outcome`` as the steps return.

Each step runs through ``StepRunner`` (typed OK / FAIL / SKIPPED result, timing, progress log).
Candidate-level problems mark that candidate FAIL or SKIPPED and the build goes on; build-level
problems raise ``BuildError`` with the contract reason. Nothing is written to the output location
until every step has passed: the repository and report are staged under the work directory and
published in one move at the end.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from optimodel.api.key import BUILDER_VERSION
from optimodel.api.report import AccuracyResult, BuildReport, EngineInfo, PerformanceProfile, SpeedupCheck
from optimodel.api.spec import BuildSpec
from optimodel.builder import benchmark, candidates, hardware, machine, samples, selection, sources, tensors, verify
from optimodel.builder.candidates import Variant
from optimodel.builder.errors import BuildError, wrap
from optimodel.builder.loader import LoadedModel, load
from optimodel.builder.machine import Machine
from optimodel.builder.runners import OrtRunner, Runner, TorchRunner, ort_error_reason
from optimodel.builder.steps import Skip, StepRunner
from optimodel.triton import layout, repository
from optimodel.triton.config import ModelSpec

log = logging.getLogger("optimodel.builder")


@dataclass
class BuildOptions:
    spec: BuildSpec
    output: str
    work_dir: Path
    key: str  # build_key(spec), computed once by the CLI (and checked against --build-key)
    model_name: str = "model"
    batch_sizes: list[int] | None = None
    quick: bool = False
    threads: int = field(default_factory=hardware.cpu_threads)

    def bench_config(self) -> benchmark.BenchConfig:
        return benchmark.BenchConfig.quick() if self.quick else benchmark.BenchConfig()


@dataclass(frozen=True)
class Reference:
    """The source model's outputs on the selection and report sets, and the runner (the baseline)."""

    runner: Runner
    selection: dict[str, np.ndarray]
    report: dict[str, np.ndarray]


@dataclass
class Outcome:
    """What the report is made of, filled in as the steps return (a failed build has part of it)."""

    machine: Machine | None = None
    calibration_source: str = "none"
    variants: list[Variant] = field(default_factory=list)
    baseline: PerformanceProfile | None = None
    selected: Variant | None = None
    accuracy: AccuracyResult | None = None  # the selected engine on the report set
    speedup_check: SpeedupCheck | None = None  # ... re-timed against the baseline, same window
    warnings: list[str] = field(default_factory=list)


class Build:
    """One build. ``run()`` returns the succeeded report or raises ``BuildError``; either way
    ``report()`` describes what happened (steps, candidates, warnings) for the summary."""

    def __init__(self, opts: BuildOptions) -> None:
        self.opts = opts
        self.steps = StepRunner()
        self.outcome = Outcome()

    # ------------------------------------------------------------------ run

    def run(self) -> BuildReport:
        opts, opt, out, step = self.opts, self.opts.spec.optimization, self.outcome, self.steps.run
        if importlib.util.find_spec("torch") is not None:
            hardware.set_torch_threads(opts.threads)  # baseline and ORT get equal threads
        where = step("resolve-target", lambda: self._resolve_target(), lambda m: f"{m.target} on {m.label()}").value
        out.machine = where
        source = step("fetch", lambda: sources.fetch(
            opts.spec.model.uri, opts.work_dir / "source",
            credentials=sources.model_credentials(opts.spec.model.credentials_secret)), str).value
        model, source_runner = step("load", lambda: self._load(source, where), lambda r: describe_model(r[0])).value
        calib = step("calibration-data", lambda: self._calibration(model), describe_feeds).value
        sets = step("evaluation-sets", lambda: self._evaluation_sets(model, calib), describe_sets).value
        held_out = sets.selection  # what candidates are gated, chosen and timed on
        ref = step("reference", lambda: reference(model, sets, source_runner, where, opt.max_batch_size),
                   lambda r: r.runner.runtime).value
        pruned = step("prune", lambda: self._prune(model), lambda r: r[0])
        sparse = pruned.ok and pruned.value[1]
        exported = step("export-onnx", lambda: export(model, held_out, opts.work_dir / "export"))
        graph = exported.value if exported.ok else model.onnx_path
        assert graph is not None
        sweep, headline = self._sweep()
        out.variants = step("candidates", lambda: candidates.make(
            model, graph, sets.calibration, where, opt.precision, opts.work_dir / "candidates"),
            candidates.describe).value
        step("compile", lambda: candidates.compile_all(
            out.variants, where, opt.precision,
            lambda v: compile_tensorrt(model, v, where, opts, headline, sparse)), candidates.describe)
        step("verify", lambda: candidates.gate_all(
            out.variants, lambda runner: self._accuracy(runner, ref.selection, held_out, "selection"),
            opt.accuracy.metric, opt.accuracy.threshold, held_out), candidates.describe_accuracy)
        lengths = benchmark.sequence_lengths(model.seq_len, model.max_seq_len)
        out.baseline = step("benchmark", lambda: run_benchmark(ref.runner, out.variants, held_out, sweep, headline,
                                                               lengths, opts.bench_config()),
                            lambda _: f"batch sizes {sweep}, headline batch {headline}"
                                      + (f" also at {lengths} tokens" if lengths else "")).value
        ranked = step("select", lambda: self._select(), lambda r: r[0].candidate.name).value
        out.selected, out.accuracy = step(
            "report-accuracy", lambda: self._report_accuracy(ranked, ref.report, sets.report),
            lambda r: f"{r[0].candidate.name}: {r[1].metric} {r[1].value:.4f} on {r[1].samples} "
                      f"{r[1].source} samples").value
        out.speedup_check = step(
            "speedup-check", lambda: benchmark.speedup_check(out.selected.runner, ref.runner, held_out, headline,
                                                             opts.bench_config(), pairs=4 if opts.quick else 6),
            lambda c: f"{out.selected.candidate.name} {c.speedup:.2f}x the baseline at batch {c.batch_size} "
                      f"(median of {len(c.ratios)} window pairs)").value
        step("write", lambda: self._write(model, held_out), lambda _: opts.output)
        return self.report()

    # ------------------------------------------------------------------ report

    def report(self, error: BuildError | None = None) -> BuildReport:
        out = self.outcome
        sel = out.selected
        check = out.speedup_check if error is None else None
        versions = hardware.versions()
        versions["cpu"] = hardware.cpu_name()
        versions["threads"] = str(self.opts.threads)
        # FP32 math is full FP32 on both sides of every comparison: the PyTorch baseline turns
        # TF32 off in cuBLAS/cuDNN and TensorRT engines are built without it (CPU has none).
        versions["tf32"] = "off (baseline and engines)"
        return BuildReport(
            builder_version=BUILDER_VERSION, build_key=self.opts.key, succeeded=error is None,
            reason=error.reason if error else None, message=error.message if error else None,
            engine=self._engine_info() if sel and error is None else None,
            baseline=out.baseline, candidates=[v.candidate for v in out.variants],
            selected=sel.candidate.name if sel else None, speedup=check.speedup if check else None,
            speedup_check=check, accuracy=out.accuracy if error is None else None,
            calibration_source=out.calibration_source, versions=versions,
            steps=self.steps.timings, warnings=out.warnings,
        )

    def _engine_info(self) -> EngineInfo:
        sel, where = self.outcome.selected, self.outcome.machine
        assert sel and sel.artifact and where
        gpu = where.gpu()
        if where.target == "tensorrt":
            from optimodel.builder.tensorrt_engine import version

            runtime, platform = f"tensorrt {version()}", layout.TENSORRT_PLATFORM
        else:
            import onnxruntime

            runtime, platform = f"onnxruntime {onnxruntime.__version__}", layout.ONNXRUNTIME_PLATFORM
        return EngineInfo(
            key=self.opts.key, uri=self.opts.output.rstrip("/"),  # the build output root
            model_name=self.opts.model_name, precision=sel.candidate.precision, target=where.target,
            platform=platform, gpu_product=gpu.product.replace(" ", "-") if gpu else None,
            compute_capability=gpu.compute_capability if gpu else None,
            runtime_version=runtime, size_bytes=sel.artifact.stat().st_size,
        )

    # ------------------------------------------------------------------ steps that need the build

    def _resolve_target(self) -> Machine:
        sources.check_source_policy(self.opts.spec)  # allowed source prefixes: before any download
        machine.check_optimization(self.opts.spec)
        self._sweep()  # a bad --batch-sizes fails now, not after the expensive steps
        where, warnings = machine.resolve(self.opts.spec, self.opts.threads)
        self.outcome.warnings.extend(warnings)
        return where

    def _load(self, path: Path, where: Machine) -> tuple[LoadedModel, Runner | None]:
        """The model, and for ONNX input the source graph as users run it under ONNX Runtime
        (which also proves it runnable): the baseline and the reference."""
        model = load(self.opts.spec.model, path, self.opts.work_dir)
        self.outcome.warnings.extend(model.warnings)
        if model.format != "onnx":
            return model, None
        try:
            return model, OrtRunner(model.onnx_path, where.threads, where.providers(), where.label())
        except Exception as exc:
            raise wrap(ort_error_reason(exc), f"ONNX Runtime cannot load the model: {str(exc)[:600]}", exc) from exc

    def _calibration(self, model: LoadedModel) -> samples.Feeds:
        cal = self.opts.spec.optimization.calibration
        if cal is None:
            raise Skip("no calibration data in the spec (dynamic INT8 needs none)")
        count = min(cal.samples, 64) if self.opts.quick else cal.samples
        if cal.uri:
            feeds = samples.load_calibration(cal.uri, self.opts.work_dir / "calibration", model, count)
            self.outcome.calibration_source = "uri"
            return feeds
        self.outcome.calibration_source = "synthetic"
        what = ("the built-in generic English sentences (not your data)" if model.is_text
                else "seeded random inputs")
        self.outcome.warnings.append(f"calibration.synthetic: INT8/FP8 scales come from {what}; give "
                                     "calibration.uri with real samples for reliable scales")
        return samples.synthetic_calibration(model, count)

    def _evaluation_sets(self, model: LoadedModel, calib: samples.Feeds | None) -> samples.EvaluationSets:
        sets = samples.evaluation_sets(model, calib, from_user=self.outcome.calibration_source == "uri",
                                       quick=self.opts.quick)
        self.outcome.warnings.extend(sets.warnings)
        return sets

    def _prune(self, model: LoadedModel) -> tuple[str, bool]:
        """(what was pruned, whether TensorRT may use sparse tensor cores: 2:4 only)."""
        sparsity = self.opts.spec.optimization.sparsity
        if sparsity is None:
            raise Skip("no sparsity requested")
        if model.export_module is None:
            self.outcome.warnings.append("sparsity was requested, but ONNX input cannot be pruned (pruning "
                                         "works on the PyTorch model before export): built dense")
            raise Skip("ONNX input cannot be pruned")
        from optimodel.builder.prune import prune

        return prune(model.export_module, sparsity), sparsity.pattern == "2:4"

    def _accuracy(self, runner: Runner, reference: dict[str, np.ndarray], sample_set: samples.SampleSet,
                  role: str) -> AccuracyResult:
        """One engine against the source's outputs on one sample set, each sample alone and in
        batches (Triton's dynamic batcher forms any batch, and some engines, e.g. dynamic INT8 with
        activation ranges measured per batch, answer differently per batch composition): the worst."""
        gate, max_batch = self.opts.spec.optimization.accuracy, self.opts.spec.optimization.max_batch_size
        result = verify.worst([verify.compare(reference, run_all(runner, sample_set, chunk, max_batch), gate.metric,
                                              gate.threshold, sample_set.token_mask) for chunk in (1, None)],
                              gate.metric)
        return result.model_copy(update={"sample_set": role, "source": sample_set.source})

    def _sweep(self) -> tuple[list[int], int]:
        max_batch = self.opts.spec.optimization.max_batch_size
        if self.opts.batch_sizes:
            too_big = [b for b in self.opts.batch_sizes if b > max_batch or b < 1]
            if too_big:
                raise BuildError("InvalidSpec", f"--batch-sizes {too_big} outside 1..maxBatchSize ({max_batch})")
            sweep = sorted(set(self.opts.batch_sizes))
        else:
            sweep = benchmark.default_sweep(max_batch)
        return sweep, benchmark.headline_batch(sweep)

    def _select(self) -> list[Variant]:
        """The passing candidates, most preferred first (``selection.select``)."""
        variants = self.outcome.variants
        chosen = selection.select([v.candidate for v in variants], self.opts.spec.optimization.accuracy.metric)
        if chosen.warning:
            self.outcome.warnings.append(chosen.warning)
        ranked = [next(v for v in variants if v.candidate is c) for c in chosen.ranked]
        self.outcome.selected = ranked[0]  # until report-accuracy confirms it (or the next one)
        return ranked

    def _report_accuracy(self, ranked: list[Variant], reference: dict[str, np.ndarray],
                         report_set: samples.SampleSet) -> tuple[Variant, AccuracyResult]:
        """The selected engine on samples no choice was made on: the accuracy the report and the
        status publish (``selection.confirm``: the gate must hold there too)."""
        by_candidate = {id(v.candidate): v for v in ranked}

        def measure(candidate) -> AccuracyResult:
            runner = by_candidate[id(candidate)].runner
            assert runner
            return self._accuracy(runner, reference, report_set, "report")

        confirmed = selection.confirm([v.candidate for v in ranked], measure,
                                      self.opts.spec.optimization.accuracy.threshold)
        if confirmed.warning:
            self.outcome.warnings.append(confirmed.warning)
        return by_candidate[id(confirmed.chosen)], confirmed.accuracy

    def _write(self, model: LoadedModel, held: samples.SampleSet) -> None:
        sel, where = self.outcome.selected, self.outcome.machine
        assert sel and sel.artifact and sel.candidate.performance and where
        stage = self.opts.work_dir / "stage"
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        spec = ModelSpec(
            name=self.opts.model_name, inputs=[t.triton() for t in model.inputs],
            outputs=[t.triton() for t in model.outputs],
            max_batch_size=self.opts.spec.optimization.max_batch_size, gpu=where.on_gpu,
            preferred_batch_sizes=benchmark.preferred_batch_sizes(sel.candidate.performance),
            warmup=tensors.warmup_samples(model.inputs, held.batch(1)), cpu_threads=0,
        )
        if where.target == "tensorrt":
            repository.write_tensorrt(stage, spec, sel.artifact)
        else:
            repository.write_onnxruntime(stage, spec, sel.artifact)
        (stage / "report.json").write_text(self.report().model_dump_json(by_alias=True, indent=2,
                                                                          exclude_none=True))
        sources.publish(stage, self.opts.output)


# ---------------------------------------------------------------------- steps as plain functions

def describe_model(m: LoadedModel) -> str:
    ins = ", ".join(f"{i.name}:{i.dtype}{list(i.shape)}" for i in m.inputs)
    outs = ", ".join(f"{o.name}:{o.dtype}{list(o.shape)}" for o in m.outputs)
    seq = f", seq {m.seq_len}" if m.seq_len else ""
    return f"{m.format}: inputs {ins}; outputs {outs}{seq}"


def describe_feeds(feeds: samples.Feeds) -> str:
    return f"{len(next(iter(feeds.values())))} samples"


def describe_sets(sets: samples.EvaluationSets) -> str:
    cal = len(next(iter(sets.calibration.values()))) if sets.calibration else 0
    return (f"calibration {cal}, selection {sets.selection.count} ({sets.selection.source}), "
            f"report {sets.report.count} ({sets.report.source})")


def run_all(runner: Runner, held: samples.SampleSet, chunk: int | None, max_batch: int) -> dict[str, np.ndarray]:
    """Outputs over every held-out sample, in chunks the engine's batch limit allows."""
    chunk = chunk or max(1, min(max_batch, 16))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, held.count, chunk):
        feeds = {k: v[start:start + chunk] for k, v in held.feeds.items()}
        for name, arr in runner(feeds).items():
            parts.setdefault(name, []).append(np.asarray(arr))
    return {k: np.concatenate(v) for k, v in parts.items()}


def reference(model: LoadedModel, sets: samples.EvaluationSets, source_runner: Runner | None, where: Machine,
              max_batch: int) -> Reference:
    """The source model's outputs on the selection and report sets (and the baseline runner)."""
    runner = source_runner if model.format == "onnx" else TorchRunner(
        model.module, [i.name for i in model.inputs], [o.name for o in model.outputs], where.label())
    assert runner is not None
    try:
        return Reference(runner, run_all(runner, sets.selection, None, max_batch),
                         run_all(runner, sets.report, None, max_batch))
    except BuildError:
        raise
    except Exception as exc:
        reason = ort_error_reason(exc) if model.format == "onnx" else "ModelLoadFailed"
        raise wrap(reason, f"the source model fails on the evaluation samples: "
                         f"{type(exc).__name__}: {str(exc)[:500]}", exc) from exc


def export(model: LoadedModel, held: samples.SampleSet, out: Path) -> Path:
    if model.format == "onnx":
        raise Skip("the source is already ONNX")
    from optimodel.builder.export import export_onnx

    out.mkdir(parents=True, exist_ok=True)
    return export_onnx(model, held.batch(2), out / "model.onnx")


def compile_tensorrt(model: LoadedModel, variant: Variant, where: Machine, opts: BuildOptions, headline: int,
                     sparse: bool) -> None:
    from optimodel.builder.tensorrt_engine import TrtRunner, build_engine

    plan = opts.work_dir / "candidates" / f"{variant.candidate.name}.plan"
    opt = opts.spec.optimization
    build_engine(variant.graph, plan, model.inputs, max_batch=opt.max_batch_size, opt_batch=headline,
                 seq_len=model.seq_len, max_seq_len=model.max_seq_len, timing_cache=opts.work_dir / "timing.cache",
                 hardware_compatibility=opt.hardware_compatibility, sparse_weights=sparse)
    variant.artifact = plan
    variant.runner = TrtRunner(plan, where.label())


def run_benchmark(baseline: Runner, variants: list[Variant], held: samples.SampleSet, sweep: list[int],
                  headline: int, lengths: list[int], cfg: benchmark.BenchConfig) -> PerformanceProfile:
    """Every passing candidate and the baseline over the batch sweep, and at the headline batch
    over the other sequence lengths (the shape sweep: no engine is judged only at the shape it
    was tuned for). Sets each candidate's performance and speedup; returns the baseline's."""
    log.info("benchmark: baseline %s", baseline.runtime)
    base = benchmark.profile(baseline, held, sweep, headline, cfg, lengths)
    for variant in variants:
        acc = variant.candidate.accuracy
        if not variant.ok or acc is None:
            continue
        # Candidates that failed the gate are timed at the headline batch only, for the record.
        log.info("benchmark: %s", variant.candidate.name)
        variant.candidate.performance = benchmark.profile(variant.runner, held, sweep if acc.passed else [headline],
                                                          headline, cfg, lengths if acc.passed else [])
    # Re-time the baseline's headline batch after the candidates and keep the better of the
    # two: load that varied during the run must not inflate the speedup.
    again = benchmark.measure_batch(baseline, held, headline, cfg)
    if again.throughput > base.headline.throughput:
        log.info("  baseline re-measured faster (%.1f/s > %.1f/s): using it", again.throughput,
                 base.headline.throughput)
        base.sweep = [again if s.batch_size == headline else s for s in base.sweep]
        base.headline = again
    for variant in variants:
        perf = variant.candidate.performance
        if perf is not None:
            variant.candidate.speedup = (round(perf.headline.throughput / base.headline.throughput, 3)
                                         if base.headline.throughput else None)
    return base
