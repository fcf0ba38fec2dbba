"""The build pipeline: fetch -> load -> calibration data -> evaluation sets -> reference -> prune ->
export -> candidates -> compile -> verify -> benchmark -> select -> report accuracy -> speedup check ->
write.

What the candidates are is the table in ``recipes.py``; which one ships is ``selection.py``;
which samples each number comes from is ``samples.evaluation_sets``.

Each step runs through ``StepRunner`` (typed OK / FAIL / SKIPPED result, timing, progress log).
Candidate-level problems (a precision the runtime cannot run, a graph TensorRT cannot parse)
mark that candidate FAIL or SKIPPED and the build goes on; build-level problems raise
``BuildError`` with the contract reason. Nothing is written to the output location until every
step has passed: the repository and report are staged under the work directory and published
in one move at the end.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from optimodel.api.key import BUILDER_VERSION
from optimodel.api.report import (AccuracyResult, BuildReport, Candidate, EngineInfo, PerformanceProfile,
                                  SpeedupCheck)
from optimodel.api.spec import BuildSpec
from optimodel.builder import (benchmark, compress, hardware, recipes, samples, selection, sources,
                               tensors, verify)
from optimodel.builder.errors import BuildError, wrap
from optimodel.builder.loader import LoadedModel, load
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


@dataclass
class Variant:
    """One candidate in flight: its report entry plus the files and runner behind it."""

    candidate: Candidate
    graph: Path | None = None  # the candidate's ONNX graph
    artifact: Path | None = None  # what ships: the same ONNX graph, or a TensorRT plan
    runner: Runner | None = None
    outputs: dict[str, np.ndarray] | None = None


def _fail(variant: Variant, reason: str) -> None:
    variant.candidate.status = "FAIL"
    variant.candidate.reason = reason[:500]
    variant.runner = None
    log.warning("candidate %s: FAIL (%s)", variant.candidate.name, reason[:300])


def _skip(variant: Variant, reason: str) -> None:
    variant.candidate.status = "SKIPPED"
    variant.candidate.reason = reason
    log.info("candidate %s: SKIPPED (%s)", variant.candidate.name, reason)


class Build:
    """One build. ``run()`` returns the succeeded report or raises ``BuildError``; either way
    ``report()`` describes what happened (steps, candidates, warnings) for the summary."""

    def __init__(self, opts: BuildOptions) -> None:
        self.opts = opts
        self.spec = opts.spec
        self.opt = opts.spec.optimization
        self.key = opts.key
        self.steps = StepRunner()
        self.warnings: list[str] = []
        self.variants: list[Variant] = []
        self.baseline: PerformanceProfile | None = None
        self.calibration_source = "none"
        self.work = opts.work_dir
        self.target = "onnxruntime"
        self.device = "cpu"
        self.selected: Variant | None = None
        self.ranked: list[Variant] = []  # passing candidates, most preferred first
        self.source_runner: Runner | None = None
        self.sparse = False  # 2:4-pruned: TensorRT may use sparse tensor cores
        self.reference: dict[str, np.ndarray] = {}  # source outputs on the selection set
        self.report_reference: dict[str, np.ndarray] = {}  # ... and on the report set
        self.report_accuracy: AccuracyResult | None = None  # the selected engine on the report set
        self.speedup_check: SpeedupCheck | None = None  # ... re-timed against the baseline, same window

    # ------------------------------------------------------------------ report

    def report(self, error: BuildError | None = None) -> BuildReport:
        sel = self.selected
        check = self.speedup_check if error is None else None
        versions = hardware.versions()
        versions["cpu"] = hardware.cpu_name()
        versions["threads"] = str(self.opts.threads)
        # FP32 math is full FP32 on both sides of every comparison: the PyTorch baseline turns
        # TF32 off in cuBLAS/cuDNN and TensorRT engines are built without it (CPU has none).
        versions["tf32"] = "off (baseline and engines)"
        return BuildReport(
            builder_version=BUILDER_VERSION, build_key=self.key, succeeded=error is None,
            reason=error.reason if error else None, message=error.message if error else None,
            engine=self._engine_info() if sel and error is None else None,
            baseline=self.baseline, candidates=[v.candidate for v in self.variants],
            selected=sel.candidate.name if sel else None, speedup=check.speedup if check else None,
            speedup_check=check,
            accuracy=self.report_accuracy if error is None else None,
            calibration_source=self.calibration_source, versions=versions,
            steps=self.steps.timings, warnings=self.warnings,
        )

    def _engine_info(self) -> EngineInfo:
        sel = self.selected
        assert sel and sel.artifact
        gpu = hardware.gpu() if self.device.startswith("cuda") else None
        if self.target == "tensorrt":
            from optimodel.builder.tensorrt_engine import version

            runtime, platform = f"tensorrt {version()}", layout.TENSORRT_PLATFORM
        else:
            import onnxruntime

            runtime, platform = f"onnxruntime {onnxruntime.__version__}", layout.ONNXRUNTIME_PLATFORM
        return EngineInfo(
            key=self.key, uri=f"{self.opts.output.rstrip('/')}/{layout.NATIVE_DIR}/{self.opts.model_name}",
            model_name=self.opts.model_name, precision=sel.candidate.precision, target=self.target,
            platform=platform, gpu_product=gpu.product.replace(" ", "-") if gpu else None,
            compute_capability=gpu.compute_capability if gpu else None,
            runtime_version=runtime, size_bytes=sel.artifact.stat().st_size,
        )

    # ------------------------------------------------------------------ run

    def run(self) -> BuildReport:
        if self._torch_importable():
            hardware.set_torch_threads(self.opts.threads)  # baseline and ORT get equal threads
        self.steps.run("resolve-target", self._resolve_target, lambda t: t)
        source = self.steps.run("fetch", self._fetch, lambda p: str(p)).value
        model: LoadedModel = self.steps.run("load", lambda: self._load(source), self._describe_model).value
        calib = self.steps.run("calibration-data", lambda: self._calibration(model), self._describe_feeds).value
        sets = self.steps.run("evaluation-sets", lambda: self._evaluation_sets(model, calib),
                              self._describe_sets).value
        held_out = sets.selection  # what candidates are gated, chosen and timed on
        baseline = self.steps.run("reference", lambda: self._reference(model, sets),
                                  lambda r: r.runtime).value
        self.steps.run("prune", lambda: self._prune(model), lambda detail: detail)
        exported = self.steps.run("export-onnx", lambda: self._export(model, held_out))
        graph = exported.value if exported.ok else model.onnx_path
        assert graph is not None
        self.steps.run("candidates", lambda: self._candidates(model, graph, sets.calibration),
                       self._describe_variants)
        self.steps.run("compile", lambda: self._compile(model), self._describe_variants)
        self.steps.run("verify", lambda: self._verify(held_out), self._describe_accuracy)
        sweep, headline = self._sweep()
        lengths = benchmark.sequence_lengths(model.seq_len, model.max_seq_len)
        self.steps.run("benchmark", lambda: self._benchmark(baseline, held_out, sweep, headline, lengths),
                       lambda _: f"batch sizes {sweep}, headline batch {headline}"
                                 + (f" also at {lengths} tokens" if lengths else ""))
        self.steps.run("select", self._select, lambda v: v.candidate.name)
        self.steps.run("report-accuracy", lambda: self._report_accuracy(sets.report),
                       lambda r: f"{self.selected.candidate.name}: {r.metric} {r.value:.4f} on {r.samples} "
                                 f"{r.source} samples")
        self.steps.run("speedup-check", lambda: self._speedup_check(baseline, held_out, headline),
                       lambda c: f"{self.selected.candidate.name} {c.speedup:.2f}x the baseline at batch "
                                 f"{c.batch_size} (median of {len(c.ratios)} window pairs)")
        self.steps.run("write", lambda: self._write(model, held_out), lambda _: self.opts.output)
        return self.report()

    @staticmethod
    def _torch_importable() -> bool:
        import importlib.util

        return importlib.util.find_spec("torch") is not None

    # ------------------------------------------------------------------ steps

    def _resolve_target(self) -> str:
        sources.check_source_policy(self.spec)  # allowed source prefixes: before any download
        opt = self.opt
        if opt.precision in ("int8", "fp8") and not (
            opt.calibration and (opt.calibration.uri or opt.calibration.synthetic)
        ):
            raise BuildError("InvalidSpec", "precision int8 and fp8 need calibration.uri, or "
                             "calibration.synthetic: true to opt in to random calibration data")
        if opt.precision == "fp8" and opt.target == "onnxruntime":
            raise BuildError("InvalidSpec", "precision fp8 needs target tensorrt or auto "
                             "(ONNX Runtime has no FP8 kernels)")
        if opt.max_batch_size < 1:
            raise BuildError("InvalidSpec", "maxBatchSize must be at least 1")
        self._sweep()  # a bad --batch-sizes fails now, not after the expensive steps
        why_not_trt = hardware.tensorrt_available()
        if opt.target == "tensorrt" and why_not_trt:
            raise BuildError("CompileFailed", f"target tensorrt, but {why_not_trt}")
        self.target = "tensorrt" if opt.target == "tensorrt" or (opt.target == "auto" and not why_not_trt) \
            else "onnxruntime"
        if self.target == "tensorrt":
            self.device = "cuda"
        elif hardware.gpu() is not None and self._ort_has_cuda():
            self.device = "cuda"
        if self.target == "onnxruntime" and opt.target == "auto" and why_not_trt:
            log.info("target auto -> onnxruntime: %s", why_not_trt)
        gpu = hardware.gpu()
        if self.spec.gpu_product and gpu and gpu.product.replace(" ", "-") != self.spec.gpu_product:
            self.warnings.append(f"spec targets GPU {self.spec.gpu_product}, but the builder runs on "
                                 f"{gpu.product}: the engine is tuned for the builder's GPU")
        if self.spec.gpu_product and not self.device.startswith("cuda"):
            self.warnings.append(f"spec targets GPU {self.spec.gpu_product}, but this builder has no "
                                 "usable GPU runtime: the engine is an ONNX Runtime CPU engine, "
                                 "measured on this CPU")
        return f"{self.target} on {self._device_label()}"

    @staticmethod
    def _ort_has_cuda() -> bool:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()

    def _device_label(self) -> str:
        if self.device.startswith("cuda"):
            gpu = hardware.gpu()
            return f"cuda ({gpu.product}, sm {gpu.compute_capability})" if gpu else "cuda"
        return f"cpu ({hardware.cpu_name()}, {self.opts.threads} threads)"

    def _fetch(self) -> Path:
        return sources.fetch(self.spec.model.uri, self.work / "source",
                             credentials=sources.model_credentials(self.spec.model.credentials_secret))

    def _load(self, path: Path) -> LoadedModel:
        model = load(self.spec.model, path, self.work)
        self.warnings.extend(model.warnings)
        if model.format == "onnx":
            # The source graph as users run it under ONNX Runtime: also proves it is runnable.
            try:
                runner = OrtRunner(model.onnx_path, self.opts.threads, self._providers(), self._device_label())
            except Exception as exc:
                raise wrap(ort_error_reason(exc), f"ONNX Runtime cannot load the model: {str(exc)[:600]}",
                           exc) from exc
            self.source_runner = runner  # the baseline and reference for ONNX input
        return model

    def _describe_model(self, m: LoadedModel) -> str:
        ins = ", ".join(f"{i.name}:{i.dtype}{list(i.shape)}" for i in m.inputs)
        outs = ", ".join(f"{o.name}:{o.dtype}{list(o.shape)}" for o in m.outputs)
        seq = f", seq {m.seq_len}" if m.seq_len else ""
        return f"{m.format}: inputs {ins}; outputs {outs}{seq}"

    def _calibration(self, model: LoadedModel):
        cal = self.opt.calibration
        if cal is None:
            raise Skip("no calibration data in the spec (dynamic INT8 needs none)")
        count = min(cal.samples, 64) if self.opts.quick else cal.samples
        if cal.uri:
            feeds = samples.load_calibration(cal.uri, self.work / "calibration", model, count)
            self.calibration_source = "uri"
            return feeds
        self.calibration_source = "synthetic"
        what = ("the built-in generic English sentences (not your data)" if model.is_text
                else "seeded random inputs")
        self.warnings.append(f"calibration.synthetic: INT8/FP8 scales come from {what}; give "
                             "calibration.uri with real samples for reliable scales")
        return samples.synthetic_calibration(model, count)

    @staticmethod
    def _describe_feeds(feeds) -> str:
        n = len(next(iter(feeds.values())))
        return f"{n} samples"

    def _evaluation_sets(self, model: LoadedModel, calib) -> samples.EvaluationSets:
        sets = samples.evaluation_sets(model, calib, from_user=self.calibration_source == "uri",
                                       quick=self.opts.quick)
        self.warnings.extend(sets.warnings)
        return sets

    @staticmethod
    def _describe_sets(sets: samples.EvaluationSets) -> str:
        cal = len(next(iter(sets.calibration.values()))) if sets.calibration else 0
        return (f"calibration {cal}, selection {sets.selection.count} ({sets.selection.source}), "
                f"report {sets.report.count} ({sets.report.source})")

    def _reference(self, model: LoadedModel, sets: samples.EvaluationSets) -> Runner:
        """The source model's outputs on the selection and report sets (and the baseline runner)."""
        if model.format == "onnx":
            runner = self.source_runner
        else:
            runner = TorchRunner(model.module, [i.name for i in model.inputs],
                                 [o.name for o in model.outputs], self._device_label())
        try:
            self.reference = self._run_all(runner, sets.selection)
            self.report_reference = self._run_all(runner, sets.report)
        except BuildError:
            raise
        except Exception as exc:
            reason = ort_error_reason(exc) if model.format == "onnx" else "ModelLoadFailed"
            raise wrap(reason, f"the source model fails on the evaluation samples: "
                             f"{type(exc).__name__}: {str(exc)[:500]}", exc) from exc
        return runner

    def _run_all(self, runner: Runner, held: samples.SampleSet, chunk: int | None = None) -> dict[str, np.ndarray]:
        """Outputs over every held-out sample, in chunks the engine's batch limit allows."""
        chunk = chunk or max(1, min(self.opt.max_batch_size, 16))
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, held.count, chunk):
            feeds = {k: v[start:start + chunk] for k, v in held.feeds.items()}
            for name, arr in runner(feeds).items():
                parts.setdefault(name, []).append(np.asarray(arr))
        return {k: np.concatenate(v) for k, v in parts.items()}

    def _prune(self, model: LoadedModel) -> str:
        sparsity = self.opt.sparsity
        if sparsity is None:
            raise Skip("no sparsity requested")
        if model.export_module is None:
            self.warnings.append("sparsity was requested, but ONNX input cannot be pruned (pruning "
                                 "works on the PyTorch model before export): built dense")
            raise Skip("ONNX input cannot be pruned")
        from optimodel.builder.prune import prune

        detail = prune(model.export_module, sparsity)
        self.sparse = sparsity.pattern == "2:4"
        return detail

    def _export(self, model: LoadedModel, held: samples.SampleSet) -> Path:
        if model.format == "onnx":
            raise Skip("the source is already ONNX")
        from optimodel.builder.export import export_onnx

        out = self.work / "export"
        out.mkdir(parents=True, exist_ok=True)
        return export_onnx(model, held.batch(2), out / "model.onnx")

    # ------------------------------------------------------------------ candidates

    def _conditions(self, has_calibration: bool) -> recipes.Conditions:
        gpu = hardware.gpu() if self.target == "tensorrt" else None
        return recipes.Conditions(target=self.target, auto=self.opt.precision == "auto",
                                  on_cpu=not self.device.startswith("cuda"), has_calibration=has_calibration,
                                  compute_capability=float(gpu.compute_capability) if gpu else None)

    def _candidates(self, model: LoadedModel, graph: Path, calibration: samples.Feeds | None) -> list[Variant]:
        """One variant per row of ``recipes.plan``: made, skipped (with why) or failed (with why)."""
        out = self.work / "candidates"
        out.mkdir(parents=True, exist_ok=True)
        base, base_note = graph, None
        if self.target == "onnxruntime" and model.transformer:
            base, stats = compress.fuse_transformer(graph, out / "fused-fp32.onnx", model.transformer,
                                                    use_gpu=self.device.startswith("cuda"))
            base_note = ("transformer fusion: " + ", ".join(f"{k} x{v}" for k, v in sorted(stats.items()))
                         if stats else "transformer fusion found nothing to fuse")
        inputs = recipes.Inputs(graph=graph, base=base, calibration=calibration, threads=self.opts.threads,
                                base_note=base_note)
        cond = self._conditions(calibration is not None)
        for recipe in recipes.plan(self.target, self.opt.precision):
            variant = Variant(Candidate(name=recipe.name, precision=recipe.precision, target=self.target,
                                        status="OK"))
            self.variants.append(variant)
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
        return self.variants

    def _describe_variants(self, variants: list[Variant]) -> str:
        return ", ".join(f"{v.candidate.name}={v.candidate.status}" for v in variants)

    def _providers(self) -> list[str]:
        if self.device.startswith("cuda") and self.target == "onnxruntime":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _compile(self, model: LoadedModel) -> list[Variant]:
        for variant in self.variants:
            if variant.candidate.status != "OK":
                continue
            assert variant.graph is not None
            try:
                if self.target == "tensorrt":
                    self._compile_tensorrt(model, variant)
                else:
                    variant.runner = OrtRunner(variant.graph, self.opts.threads, self._providers(),
                                               self._device_label())
                    variant.artifact = variant.graph
                variant.candidate.size_bytes = variant.artifact.stat().st_size
            except BuildError as exc:
                _fail(variant, str(exc))
            except Exception as exc:
                _fail(variant, f"{type(exc).__name__}: {str(exc)[:400]}")
        if not any(v.candidate.status == "OK" for v in self.variants):
            detail = "; ".join(f"{v.candidate.name}: {v.candidate.status} ({v.candidate.reason})"
                               for v in self.variants) or "no candidate applies"
            reason = "OutOfMemory" if "out of memory" in detail.lower() else "CompileFailed"
            raise BuildError(reason, f"no candidate could be built for precision "
                             f"{self.opt.precision} on {self.target}: {detail}")
        return self.variants

    def _compile_tensorrt(self, model: LoadedModel, variant: Variant) -> None:
        from optimodel.builder.tensorrt_engine import TrtRunner, build_engine

        _, headline = self._sweep()
        plan = self.work / "candidates" / f"{variant.candidate.name}.plan"
        build_engine(variant.graph, plan, model.inputs, max_batch=self.opt.max_batch_size,
                     opt_batch=headline, seq_len=model.seq_len, max_seq_len=model.max_seq_len,
                     timing_cache=self.work / "timing.cache",
                     hardware_compatibility=self.opt.hardware_compatibility,
                     sparse_weights=self.sparse)
        variant.artifact = plan
        variant.runner = TrtRunner(plan, self._device_label())

    def _verify(self, held: samples.SampleSet) -> list[Variant]:
        gate = self.opt.accuracy
        for variant in self.variants:
            if variant.candidate.status != "OK":
                continue
            try:
                result = self._accuracy(variant.runner, self.reference, held, "selection")
            except Exception as exc:
                _fail(variant, f"fails on the selection samples: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            variant.candidate.accuracy = result
            log.info("candidate %s: %s %.6f (threshold %s) -> %s", variant.candidate.name, result.metric,
                     result.value, result.threshold, "pass" if result.passed else "FAIL")
        verified = [v for v in self.variants if v.candidate.accuracy is not None]
        if not any(v.candidate.accuracy.passed for v in verified):
            detail = ", ".join(f"{v.candidate.name} {v.candidate.accuracy.value:.6g}" for v in verified)
            raise BuildError("AccuracyGateFailed", f"no candidate passes the accuracy gate "
                             f"({gate.metric} {'<=' if gate.metric in verify.LOWER_IS_BETTER else '>='} "
                             f"{gate.threshold} on {held.count} selection samples, {held.source}): {detail}")
        return self.variants

    def _accuracy(self, runner: Runner, reference: dict[str, np.ndarray], sample_set: samples.SampleSet,
                  role: str) -> AccuracyResult:
        """One engine against the source's outputs on one sample set, each sample alone and in
        batches (Triton's dynamic batcher forms any batch, and some engines, e.g. dynamic INT8 with
        activation ranges measured per batch, answer differently per batch composition): the worst."""
        gate = self.opt.accuracy
        result = verify.worst([verify.compare(reference, self._run_all(runner, sample_set, chunk), gate.metric,
                                              gate.threshold, sample_set.token_mask) for chunk in (1, None)],
                              gate.metric)
        return result.model_copy(update={"sample_set": role, "source": sample_set.source})

    def _describe_accuracy(self, variants: list[Variant]) -> str:
        return ", ".join(f"{v.candidate.name} {v.candidate.accuracy.value:.4f}"
                         f"{'' if v.candidate.accuracy.passed else ' (fail)'}"
                         for v in variants if v.candidate.accuracy is not None)

    # ------------------------------------------------------------------ benchmark / select

    def _sweep(self) -> tuple[list[int], int]:
        max_batch = self.opt.max_batch_size
        if self.opts.batch_sizes:
            too_big = [b for b in self.opts.batch_sizes if b > max_batch or b < 1]
            if too_big:
                raise BuildError("InvalidSpec", f"--batch-sizes {too_big} outside 1..maxBatchSize ({max_batch})")
            sweep = sorted(set(self.opts.batch_sizes))
        else:
            sweep = benchmark.default_sweep(max_batch)
        return sweep, benchmark.headline_batch(sweep)

    def _benchmark(self, baseline: Runner, held: samples.SampleSet, sweep: list[int], headline: int,
                   lengths: list[int]) -> None:
        """Every passing candidate and the baseline over the batch sweep, and at the headline
        batch over the other sequence lengths (the shape sweep: no engine is judged only at the
        shape it was tuned for)."""
        cfg = benchmark.BenchConfig.quick() if self.opts.quick else benchmark.BenchConfig()
        log.info("benchmark: baseline %s", baseline.runtime)
        self.baseline = benchmark.profile(baseline, held, sweep, headline, cfg, lengths)
        for variant in self.variants:
            acc = variant.candidate.accuracy
            if variant.candidate.status != "OK" or acc is None:
                continue
            # Candidates that failed the gate are timed at the headline batch only, for the record.
            log.info("benchmark: %s", variant.candidate.name)
            perf = benchmark.profile(variant.runner, held, sweep if acc.passed else [headline], headline, cfg,
                                     lengths if acc.passed else [])
            variant.candidate.performance = perf
        # Re-time the baseline's headline batch after the candidates and keep the better of the
        # two: load that varied during the run must not inflate the speedup.
        again = benchmark.measure_batch(baseline, held, headline, cfg)
        if again.throughput > self.baseline.headline.throughput:
            log.info("  baseline re-measured faster (%.1f/s > %.1f/s): using it", again.throughput,
                     self.baseline.headline.throughput)
            self.baseline.sweep = [again if s.batch_size == headline else s for s in self.baseline.sweep]
            self.baseline.headline = again
        base = self.baseline.headline.throughput
        for variant in self.variants:
            perf = variant.candidate.performance
            if perf is not None:
                variant.candidate.speedup = round(perf.headline.throughput / base, 3) if base else None

    def _select(self) -> Variant:
        chosen = selection.select([v.candidate for v in self.variants], self.opt.accuracy.metric)
        if chosen.warning:
            self.warnings.append(chosen.warning)
        self.ranked = [next(v for v in self.variants if v.candidate is c) for c in chosen.ranked]
        self.selected = self.ranked[0]
        return self.selected

    def _report_accuracy(self, report_set: samples.SampleSet) -> AccuracyResult:
        """The selected engine on samples no choice was made on: the accuracy the report and the
        status publish (``selection.confirm``: the gate must hold there too)."""
        gate = self.opt.accuracy
        by_candidate = {id(v.candidate): v for v in self.ranked}

        def measure(candidate: Candidate) -> AccuracyResult:
            runner = by_candidate[id(candidate)].runner
            assert runner
            return self._accuracy(runner, self.report_reference, report_set, "report")

        confirmed = selection.confirm([v.candidate for v in self.ranked], measure, gate.threshold)
        if confirmed.warning:
            self.warnings.append(confirmed.warning)
        self.selected = by_candidate[id(confirmed.chosen)]
        self.report_accuracy = confirmed.accuracy
        return confirmed.accuracy

    def _speedup_check(self, baseline: Runner, held: samples.SampleSet, headline: int) -> SpeedupCheck:
        sel = self.selected
        assert sel and sel.runner
        cfg = benchmark.BenchConfig.quick() if self.opts.quick else benchmark.BenchConfig()
        self.speedup_check = benchmark.speedup_check(sel.runner, baseline, held, headline, cfg,
                                                     pairs=4 if self.opts.quick else 6)
        return self.speedup_check

    # ------------------------------------------------------------------ write

    def _write(self, model: LoadedModel, held: samples.SampleSet) -> None:
        sel = self.selected
        assert sel and sel.artifact and sel.candidate.performance
        stage = self.work / "stage"
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        spec = ModelSpec(
            name=self.opts.model_name, inputs=[t.triton() for t in model.inputs],
            outputs=[t.triton() for t in model.outputs],
            max_batch_size=self.opt.max_batch_size, gpu=self.device.startswith("cuda"),
            preferred_batch_sizes=benchmark.preferred_batch_sizes(sel.candidate.performance),
            warmup=tensors.warmup_samples(model.inputs, held.batch(1)), cpu_threads=0,
        )
        if self.target == "tensorrt":
            repository.write_tensorrt(stage, spec, sel.artifact)
        else:
            repository.write_onnxruntime(stage, spec, sel.artifact)
        (stage / "report.json").write_text(self.report().model_dump_json(by_alias=True, indent=2,
                                                                          exclude_none=True))
        sources.publish(stage, self.opts.output)
