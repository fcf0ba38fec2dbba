"""Triton's metrics: their names, the exact PromQL the autoscalers evaluate, and reading them.

Why one module: the operator writes these strings into KEDA ``ScaledObject``s, HPAs and the
chart's prometheus-adapter rule; the data-plane tests evaluate the *same* strings against a real
Prometheus scraping a real Triton. If they lived in two places, a test could pass while the
cluster scales on a query nobody ran. Standard library only: the operator image imports this.

Label contract (what the scrape adds, what Triton exposes):

- ``nv_inference_pending_request_count{model="<triton model>",version="1"}`` is Triton's
  per-model gauge of requests waiting in the scheduler queue (metrics port 8002). The ``model``
  label is Triton's own: it is the served model's name (``stage-repository --model-name``).
- ``namespace`` and ``pod`` are added by the PodMonitor/ServiceMonitor scrape relabeling
  (``__meta_kubernetes_namespace`` / ``__meta_kubernetes_pod_name``). The scrape must not add
  a target label called ``model``: with the default ``honor_labels: false`` it would push
  Triton's label aside to ``exported_model``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

PENDING_REQUESTS_METRIC = "nv_inference_pending_request_count"
"""Triton's per-model gauge of queued (not yet executing) requests: the queue depth."""

INFERENCE_COUNT_METRIC = "nv_inference_count"
"""Triton's per-model counter of inferences (batch rows: a request of batch 4 counts 4)."""

EXECUTION_COUNT_METRIC = "nv_inference_exec_count"
"""Triton's per-model counter of model executions (one per batch the scheduler formed)."""

NAMESPACE_LABEL = "namespace"
POD_LABEL = "pod"
MODEL_LABEL = "model"

ADAPTER_METRIC_NAME = PENDING_REQUESTS_METRIC
"""Name of the Pods metric the adapter serves (``custom.metrics.k8s.io``), the HPA's metric.name."""

ADAPTER_METRICS_QUERY = "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"


def promql_string(value: str) -> str:
    """A PromQL string literal, quoted as Go's ``%q`` does (what prometheus-adapter uses)."""
    out = []
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def keda_query(namespace: str, model: str) -> str:
    """PromQL for a KEDA Prometheus trigger: total pending requests of one model's pods.

    KEDA with ``metricType: AverageValue`` hands this value to the HPA as an external metric
    that the HPA divides by the current replica count, so ``threshold: <targetQueueDepth>``
    means "average pending requests per pod". An empty result (no pods scraped yet) is treated
    as 0 by KEDA's default ``ignoreNullValues: true``.
    """
    return (f"sum({PENDING_REQUESTS_METRIC}{{{NAMESPACE_LABEL}={promql_string(namespace)},"
            f"{MODEL_LABEL}={promql_string(model)}}})")


def adapter_rule() -> dict[str, Any]:
    """The prometheus-adapter rule serving ``nv_inference_pending_request_count`` per pod.

    Goes under ``rules:`` (the ``custom`` rules) of the adapter's config. An HPA
    ``autoscaling/v2`` metric ``{type: Pods, pods: {metric: {name: nv_inference_pending_request_count},
    target: {type: AverageValue, averageValue: <targetQueueDepth>}}}`` then reads one value per
    pod (summed over the models and versions a pod serves).
    """
    return {
        "seriesQuery": (f'{PENDING_REQUESTS_METRIC}{{{NAMESPACE_LABEL}!="",{POD_LABEL}!=""}}'),
        "resources": {
            "overrides": {
                NAMESPACE_LABEL: {"resource": "namespace"},
                POD_LABEL: {"resource": "pod"},
            },
        },
        "name": {"matches": f"^{PENDING_REQUESTS_METRIC}$", "as": ADAPTER_METRIC_NAME},
        "metricsQuery": ADAPTER_METRICS_QUERY,
    }


def quantity(value: float) -> str:
    """A Kubernetes quantity string, as the API server writes it back: 4 -> "4", 2.5 -> "2500m"."""
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def hpa_pods_metric(target_queue_depth: float) -> dict[str, Any]:
    """The ``autoscaling/v2`` HPA ``MetricSpec`` that reads the adapter's per-pod metric.

    The target is written in the API server's canonical form (``quantity``), so the HPA the
    operator applies reads back unchanged.
    """
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": ADAPTER_METRIC_NAME},
            "target": {"type": "AverageValue", "averageValue": quantity(target_queue_depth)},
        },
    }


_TEMPLATE_ACTION = re.compile(r"<<\s*(.*?)\s*>>")


def _label_for(rule: dict[str, Any], resource: str) -> str:
    for label, target in rule.get("resources", {}).get("overrides", {}).items():
        if target.get("resource") in (resource, f"{resource}s") and not target.get("group"):
            return label
    template = rule.get("resources", {}).get("template")
    if template:  # e.g. "kube_<<.Resource>>"
        return template.replace("<<.Resource>>", resource).replace("<<.Group>>", "")
    raise ValueError(f"adapter rule maps no label to the {resource} resource")


def _series_name(rule: dict[str, Any]) -> str:
    match = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"])
    if not match:
        raise ValueError(f"cannot read a series name from seriesQuery {rule['seriesQuery']!r}")
    return match.group(1)


def render_adapter_query(rule: dict[str, Any], namespace: str, pods: Sequence[str],
                         model: str | None = None) -> str:
    """The PromQL prometheus-adapter sends for a Pods-metric request on ``pods``.

    Mirrors ``metricsQuery.Build`` in prometheus-adapter's ``pkg/naming/metrics_query.go``:
    label matchers from the HPA's ``metric.selector`` come first (here: ``model`` when given),
    then ``namespace="<ns>"``, then the pod label -- ``pod="<p>"`` for one pod,
    ``pod=~"<p1>|<p2>"`` for several -- each value quoted like Go's ``%q``; ``GroupBy`` is the
    pod label. Only ``.Series``, ``.LabelMatchers`` and ``.GroupBy`` template fields are
    supported (those our rule uses).
    """
    if not pods:
        raise ValueError("a Pods metric request names at least one pod")
    matchers = []
    if model is not None:
        matchers.append(f"{MODEL_LABEL}={promql_string(model)}")
    matchers.append(f"{_label_for(rule, 'namespace')}={promql_string(namespace)}")
    pod_label = _label_for(rule, "pod")
    if len(pods) == 1:
        matchers.append(f"{pod_label}={promql_string(pods[0])}")
    else:
        matchers.append(f"{pod_label}=~{promql_string('|'.join(pods))}")
    fields = {".Series": _series_name(rule), ".LabelMatchers": ",".join(matchers),
              ".GroupBy": pod_label}

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) not in fields:
            raise ValueError(f"unsupported template action <<{match.group(1)}>> in metricsQuery")
        return fields[match.group(1)]

    return _TEMPLATE_ACTION.sub(substitute, rule["metricsQuery"])


# --------------------------------------------------------------------------------------------
# Reading Triton's metrics port (Prometheus text exposition)
# --------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition as ``(name, labels, value)``."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if not match:
            continue
        name, labels, value = match.groups()
        parsed = {k: bytes(v, "utf-8").decode("unicode_escape") for k, v in _LABEL.findall(labels or "")}
        samples.append((name, parsed, float(value)))
    return samples


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0.0 when none)."""
    return sum(v for n, lab, v in parse_metrics(text)
               if n == name and all(lab.get(k) == want for k, want in labels.items()))
