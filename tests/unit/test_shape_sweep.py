"""The shape sweep: which sequence lengths an engine is also timed at, and how samples get there."""

from __future__ import annotations

import numpy as np
import pytest

from optimodel.builder import benchmark
from optimodel.builder.samples import SampleSet


@pytest.mark.parametrize(("seq_len", "max_seq_len", "expected"), [
    (128, 512, [32, 64, 256]),  # MiniLM as the builder loads it: a quarter, a half, twice
    (128, 200, [32, 64, 200]),  # twice would pass the model's limit: the limit
    (16, 512, [8, 32]),  # never below 8 tokens; a quarter and a half collapse into one
    (128, 128, []),  # a fixed sequence axis (an ONNX source's shape) cannot be fed anything else
    (None, None, []),  # not a text model
])
def test_sequence_lengths(seq_len, max_seq_len, expected):
    assert benchmark.sequence_lengths(seq_len, max_seq_len) == expected


def test_at_length_cuts_and_pads_the_token_axis_only():
    ids = np.arange(12, dtype=np.int64).reshape(2, 6) + 1
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "scale": np.array([0.5, 2.0])}
    short = SampleSet(feeds, "builtin-sentences").at_length(4)
    assert short.feeds["input_ids"].tolist() == [[1, 2, 3, 4], [7, 8, 9, 10]]
    assert short.feeds["attention_mask"].shape == (2, 4)
    assert short.feeds["scale"] is feeds["scale"]  # no token axis: untouched
    long = SampleSet(feeds, "builtin-sentences").at_length(8)
    assert long.feeds["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 0, 0], [7, 8, 9, 10, 11, 12, 0, 0]]
    assert long.feeds["attention_mask"][:, 6:].sum() == 0  # the padding is masked out
    assert long.source == "builtin-sentences"


def test_profile_times_the_headline_batch_at_each_length():
    class Echo:
        """A runner that records the shapes it is given."""
        runtime, device = "echo", "cpu"

        def __init__(self):
            self.seen: list[tuple[int, ...]] = []

        def prepare(self, feeds):
            return feeds["input_ids"]

        def run_prepared(self, prepared):
            self.seen.append(prepared.shape)
            return [prepared]

    held = SampleSet({"input_ids": np.ones((4, 16), np.int64)}, "synthetic")
    runner = Echo()
    perf = benchmark.profile(runner, held, [1, 2], 2, benchmark.BenchConfig.quick(), lengths=[8, 32])
    assert [s.batch_size for s in perf.sweep] == [1, 2] and perf.headline.sequence_length is None
    assert [(s.batch_size, s.sequence_length) for s in perf.shapes] == [(2, 8), (2, 32)]
    assert {(2, 8), (2, 32), (1, 16), (2, 16)} <= set(runner.seen)  # each shape really ran
