"""Latency and throughput over a batch sweep, measured until the numbers are stable.

Method (from Triton Model Navigator's profiler): at each batch size, warm up, then run timed
windows of back-to-back inferences; stop once three consecutive windows agree within 10%
(relative spread of their throughputs), or at a repeat cap. p50/p99 come from the per-call
latencies of those last three windows; throughput is their mean. Inputs are converted to the
runtime's buffers before timing, for baseline and candidates alike.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from optimodel.api.report import LatencyStats, PerformanceProfile, SpeedupCheck
from optimodel.builder.runners import Runner
from optimodel.builder.samples import SampleSet

log = logging.getLogger("optimodel.builder")

STABLE_WINDOWS = 3
TOLERANCE = 0.10


@dataclass(frozen=True)
class BenchConfig:
    window_s: float = 1.0
    warmup_calls: int = 3
    max_repeats: int = 10
    min_calls_per_window: int = 3

    @classmethod
    def quick(cls) -> "BenchConfig":
        return cls(window_s=0.25, warmup_calls=1, max_repeats=5, min_calls_per_window=2)


def default_sweep(max_batch: int) -> list[int]:
    """1, 8 and 32 capped at the engine's maximum batch (CPU-friendly; --batch-sizes overrides)."""
    return sorted({1, min(8, max_batch), min(32, max_batch)})


def headline_batch(sweep: list[int]) -> int:
    """The batch size quoted in the summary: the largest at most 8, else the smallest."""
    small = [b for b in sweep if b <= 8]
    return max(small) if small else min(sweep)


