"""TensorRT engines vs PyTorch eager FP32 on a GPU: a ResNet-50-shaped CNN and a BERT-base encoder.

Uses the builder's own pieces (ONNX export, FP16/BF16 graph conversion, static INT8 Q/DQ,
strongly typed TensorRT engine build, the TensorRT runner and the stable-window benchmark), so
the numbers are what `optimodel build --target tensorrt` would measure. torchvision is not a
dependency: the ResNet-50 shape (bottleneck stages 3-4-6-3, 224x224) is built in code; the BERT
model is `transformers.BertModel` from a default (base) config with random weights, sequence 128.
Weights are random, so accuracy columns only show that the engine computes the same function
(cosine vs eager FP32 on the same inputs); INT8 uses synthetic calibration.

    PYTHONSAFEPATH=1 $(hack/python-env.sh)/bin/python bench/tensorrt_vs_eager.py [--quick]

Exits with status 2 and a message when there is no CUDA GPU or no `tensorrt` package.
Results: bench/results/tensorrt_vs_eager.md (also printed).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "tensorrt_vs_eager.md"


def resnet50_like():
    """ResNet-50's layout (bottlenecks 3-4-6-3, widths 256..2048) without torchvision."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = mid * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(mid),
                nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.body(x) + self.skip(x))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, mid, stride if i == 0 else 1))
            cin = mid * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    torch.manual_seed(0)
    return nn.Sequential(*layers).eval()


def bert_like():
    import torch
    from transformers import BertConfig, BertModel

    class Encoder(torch.nn.Module):
        def __init__(self, attention: str):
            super().__init__()
            torch.manual_seed(0)
            self.bert = BertModel(BertConfig(attn_implementation=attention), add_pooling_layer=False).eval()

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    # The baseline is timed as PyTorch runs BERT by default (SDPA attention), as the builder's
    # loader does; the export uses eager attention (plain MatMul/Softmax, which TensorRT fuses
    # itself), with the same weights.
    timed, export = Encoder("sdpa").eval(), Encoder("eager").eval()
    export.load_state_dict(timed.state_dict())
    return timed, export


def gpu_or_exit():
    try:
        import torch
    except ImportError:
        raise SystemExit("tensorrt_vs_eager: torch is not installed") from None
    if not torch.cuda.is_available():
        print("tensorrt_vs_eager: no CUDA GPU visible (torch.cuda.is_available() is false); this "
              "benchmark needs an NVIDIA GPU and the tensorrt package. Nothing measured.", file=sys.stderr)
        raise SystemExit(2)
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        print(f"tensorrt_vs_eager: the tensorrt package is not importable ({exc}); install the "
              "project's `tensorrt` extra. Nothing measured.", file=sys.stderr)
        raise SystemExit(2) from None


def measure(name, module, inputs, samples_fn, batches, work: Path, cfg, max_batch, seq_len=None,
            max_seq_len=None, export_module=None):
    """Export once, build one engine per precision, profile each against eager FP32: over the
    batch sweep, and (text) at the headline batch at other sequence lengths, since an engine is
    tuned for its profile's opt shape (``seq_len``) and serves every length up to ``max_seq_len``.
    INT8 is the builder's own tensorrt-int8-qdq recipe (SmoothQuant, per-channel weights, FFN
    down-projections and attention products in FP32), not plain per-tensor Q/DQ."""
    import torch

    from optimodel.builder import benchmark, compress, recipes, verify
    from optimodel.builder.export import export_onnx
    from optimodel.builder.loader import LoadedModel
    from optimodel.builder.runners import TorchRunner
    from optimodel.builder.samples import SampleSet
    from optimodel.builder.tensorrt_engine import TrtRunner, build_engine
    from optimodel.builder.tensors import TensorInfo

    device = f"cuda ({torch.cuda.get_device_name(0)})"
    held = SampleSet(samples_fn(64), "synthetic")
    outputs = [TensorInfo("output", "FP32", (-1, 1000) if seq_len is None else (-1, -1, 768))]
    model = LoadedModel(format="torchscript", path=work, inputs=inputs, outputs=outputs,
                        baseline_runtime="pytorch-eager-fp32",
                        module=module, export_module=export_module or module, seq_len=seq_len,
                        max_seq_len=max_seq_len or seq_len)
    onnx_path = export_onnx(model, held.batch(2), work / f"{name}.onnx")
    eager = TorchRunner(module, [i.name for i in inputs], ["output"], device)
    headline = benchmark.headline_batch(batches)
    lengths = benchmark.sequence_lengths(seq_len, max_seq_len)
    rows = [("pytorch-eager-fp32", benchmark.profile(eager, held, batches, headline, cfg, lengths), 1.0)]
    (int8,) = [r for r in recipes.RECIPES if r.name == "tensorrt-int8-qdq"]
    int8_inputs = recipes.Inputs(graph=onnx_path, base=onnx_path, calibration=samples_fn(32), threads=4)
    reference = eager(held.batch(16))
    graphs = {
        "tensorrt-fp32": onnx_path,
        "tensorrt-fp16": compress.to_fp16(onnx_path, work / f"{name}-fp16.onnx"),
        "tensorrt-bf16": compress.to_bf16(onnx_path, work / f"{name}-bf16.onnx"),
        "tensorrt-int8-qdq": int8.make(int8_inputs, work / f"{name}-int8.onnx")[0],
    }
    for label, graph in graphs.items():
        plan = work / f"{name}-{label}.plan"
        try:
            build_engine(graph, plan, inputs, max_batch=max_batch, opt_batch=headline, seq_len=seq_len,
                         max_seq_len=max_seq_len or seq_len, timing_cache=work / "timing.cache")
        except Exception as exc:  # report and go on with the other precisions
            print(f"{name} {label}: engine build failed: {exc}", file=sys.stderr)
            continue
        runner = TrtRunner(plan, device)
        cos = verify.cosine_min(reference["output"], runner(held.batch(16))["output"])
        rows.append((label, benchmark.profile(runner, held, batches, headline, cfg, lengths), cos))
    return rows


