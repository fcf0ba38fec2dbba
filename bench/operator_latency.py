#!/usr/bin/env python3
"""Operator reaction times on the local control plane (medians of N, default 20).

  apply -> build Job created          (OptimizedModel create to Job visible)
  Job Complete -> Deployment created  (Job controller marks Complete to Triton Deployment visible)

Starts its own control plane (hack/localcluster.py) and a real ``optimodel operator`` process,
plays the kubelet for builder pods, writes a markdown table to bench/results/operator_latency.md.
Run with the project venv:  $(hack/python-env.sh)/bin/python bench/operator_latency.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "support"), str(REPO / "hack")]

import localcluster  # noqa: E402
from kubernetes import client, config  # noqa: E402
from opharness import Models, OperatorProcess, success_summary  # noqa: E402


def poll(predicate, timeout=30.0, interval=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value, time.monotonic()
        time.sleep(interval)
    raise TimeoutError("condition not reached")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "operator_latency.md")
    args = parser.parse_args()

    lc = localcluster
    state_dir = Path(tempfile.mkdtemp(prefix="optimodel-bench-"))
    state = lc.up(state_dir)
    op = None
    try:
        import subprocess
        kubectl = [str(lc.binary_dir() / "kubectl"), "--kubeconfig", state.kubeconfig]
        subprocess.run([*kubectl, "apply", "-f", str(REPO / "crds" / "optimizedmodel.yaml")], check=True,
                       capture_output=True)
        subprocess.run([*kubectl, "wait", "--for=condition=Established", "crd/optimizedmodels.optimodel.dev"],
                       check=True, capture_output=True)
        subprocess.run([*kubectl, "create", "namespace", "bench"], check=True, capture_output=True)
        op = OperatorProcess(state.kubeconfig, {"OPTIMODEL_NAMESPACES": "bench",
                                                "OPTIMODEL_ARTIFACT_ROOT": "s3://bench/builds"},
                             state_dir / "operator.log")
        op.start()
        api = config.new_client_from_config(config_file=state.kubeconfig)
        models = Models(api, "bench")
        apps = client.AppsV1Api(api)
        time.sleep(3)  # operator startup is not what we measure
        to_job, to_deploy = [], []
        for i in range(args.runs):
            name = f"m{i}"
            spec = {"model": {"uri": f"s3://models/{name}/", "format": "onnx"},
                    "autoscaling": {"engine": "hpa"}}
            t0 = time.monotonic()
            models.create(name, spec)
            job, t1 = poll(lambda: next((j for j in models.jobs()
                                         if j.metadata.labels["optimodel.dev/model"] == name), None))
            to_job.append(t1 - t0)
            key = job.metadata.annotations["optimodel.dev/build-key"]
            models.finish_build(job.metadata.name, success_summary(key, name))
            _, t2 = poll(lambda: any(c.type == "Complete" and c.status == "True" for c in
                                     (models.batch.read_namespaced_job(job.metadata.name, "bench").status.conditions or [])))
            _, t3 = poll(lambda: apps.list_namespaced_deployment("bench", field_selector=f"metadata.name={name}").items)
            to_deploy.append(t3 - t2)
        rows = [("apply -> build Job created", to_job), ("Job Complete -> Deployment created", to_deploy)]
        lines = [f"# Operator latency on the local control plane ({args.runs} runs, poll interval 5 ms)", "",
                 "| transition | median (ms) | p90 (ms) | min (ms) | max (ms) |", "|---|---|---|---|---|"]
        for label, values in rows:
            ms = sorted(v * 1000 for v in values)
            lines.append(f"| {label} | {statistics.median(ms):.0f} | {ms[int(0.9 * (len(ms) - 1))]:.0f} | "
                         f"{ms[0]:.0f} | {ms[-1]:.0f} |")
        lines += ["", f"Control plane ready in {state.ready_seconds:.1f} s; machine: 2-core CPU, kwok nodes."]
        text = "\n".join(lines) + "\n"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
    finally:
        if op:
            op.stop()
        lc.down(state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
