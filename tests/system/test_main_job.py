"""The main job on a real cluster: apply -> real build pod -> real Triton pods -> Ready.

Nothing here plays the kubelet: the builder pod runs `optimodel build` from the builder-cpu
image and writes to MinIO, its termination message drives the operator (itself a pod installed
by Helm), the Triton pod's init container stages the repository, tritonserver starts and its
probes pass, and a real request through the Service gets an embedding that agrees with PyTorch.
"""

from __future__ import annotations

import json
import time

import clusterstack
import numpy as np
import pytest
import realnode
from kubernetes import client
from polling import wait_for

pytestmark = [pytest.mark.node, pytest.mark.slow]

GROUP, VERSION, PLURAL = "optimodel.dev", "v1alpha1", "optimizedmodels"
UNSEEN = ["The ferry left the harbour an hour late.", "Quarterly revenue beat the forecast.",
          "She repaired the bicycle with a borrowed wrench.", "Snow closed the mountain pass overnight."]


def _model(custom, ns, name):
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def _condition(obj, type_):
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


def test_apply_builds_serves_and_answers(stack, model_namespace):
    api = stack.api()
    custom, core, batch, apps = (client.CustomObjectsApi(api), client.CoreV1Api(api),
                                 client.BatchV1Api(api), client.AppsV1Api(api))
    ns = model_namespace
    manifest = clusterstack.minilm_model("minilm", stack.model_uri)
    t0 = time.monotonic()
    stack.cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))

    job = wait_for(lambda: next(iter(batch.list_namespaced_job(ns).items), None), timeout=60,
                   what="the operator to create the build Job")
    t_job = time.monotonic() - t0
    key = job.metadata.annotations["optimodel.dev/build-key"]

    def job_done():
        status = batch.read_namespaced_job(job.metadata.name, ns).status
        return status.succeeded or status.failed

    wait_for(job_done, timeout=900, interval=2, what="the build Job to finish")
    (pod,) = core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={job.metadata.name}").items
    assert pod.spec.node_name == realnode.NODE_NAME
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0, terminated.message
    summary = json.loads(terminated.message)
    assert summary["succeeded"] and summary["buildKey"] == key
    # The builder wrote the engine and its report to the store, under <ns>/<name>/<key>/.
    fs = stack.store.fs()
    report = json.loads(fs.cat(f"{clusterstack.ARTIFACT_BUCKET}/{ns}/minilm/{key}/report.json"))
    assert report["buildKey"] == key

    ready = wait_for(lambda: (o := _model(custom, ns, "minilm")).get("status", {}).get("phase") == "Ready" and o,
                     timeout=300, interval=1, what="the model to become Ready")
    t_ready = time.monotonic() - t0
    status = ready["status"]
    assert status["engine"]["key"] == key and status["engine"]["target"] == "onnxruntime"
    # Status reports what the builder measured (the report's numbers), not a number of its own.
    assert report["succeeded"] and report["selected"]
    assert status["benchmark"]["speedup"] == pytest.approx(report["speedup"], rel=1e-6)
    assert status["benchmark"]["accuracy"]["value"] == pytest.approx(report["accuracy"]["value"], rel=1e-6)
    # ... in the report's own types, and uri means the build output root on both sides.
    assert status["benchmark"]["speedupCheck"] == report["speedupCheck"]
    assert status["engine"] == report["engine"]
    assert _condition(ready, "Ready")["status"] == "True"
    table = stack.cluster.kubectl("get", "om", "-n", ns).stdout
    assert "Ready" in table and f"{status['benchmark']['speedup']:.2f}x" in table, table

    # A Triton pod on the real node, Ready through its real probes, answering through the Service.
    (triton,) = core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=server").items
    assert triton.spec.node_name == realnode.NODE_NAME
    scheduled = next(c.last_transition_time for c in triton.status.conditions if c.type == "PodScheduled")
    became_ready = next(c.last_transition_time for c in triton.status.conditions if c.type == "Ready")
    service_ip = core.read_namespaced_service("minilm", ns).spec.cluster_ip
    embeddings, reference = _embed_through_service(service_ip, "minilm", UNSEEN)
    cos = (embeddings * reference).sum(-1) / (np.linalg.norm(embeddings, axis=-1) * np.linalg.norm(reference, axis=-1))
    assert cos.min() >= 0.99, cos
    print(f"\n[e2e] apply->Job {t_job:.1f}s, apply->Ready {t_ready:.1f}s, "
          f"Triton pod scheduled->Ready {(became_ready - scheduled).total_seconds():.0f}s, "
          f"speedup {status['benchmark']['speedup']:.2f}x, min cosine on unseen sentences {cos.min():.4f}")


def _embed_through_service(host: str, model: str, sentences: list[str]):
    """Tokenize like the model's users, infer through Triton's HTTP API at the Service IP."""
    import tritonclient.http as http
    from transformers import AutoTokenizer

    from optimodel.serving.demo import minilm_dir, pytorch_reference

    triton = http.InferenceServerClient(f"{host}:8000", connection_timeout=10, network_timeout=30)
    config = triton.get_model_config(model)
    seq_len = int(config["input"][0]["dims"][-1]) if int(config["input"][0]["dims"][-1]) > 0 else 128
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    outputs = [o["name"] for o in config["output"]]
    output = "sentence_embedding" if "sentence_embedding" in outputs else outputs[0]
    rows = []
    for i in range(len(sentences)):
        inputs = []
        for spec in config["input"]:
            array = encoded[spec["name"]][i:i + 1].astype(np.int64 if spec["data_type"] == "TYPE_INT64" else np.int32)
            tensor = http.InferInput(spec["name"], list(array.shape), spec["data_type"].removeprefix("TYPE_"))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = triton.infer(model, inputs, outputs=[http.InferRequestedOutput(output)])
        rows.append(result.as_numpy(output))
    reference = pytorch_reference(minilm_dir(), {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded})
    return np.concatenate(rows), reference
