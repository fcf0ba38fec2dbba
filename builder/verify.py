"""The accuracy gate: compare a candidate's outputs with the FP32 reference on a sample set (selection or report).

Metrics (``optimization.accuracy.metric``):
- cosine: per-sample cosine similarity of the flattened output, reported as the minimum over
  samples (the worst sample decides, not the average);
- max-abs: the largest absolute difference anywhere;
- top1-agreement: the fraction of argmax (last axis) positions that agree.
The gate looks at every output the engine serves, and holds for the worst of them: a text
encoder's pooled ``sentence_embedding`` agreeing must not hide a ``last_hidden_state`` that does
not, since clients may read either. Per-token outputs are compared on real tokens only (the
attention mask): padding positions carry no meaning, clients mask them out, and counting them
would let the padding length, not the model, decide the score. ``per_output`` reports each
output. NaN/inf never pass.
"""

from __future__ import annotations

import math

import numpy as np

from optimodel.api.report import AccuracyResult


def cosine_min(ref: np.ndarray, out: np.ndarray) -> float:
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = out.reshape(len(out), -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(both_zero, 1.0, dot / (na * nb))
    cos = np.where(np.isfinite(cos), cos, -1.0)
    return float(np.clip(cos, -1.0, 1.0).min())


def max_abs(ref: np.ndarray, out: np.ndarray) -> float:
    diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
    return float(diff.max()) if np.isfinite(diff).all() else math.inf


def top1_agreement(ref: np.ndarray, out: np.ndarray, positions: np.ndarray | None = None) -> float:
    """Fraction of argmax (last axis) positions that agree; ``positions`` (bool, broadcastable to
    the argmax's shape) limits it to real tokens."""
    agree = ref.argmax(axis=-1) == out.argmax(axis=-1)
    if positions is None:
        return float(agree.mean())
    positions = np.broadcast_to(positions, agree.shape)
    return float(agree[positions].mean() if positions.any() else agree.mean())


def real_tokens(ref: np.ndarray, token_mask: np.ndarray | None) -> np.ndarray | None:
    """For a per-token output (``[N, T, ...]`` matching the ``[N, T]`` mask): the mask as bools,
    shaped to broadcast over the output's trailing axes. None for other outputs."""
    if token_mask is None or ref.ndim < 3 or ref.shape[:2] != token_mask.shape:
        return None
    return token_mask.astype(bool).reshape(token_mask.shape + (1,) * (ref.ndim - 2))


METRICS = {"cosine": cosine_min, "max-abs": max_abs, "top1-agreement": top1_agreement}
LOWER_IS_BETTER = {"max-abs"}


def passes(metric: str, value: float, threshold: float) -> bool:
    if not math.isfinite(value):
        return False
    return value <= threshold if metric in LOWER_IS_BETTER else value >= threshold


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            metric: str, threshold: float, token_mask: np.ndarray | None = None) -> AccuracyResult:
    """One AccuracyResult: the gate value (the worst over every served output), and each output's.
    ``token_mask``: the samples' attention mask, for text models."""
    fn = METRICS[metric]
    per_output = {}
    for name, ref in reference.items():
        out = candidate.get(name)
        if out is None or out.shape != ref.shape:
            per_output[name] = math.inf if metric in LOWER_IS_BETTER else -1.0
            continue
        keep = real_tokens(ref, token_mask)
        if keep is None:
            per_output[name] = fn(ref, out)
        elif metric == "top1-agreement":  # padding positions are dropped
            per_output[name] = top1_agreement(ref, out, keep[..., 0])
        else:  # zeroed in both: nothing to a cosine's dot product or norms, no max-abs difference
            per_output[name] = fn(np.where(keep, ref, 0), np.where(keep, out, 0))
    values = list(per_output.values())
    value = max(values) if metric in LOWER_IS_BETTER else min(values)
    samples = len(next(iter(reference.values())))
    return AccuracyResult(metric=metric, value=_json_safe(value), threshold=threshold,
                          passed=passes(metric, value, threshold), samples=samples,
                          per_output={k: _json_safe(v) for k, v in per_output.items()})


def worst(results: list[AccuracyResult], metric: str) -> AccuracyResult:
    """The least accurate of several evaluations of one candidate (e.g. per batch composition)."""
    key = (lambda r: -r.value) if metric in LOWER_IS_BETTER else (lambda r: r.value)
    return min(results, key=key)


def _json_safe(value: float) -> float:
    """JSON has no inf/NaN: clamp to a huge finite value that still fails every gate."""
    if math.isnan(value) or math.isinf(value):
        return 1e30 if (math.isinf(value) and value > 0) or math.isnan(value) else -1e30
    return float(value)
