"""The build key decides rebuilds: it must move exactly when the engine would differ."""

from __future__ import annotations

import pytest

from optimodel.api.key import build_key
from optimodel.api.spec import OptimizedModelSpec
from optimodel.operator import manifests as m
from optimodel.operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
BASE = {"model": {"uri": "s3://models/minilm/", "format": "huggingface"}}


def key(spec: dict, settings: OperatorSettings = SETTINGS) -> str:
    ref = m.ModelRef("minilm", "ml", "uid", OptimizedModelSpec.model_validate(spec))
    return build_key(m.build_spec(ref, settings))


def merged(**sections) -> dict:
    return {**BASE, **sections}


def test_key_is_deterministic_and_hex_sha256():
    assert key(BASE) == key(BASE)
    assert len(key(BASE)) == 64 and int(key(BASE), 16) >= 0


def test_spelled_out_defaults_give_the_same_key():
    explicit = merged(optimization={"precision": "auto", "target": "auto", "maxBatchSize": 64,
                                    "accuracy": {"metric": "cosine", "threshold": 0.99}})
    assert key(explicit) == key(BASE)


@pytest.mark.parametrize("edit", [
    {"serving": {"instancesPerGpu": 2, "dynamicBatching": {"maxQueueDelayMicroseconds": 500}}},
    {"serving": {"replicas": 3, "rollout": "GPUFrugal", "resources": {"cpu": "4"}}},
    {"autoscaling": {"maxReplicas": 9, "targetQueueDepth": 2, "engine": "keda"}},
    {"model": {**BASE["model"], "credentialsSecret": "other-creds"}},
], ids=["serving", "serving-2", "autoscaling", "credentials"])
def test_edits_that_do_not_change_the_engine_keep_the_key(edit):
    assert key({**BASE, **edit}) == key(BASE)


@pytest.mark.parametrize("edit", [
    {"model": {"uri": "s3://models/other/", "format": "huggingface"}},
    {"model": {**BASE["model"], "revision": "v2"}},
    {"optimization": {"precision": "fp16"}},
    {"optimization": {"maxBatchSize": 32}},
    {"optimization": {"accuracy": {"threshold": 0.999}}},
    {"optimization": {"sparsity": {"pattern": "2:4"}}},
    {"serving": {"gpu": {"product": "NVIDIA-L4"}}},
], ids=["uri", "revision", "precision", "batch", "threshold", "sparsity", "gpu-product"])
def test_edits_that_change_the_engine_change_the_key(edit):
    assert key({**BASE, **edit}) != key(BASE)


def test_builder_version_and_default_gpu_are_part_of_the_key():
    ref = m.ModelRef("minilm", "ml", "uid", OptimizedModelSpec.model_validate(BASE))
    spec = m.build_spec(ref, SETTINGS)
    assert build_key(spec, builder_version="0.0.1") != build_key(spec)
    assert key(BASE, OperatorSettings(default_gpu_product="NVIDIA-L4")) != key(BASE)