def render(name: str, rows) -> str:
    """The batch sweep, then (text models) the shape sweep, each row against eager at the same shape."""
    base = rows[0][1]

    def table(stats_of, key, first_column: str, cosine: bool) -> list[str]:
        lines = [f"| engine | {first_column} | throughput (samples/s) | p50 ms | p99 ms | speedup vs eager |"
                 + (" cosine vs eager |" if cosine else ""),
                 "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if cosine else "")]
        for label, perf, cos in rows:
            for s in stats_of(perf):
                b = next(x for x in stats_of(base) if key(x) == key(s))
                lines.append(f"| {label} | {key(s)} | {s.throughput:.1f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | "
                             f"{s.throughput / b.throughput:.2f}x |" + (f" {cos:.5f} |" if cosine else ""))
        return lines

    lines = [f"### {name}", ""] + table(lambda p: p.sweep, lambda s: s.batch_size, "batch", cosine=True)
    if base.shapes:
        lines += ["", f"Shape sweep at batch {base.headline.batch_size}: the same engines at other sequence "
                      "lengths (their profile's opt shape is the benchmark length above):", ""]
        lines += table(lambda p: p.shapes, lambda s: s.sequence_length, "sequence", cosine=False)
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timing windows")
    args = parser.parse_args(argv)
    gpu_or_exit()
    import tensorrt as trt
    import torch

    from optimodel.builder.benchmark import BenchConfig
    from optimodel.builder.tensors import TensorInfo

    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    rng = np.random.default_rng(0)
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench-trt-") as tmp:
        work = Path(tmp)
        resnet_inputs = [TensorInfo("input", "FP32", (-1, 3, 224, 224))]
        rows = measure("resnet50-like", resnet50_like(), resnet_inputs,
                       lambda n: {"input": rng.standard_normal((n, 3, 224, 224)).astype(np.float32)},
                       [1, 8, 32, 128], work, cfg, max_batch=128)
        sections.append(render("ResNet-50-shaped CNN (224x224, random weights)", rows))
        print(sections[-1], flush=True)

        seq = 128
        bert_inputs = [TensorInfo("input_ids", "INT64", (-1, -1)), TensorInfo("attention_mask", "INT64", (-1, -1))]
        timed, export = bert_like()
        rows = measure("bert-base-like", timed, bert_inputs,
                       lambda n: {"input_ids": rng.integers(1000, 30000, (n, seq)).astype(np.int64),
                                  "attention_mask": np.ones((n, seq), np.int64)},
                       [1, 8, 32, 128], work, cfg, max_batch=128, seq_len=seq, max_seq_len=512,
                       export_module=export)
        sections.append(render(f"BERT-base-shaped encoder (BertModel, SDPA baseline, sequence {seq}, "
                               "random weights)", rows))
        print(sections[-1], flush=True)
    props = torch.cuda.get_device_properties(0)
    header = ["# TensorRT engines vs PyTorch eager FP32", "",
              f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
              f"`bench/tensorrt_vs_eager.py` on {props.name} (sm {props.major}.{props.minor}), "
              f"TensorRT {trt.__version__}, torch {torch.__version__}. Strongly typed engines; FP16/BF16 "
              "from converted ONNX graphs, INT8 from Q/DQ nodes with synthetic calibration.", ""]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(header + sections))
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