def _window(runner: Runner, prepared, calls: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        runner.run_prepared(prepared)
    return batch * calls / (time.perf_counter() - start)


def _calls_per_window(runner: Runner, prepared, cfg: BenchConfig) -> int:
    """Warm up, then size a window from one timed call so that it lasts about ``window_s``."""
    for _ in range(cfg.warmup_calls):
        runner.run_prepared(prepared)
    t0 = time.perf_counter()
    runner.run_prepared(prepared)
    return max(cfg.min_calls_per_window, int(cfg.window_s / max(time.perf_counter() - t0, 1e-6)))


def sequence_lengths(seq_len: int | None, max_seq_len: int | None) -> list[int]:
    """Sequence lengths besides ``seq_len`` to time a text engine at: a quarter, a half and
    (within the model's limit) twice the benchmark length. An engine tuned for one shape
    (TensorRT's optimization profile ``opt``) can be much slower at others, and requests come in
    every length. Empty unless the sequence axis is dynamic up to ``max_seq_len > seq_len``
    (an ONNX source's fixed shape cannot be fed anything else)."""
    if not seq_len or not max_seq_len or max_seq_len <= seq_len:
        return []
    lengths = {max(8, seq_len // 4), max(8, seq_len // 2), min(max_seq_len, 2 * seq_len)}
    return sorted(n for n in lengths if n != seq_len)


def measure_batch(runner: Runner, samples: SampleSet, batch: int, cfg: BenchConfig,
                  sequence_length: int | None = None) -> LatencyStats:
    if sequence_length is not None:
        samples = samples.at_length(sequence_length)
    prepared = runner.prepare(samples.batch(batch))
    calls = _calls_per_window(runner, prepared, cfg)
    windows: list[tuple[float, list[float]]] = []
    while True:
        lat = []
        start = time.perf_counter()
        for _ in range(calls):
            c0 = time.perf_counter()
            runner.run_prepared(prepared)
            lat.append(time.perf_counter() - c0)
        elapsed = time.perf_counter() - start
        windows.append((batch * calls / elapsed, lat))
        if len(windows) >= STABLE_WINDOWS:
            last = [w[0] for w in windows[-STABLE_WINDOWS:]]
            if (max(last) - min(last)) / max(last) <= TOLERANCE or len(windows) >= cfg.max_repeats:
                break
    last = windows[-STABLE_WINDOWS:]
    if (max(w[0] for w in last) - min(w[0] for w in last)) / max(w[0] for w in last) > TOLERANCE:
        log.warning("%s batch %d: throughput did not stabilise within %d windows",
                    runner.runtime, batch, cfg.max_repeats)
    lat_ms = np.array([x for w in last for x in w[1]]) * 1000.0
    return LatencyStats(
        batch_size=batch, sequence_length=sequence_length,
        p50_ms=round(float(np.percentile(lat_ms, 50)), 3),
        p99_ms=round(float(np.percentile(lat_ms, 99)), 3),
        throughput=round(float(np.mean([w[0] for w in last])), 2),
        repeats=len(windows),
    )


def profile(runner: Runner, samples: SampleSet, sweep: list[int], headline: int,
            cfg: BenchConfig, lengths: list[int] = ()) -> PerformanceProfile:
    """The full sweep for one runner (baseline or candidate): every batch size, then the headline
    batch at each of ``lengths`` (sequence lengths other than the samples')."""
    stats = []
    for batch in sweep:
        s = measure_batch(runner, samples, batch, cfg)
        log.info("  %-34s batch %3d: %8.1f/s  p50 %7.2f ms  p99 %7.2f ms  (%d windows)",
                 runner.runtime, batch, s.throughput, s.p50_ms, s.p99_ms, s.repeats)
        stats.append(s)
    head = next(s for s in stats if s.batch_size == headline)
    shapes = []
    for length in lengths:
        s = measure_batch(runner, samples, headline, cfg, sequence_length=length)
        log.info("  %-34s batch %3d, %4d tokens: %8.1f/s  p50 %7.2f ms", runner.runtime, headline, length,
                 s.throughput, s.p50_ms)
        shapes.append(s)
    return PerformanceProfile(runtime=runner.runtime, device=runner.device, sweep=stats, headline=head,
                              shapes=shapes)


def preferred_batch_sizes(perf: PerformanceProfile) -> list[int]:
    """Batch sizes for Triton's dynamic batcher: the knee of the measured throughput curve.

    The smallest batch that reaches 90% of the best measured throughput (if above 1): waiting
    for larger batches buys little throughput and costs queueing latency.
    """
    best = max(s.throughput for s in perf.sweep)
    for s in sorted(perf.sweep, key=lambda s: s.batch_size):
        if s.throughput >= 0.9 * best:
            return [s.batch_size] if s.batch_size > 1 else []
    return []


def speedup_check(engine: Runner, baseline: Runner, samples: SampleSet, batch: int, cfg: BenchConfig,
                  pairs: int = 6) -> SpeedupCheck:
    """Engine vs baseline in alternating windows (B E, E B, B E, ...): one ratio per pair, the
    speedup their median. Drifting load (another pod, a thermal limit) hits both sides of a pair
    alike, and one disturbed pair moves a median little."""
    feeds = samples.batch(batch)
    runners = {"baseline": baseline, "engine": engine}
    prepared = {k: r.prepare(feeds) for k, r in runners.items()}
    calls = {k: _calls_per_window(r, prepared[k], cfg) for k, r in runners.items()}
    seen: dict[str, list[float]] = {"baseline": [], "engine": []}
    ratios = []
    for i in range(pairs):
        for k in (("baseline", "engine") if i % 2 == 0 else ("engine", "baseline")):
            seen[k].append(_window(runners[k], prepared[k], calls[k], batch))
        ratios.append(seen["engine"][-1] / seen["baseline"][-1])
    check = SpeedupCheck(batch_size=batch, baseline_throughput=round(float(np.median(seen["baseline"])), 2),
                         engine_throughput=round(float(np.median(seen["engine"])), 2),
                         ratios=[round(r, 3) for r in ratios], speedup=round(float(np.median(ratios)), 3))
    log.info("  speedup check, batch %d: %s -> median %.2fx", batch, ", ".join(f"{r:.2f}" for r in check.ratios),
             check.speedup)
    return check
