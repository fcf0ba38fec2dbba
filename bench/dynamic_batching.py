"""Dynamic batching on vs off: a real local Triton serving the built MiniLM, 16 clients.

Usage (from anywhere but the repository root, with the project's venv):

    python bench/dynamic_batching.py [--build DIR] [--concurrency 16] [--requests 192] [--repeats 3]
                                     [--threads 1]

``--build`` is an ``optimodel build`` output directory; by default the demo's cached build of
all-MiniLM-L6-v2 is used (built first if missing). The two serving configurations are produced
exactly as a Triton pod gets them: ``stage-repository``'s ``stage_repository``/``apply_serving``
with ``spec.serving.dynamicBatching.enabled`` true (defaults: max queue delay 100 us) or false,
Python-backend layout, one CPU instance. For each, after a warm-up burst, ``--repeats`` bursts of
``--requests`` single-sentence requests (seq 128) from ``--concurrency`` clients are timed; the
table reports medians. Writes ``bench/results/dynamic_batching.md`` and prints it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "dynamic_batching.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=None, help="optimodel build output directory")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=192, help="requests per timed burst")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="ONNX Runtime intra-op threads per model instance (default 1: on a "
                             "small shared CPU, multi-threaded ops straggle when a core is taken "
                             "away, which punishes big batches; -1 = keep the build's setting)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 0:
        args.threads = None

    from optimodel.api.spec import Serving
    from optimodel.serving import demo
    from optimodel.serving.loadgen import burst, median
    from optimodel.triton.config import parse_config, render_config
    from optimodel.triton.local import LocalTriton
    from optimodel.triton.stage import stage_repository

    model_path = demo.minilm_dir()
    if args.build is None:
        work = Path(os.environ.get("OPTIMODEL_CACHE", Path.home() / ".cache" / "optimodel")) / "demo"
        args.build = demo.ensure_build(work, demo.build_spec(model_path), log=print)
    variants = {"on": True, "off": False}
    names = {label: f"{demo.MODEL_NAME}_batching_{label}" for label in variants}
    results: dict[str, list] = {label: [] for label in variants}
    with tempfile.TemporaryDirectory(prefix="optimodel-bench-") as tmp:
        # One server, both configurations as two models: bursts alternate between them, so
        # the other work on this shared machine weighs on both alike.
        repo = Path(tmp) / "repository"
        for label, enabled in variants.items():
            serving = Serving.model_validate({"dynamicBatching": {"enabled": enabled}})
            model_dir = stage_repository(str(args.build), repo, names[label], serving, layout="python")
            if args.threads is not None:  # read by the builder's model.py (ONNX Runtime intra-op)
                cfg = parse_config((model_dir / "config.pbtxt").read_text())
                cfg.parameters["intra_op_thread_count"].string_value = str(args.threads)
                (model_dir / "config.pbtxt").write_text(render_config(cfg))
        configs = {label: parse_config((repo / names[label] / "config.pbtxt").read_text())
                   for label in variants}
        config = configs["on"]
        output = demo._embedding_output(config)
        seq_len = demo._seq_len(config, args.seq_len)
        tokens = demo.Tokenized(model_path, config, demo.DEFAULT_SENTENCES, seq_len)
        rows = tokens.rows()
        load = [rows[i % len(rows)] for i in range(args.requests)]
        with LocalTriton(repo, list(names.values()), ready_timeout=300) as triton:
            for label in variants:  # warm-up
                burst(triton, names[label], load[: 2 * args.concurrency], [output], args.concurrency)
            for repeat in range(args.repeats):
                for label in variants:
                    result = burst(triton, names[label], load, [output], args.concurrency)
                    if result.errors:
                        print(f"{len(result.errors)} requests failed: {result.errors[0]}",
                              file=sys.stderr)
                        return 1
                    results[label].append(result)
                    print(f"repeat {repeat + 1}/{args.repeats} dynamic batching {label}: "
                          f"{result.throughput:.1f} req/s, p50 {result.p50_ms:.0f} ms, "
                          f"p99 {result.p99_ms:.0f} ms, avg batch {result.avg_batch:.1f}", flush=True)
    rows_out = []
    for label in variants:
        runs = results[label]
        config = configs[label]
        rows_out.append({
            "label": label,
            "delay": (f"{config.dynamic_batching.max_queue_delay_microseconds} us"
                      if config.HasField("dynamic_batching") else "-"),
            "throughput": median([r.throughput for r in runs]),
            "p50": median([r.p50_ms for r in runs]),
            "p99": median([r.p99_ms for r in runs]),
            "batch": median([r.avg_batch for r in runs]),
            "pending": median([r.max_pending for r in runs]),
            "spread": (min(r.throughput for r in runs), max(r.throughput for r in runs)),
        })

    on, off = rows_out
    from optimodel.api.report import BuildReport

    report = BuildReport.model_validate_json((args.build / "report.json").read_text())
    selected = next((c for c in report.candidates if c.name == report.selected), None)
    sweep = ", ".join(f"batch {x.batch_size}: {x.throughput:.0f} seq/s"
                      for x in (selected.performance.sweep if selected and selected.performance else []))
    lines = [
        "# Dynamic batching on vs off (local Triton, CPU)",
        "",
        f"all-MiniLM-L6-v2 from `optimodel build` ({args.build.name}), Python-backend repository "
        f"staged twice with `stage-repository` (dynamic batching on / off, 1 CPU instance each) and "
        f"served by one Triton 2.51.0 (pytriton wheel); timed bursts alternate between the two. "
        f"One sentence (seq {seq_len}) "
        f"per request, {args.requests} requests per burst (gRPC, {args.concurrency} in flight); medians of "
        f"{args.repeats} bursts each after a warm-up. ONNX Runtime intra-op threads per instance: "
        f"{args.threads if args.threads is not None else 'as built'}.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other work "
        f"(load average {os.getloadavg()[0]:.1f} at the end), "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        f"Engine alone, from the build report ({report.selected}, ONNX Runtime in-process, "
        f"threads as built): {sweep or 'n/a'}.",
        "",
        "| dynamic batching | max queue delay | throughput (req/s) | p50 latency (ms) | p99 latency (ms) "
        "| avg batch (Triton) | max pending (Triton) | throughput min..max |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows_out:
        lines.append(f"| {row['label']} | {row['delay']} | {row['throughput']:.1f} | {row['p50']:.0f} | "
                     f"{row['p99']:.0f} | {row['batch']:.1f} | {row['pending']:.0f} | "
                     f"{row['spread'][0]:.1f}..{row['spread'][1]:.1f} |")
    lines += ["", f"Speedup from dynamic batching: {on['throughput'] / off['throughput']:.2f}x throughput, "
                  f"p50 latency ratio off/on {off['p50'] / on['p50']:.2f}.", ""]
    if on["throughput"] < off["throughput"]:
        lines += [
            "Reading (not measured separately): on 2 shared cores with one Python-backend instance, "
            "batch-1 executions overlap with Triton's, gRPC's and the client's work on the other "
            "core, while a formed batch runs on one core with all its requests waiting; the "
            "engine's own batch gain at seq 128 is modest (see the sweep above), so the overlap "
            "wins. Dynamic batching pays off where one execution has more parallel hardware "
            "than one sequence can use (GPU, TensorRT).", ""]
    text = "\n".join(lines)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
