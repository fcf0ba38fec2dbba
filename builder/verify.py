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
    """Fraction of argmax (last axis) positions that agree; ``positions`` (bool, the argmax's
    shape) limits it to real tokens."""
    agree = ref.argmax(axis=-1) == out.argmax(axis=-1)
    return float(agree[positions].mean() if positions is not None and positions.any() else agree.mean())


def _positions(ref: np.ndarray, token_mask: np.ndarray | None) -> np.ndarray | None:
    if token_mask is None or ref.ndim < 3 or ref.shape[:2] != token_mask.shape:
        return None
    return np.broadcast_to(token_mask.astype(bool).reshape(token_mask.shape + (1,) * (ref.ndim - 3)),
                           ref.shape[:-1])


METRICS = {"cosine": cosine_min, "max-abs": max_abs, "top1-agreement": top1_agreement}
LOWER_IS_BETTER = {"max-abs"}


def passes(metric: str, value: float, threshold: float) -> bool:
    if not math.isfinite(value):
        return False
    return value <= threshold if metric in LOWER_IS_BETTER else value >= threshold


def only_real_tokens(ref: np.ndarray, out: np.ndarray, token_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``ref`` and ``out`` with padding positions set equal (zero) in both, for per-token outputs
    (shape ``[N, T, ...]`` matching the ``[N, T]`` mask); other outputs unchanged.

    Zeroed in both, a position adds nothing to a cosine's dot product or norms and no difference
    to max-abs; top-1 agreement drops those positions instead (see ``top1_agreement``).
    """
    if token_mask is None or ref.ndim < 3 or ref.shape[:2] != token_mask.shape:
        return ref, out
    keep = token_mask.astype(bool).reshape(token_mask.shape + (1,) * (ref.ndim - 2))
    return np.where(keep, ref, 0), np.where(keep, out, 0)


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
        if metric == "top1-agreement":
            per_output[name] = top1_agreement(ref, out, _positions(ref, token_mask))
        else:
            per_output[name] = fn(*only_real_tokens(ref, out, token_mask))
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
