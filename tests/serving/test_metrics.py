"""The queue-depth metric and autoscaler queries: exact strings (what the operator writes)."""

from __future__ import annotations

import pytest

from optimodel.triton import metrics
from optimodel.triton.metrics import (
    PENDING_REQUESTS_METRIC,
    adapter_rule,
    hpa_pods_metric,
    keda_query,
    promql_string,
    quantity,
    render_adapter_query,
)


def test_metric_name_is_tritons_pending_request_gauge():
    assert PENDING_REQUESTS_METRIC == "nv_inference_pending_request_count"


def test_keda_query_sums_one_models_pods_in_one_namespace():
    assert keda_query("ml", "minilm") == \
        'sum(nv_inference_pending_request_count{namespace="ml",model="minilm"})'


def test_adapter_rule_is_a_pods_metric_keyed_by_namespace_and_pod():
    assert adapter_rule() == {
        "seriesQuery": 'nv_inference_pending_request_count{namespace!="",pod!=""}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"},
                                    "pod": {"resource": "pod"}}},
        "name": {"matches": "^nv_inference_pending_request_count$",
                 "as": "nv_inference_pending_request_count"},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
    }


@pytest.mark.parametrize(("pods", "model", "expected"), [
    (["minilm-7d9f-abcde"], None,
     'sum(nv_inference_pending_request_count{namespace="ml",pod="minilm-7d9f-abcde"}) by (pod)'),
    (["p1", "p2"], None,
     'sum(nv_inference_pending_request_count{namespace="ml",pod=~"p1|p2"}) by (pod)'),
    # metric.selector matchers come first, as in prometheus-adapter's metricsQuery.Build
    (["p1", "p2"], "minilm",
     'sum(nv_inference_pending_request_count{model="minilm",namespace="ml",pod=~"p1|p2"}) by (pod)'),
])
def test_render_adapter_query_matches_prometheus_adapter(pods, model, expected):
    assert render_adapter_query(adapter_rule(), "ml", pods, model=model) == expected


def test_render_adapter_query_follows_the_rules_labels_and_template():
    rule = adapter_rule() | {
        "resources": {"overrides": {"kubernetes_namespace": {"resource": "namespace"},
                                    "kubernetes_pod_name": {"resource": "pod"}}},
        "metricsQuery": "max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
    }
    assert render_adapter_query(rule, "ns", ["a"]) == (
        'max(nv_inference_pending_request_count{kubernetes_namespace="ns",'
        'kubernetes_pod_name="a"}) by (kubernetes_pod_name)')
    with pytest.raises(ValueError, match="unsupported template action"):
        render_adapter_query(adapter_rule() | {"metricsQuery": "<<.LabelValuesByName>>"}, "ns", ["a"])
    with pytest.raises(ValueError, match="at least one pod"):
        render_adapter_query(adapter_rule(), "ns", [])


def test_values_are_quoted_like_go():
    assert promql_string('a"b\\c\n') == '"a\\"b\\\\c\\n"'
    assert keda_query('x"y', "m") == 'sum(nv_inference_pending_request_count{namespace="x\\"y",model="m"})'


def test_hpa_metric_targets_average_pending_requests_per_pod():
    assert hpa_pods_metric(4) == {
        "type": "Pods",
        "pods": {"metric": {"name": "nv_inference_pending_request_count"},
                 "target": {"type": "AverageValue", "averageValue": "4"}},
    }
    # the API server's canonical form, so the HPA the operator applies reads back unchanged
    assert hpa_pods_metric(2.5)["pods"]["target"]["averageValue"] == "2500m"


@pytest.mark.parametrize("value,text", [(4, "4"), (2.5, "2500m"), (0.1, "100m"), (10.0, "10")])
def test_quantity(value, text):
    assert quantity(value) == text


def test_module_needs_only_the_standard_library():
    # The operator image imports this module: no third-party imports at module level.
    import ast
    import sys
    from pathlib import Path

    tree = ast.parse(Path(metrics.__file__).read_text())
    top = {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    top |= {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert top - {"__future__"} <= set(sys.stdlib_module_names)
