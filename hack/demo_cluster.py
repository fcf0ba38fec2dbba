"""``make demo-cluster``: the main job on a real cluster, from nothing to a closed autoscaling loop.

1. a local control plane with a real node (containerd, kubelet, kube-proxy) and the project's
   images imported; MinIO, Prometheus and prometheus-adapter as host processes on the node's
   address; ``helm install`` of the chart;
2. ``kubectl apply`` of an OptimizedModel (all-MiniLM-L6-v2 from the object store, served on
   CPU): the operator's builder pod builds it, Triton pods serve it;
3. load through the Service until the HPA, fed Triton's queue depth, scales out; then quiet
   until it scales back; then an optimization edit rolls out a new engine under load;
4. a summary table, the timeline as CSV (``bench/results/queue_depth_loop.csv``) and its plot.

Everything it starts is stopped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import clusterstack  # noqa: E402
import localcluster  # noqa: E402

GROUP, VERSION, PLURAL = "optimodel.dev", "v1alpha1", "optimizedmodels"
RESULTS = HERE.parent / "bench" / "results"
NAMESPACE = "demo"
MODEL = "minilm"


def log(msg: str) -> None:
    print(f"[demo-cluster {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Timeline:
    """One row a second: queue depth (Prometheus), replicas, client throughput, events."""

    def __init__(self, prometheus, apps, load, target: float):
        self.prometheus, self.apps, self.load, self.target = prometheus, apps, load, target
        self.t0 = time.monotonic()
        self.rows: list[dict] = []
        self.pending_event = ""

    def mark(self, event: str) -> None:
        self.pending_event = event

    def sample(self) -> dict:
        from optimodel.triton.metrics import keda_query

        result = clusterstack.prometheus_query(self.prometheus, keda_query(NAMESPACE, MODEL))
        depth = float(result[0]["value"][1]) if result else 0.0
        status = self.apps.read_namespaced_deployment(MODEL, NAMESPACE)
        now = time.monotonic()
        row = {"seconds": round(now - self.t0, 1), "queue_depth": depth, "target_per_pod": self.target,
               "replicas": status.spec.replicas or 0, "ready_replicas": status.status.ready_replicas or 0,
               "throughput": self.load.completed(since=now - 1.0, until=now) if self.load else 0,
               "failed": len(self.load.failures(since=now - 1.0, until=now)) if self.load else 0,
               "event": self.pending_event}
        self.pending_event = ""
        self.rows.append(row)
        return row

    def run_until(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.sample()
            if predicate(row):
                return row
            time.sleep(max(0.0, 1.0 - (time.monotonic() - self.t0 - row["seconds"])))
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    def write(self, path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=12, help="concurrent load clients")
    parser.add_argument("--plot-python", default=None, help="Python with matplotlib (the plot extra)")
    args = parser.parse_args(argv)

    from kubernetes import client, config

    from optimodel.serving.demo import minilm_dir

    RESULTS.mkdir(parents=True, exist_ok=True)
    state_dir = Path(tempfile.mkdtemp(prefix="optimodel-demo-cluster-"))
    started: list = []
    summary: dict[str, str] = {}
    try:
        t = time.monotonic()
        state = localcluster.up(state_dir, timeout=300, real_node=True)
        summary["cluster up (control plane + real node)"] = f"{time.monotonic() - t:.0f} s"
        api = config.new_client_from_config(config_file=state.kubeconfig)
        apps, core, custom = client.AppsV1Api(api), client.CoreV1Api(api), client.CustomObjectsApi(api)
        store = clusterstack.start_object_store()
        started.append(store)
        uri = clusterstack.upload_minilm(store)
        prometheus = clusterstack.start_prometheus(state, api)
        started.append(prometheus)
        adapter = clusterstack.start_prometheus_adapter(state, prometheus, api)
        started.append(adapter)
        t = time.monotonic()
        clusterstack.helm_install(state.kubeconfig, localcluster.binary_dir() / "helm",
                                  clusterstack.chart_values(state.images, prometheus.url))
        summary["helm install (operator pod Ready)"] = f"{time.monotonic() - t:.0f} s"
        clusterstack.model_namespace(api, NAMESPACE, store)

        # 2. apply -> build -> serve
        manifest = clusterstack.minilm_model(MODEL, uri)
        t0 = time.monotonic()
        subprocess.run([str(localcluster.binary_dir() / "kubectl"), "--kubeconfig", state.kubeconfig,
                        "apply", "-n", NAMESPACE, "-f", "-"], input=json.dumps(manifest), text=True,
                       check=True, capture_output=True)
        log("applied the OptimizedModel; the builder pod runs `optimodel build` on the real node")
        job = wait(lambda: next(iter(client.BatchV1Api(api).list_namespaced_job(NAMESPACE).items), None),
                   60, "the build Job")
        summary["apply -> build Job created"] = f"{time.monotonic() - t0:.1f} s"
        status = wait(lambda: (s := (custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, MODEL)
                                     .get("status") or {})).get("phase") == "Ready" and s, 900, "Ready", 2)
        summary["apply -> Ready"] = f"{time.monotonic() - t0:.0f} s"
        job = client.BatchV1Api(api).read_namespaced_job(job.metadata.name, NAMESPACE)
        summary["build Job (pod start -> complete)"] = \
            f"{(job.status.completion_time - job.status.start_time).total_seconds():.0f} s"
        bench = status["benchmark"]
        summary["speedup vs PyTorch eager FP32 (builder pod)"] = \
            f"{bench['speedup']:.2f}x ({status['engine']['precision']}, {status['engine']['target']})"
        summary[f"accuracy ({bench['accuracy']['metric']}, held-out)"] = f"{bench['accuracy']['value']:.4f}"
        (triton,) = core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/component=server").items
        conds = {c.type: c.last_transition_time for c in triton.status.conditions}
        summary["Triton pod cold start (scheduled -> Ready)"] = \
            f"{(conds['Ready'] - conds['PodScheduled']).total_seconds():.0f} s"

        # 3. the queue-depth loop
        service_ip = core.read_namespaced_service(MODEL, NAMESPACE).spec.cluster_ip
        body = clusterstack.minilm_request(minilm_dir(), "A queue builds up when requests arrive faster.")
        target = manifest["spec"]["autoscaling"]["targetQueueDepth"]
        load = clusterstack.Load(service_ip, MODEL, body, clients=args.clients)
        timeline = Timeline(prometheus, apps, load, target)
        load.start()
        timeline.mark("load on")
        log(f"load: {args.clients} clients through Service {service_ip}")
        load_start = time.monotonic()
        timeline.run_until(lambda r: r["ready_replicas"] >= 2, 300, "a second pod Ready")
        summary["scale-out reaction (load on -> 2nd pod Ready)"] = f"{time.monotonic() - load_start:.0f} s"
        timeline.run_until(lambda r: False if time.monotonic() - load_start < 60 else True, 120, "steady load")
        load_failures = len(load.failures())
        load.stop()
        timeline.mark("load off")
        quiet = time.monotonic()
        timeline.run_until(lambda r: r["replicas"] == manifest["spec"]["autoscaling"]["minReplicas"], 400,
                           "scale back to minReplicas")
        summary["scale-in (load off -> minReplicas)"] = f"{time.monotonic() - quiet:.0f} s"
        summary["peak replicas"] = str(max(r["ready_replicas"] for r in timeline.rows))
        summary["peak queue depth (sum over pods)"] = f"{max(r['queue_depth'] for r in timeline.rows):.0f}"

        # Rollout under load: an optimization edit builds a new engine and rolls it out.
        load = clusterstack.Load(service_ip, MODEL, body, clients=4)
        timeline.load = load
        load.start()
        timeline.mark("edit: rebuild")
        old_key = status["engine"]["key"]
        custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, MODEL, {
            "spec": {"optimization": {"accuracy": {"threshold": 0.985}}}})

        def rolled(_row):
            s = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, MODEL).get("status") or {}
            d = apps.read_namespaced_deployment(MODEL, NAMESPACE)
            return (s.get("phase") == "Ready" and s["engine"]["key"] != old_key
                    and d.status.updated_replicas == d.spec.replicas == d.status.ready_replicas
                    and d.status.replicas == d.spec.replicas)

        timeline.run_until(rolled, 900, "the new engine rolled out")
        time.sleep(3)
        load.stop()
        timeline.mark("rolled out")
        timeline.sample()
        summary["failed requests (scale-out and scale-in)"] = str(load_failures)
        summary["failed requests (rebuild + rolling update)"] = f"{len(load.failures())} of {load.completed() + len(load.failures())}"

        csv_path = RESULTS / "queue_depth_loop.csv"
        timeline.write(csv_path)
        png_path = RESULTS / "queue_depth_loop.png"
        if args.plot_python:
            subprocess.run([args.plot_python, str(HERE.parent / "bench" / "plot_timeline.py"), str(csv_path),
                            str(png_path)], check=True, capture_output=True)
            summary["plot"] = str(png_path.relative_to(HERE.parent))
        summary["timeline"] = str(csv_path.relative_to(HERE.parent))
    finally:
        for component in reversed(started):
            component.stop()
        localcluster.down(state_dir)

    width = max(len(k) for k in summary)
    table = "\n".join(f"| {k:<{width}} | {v} |" for k, v in summary.items())
    print(f"\n| {'what':<{width}} | measured |\n|{'-' * (width + 2)}|---|\n{table}\n")
    (RESULTS / "demo_cluster.md").write_text(
        "# make demo-cluster (2-core CPU machine, real node)\n\n"
        f"| {'what':<{width}} | measured |\n|{'-' * (width + 2)}|---|\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
