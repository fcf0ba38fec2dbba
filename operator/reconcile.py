"""Reconcile one ``OptimizedModel``: from spec to build, engine, serving objects and status.

Level-triggered and idempotent: every call reads the world afresh (the model, its build Job,
its Deployment) and converges it; calling it twice changes nothing the second time. Every kopf
handler (model events, child Job and Deployment events) ends up here.

Steps:
 1. Read the model; compute the build key of what the spec asks for.
 2. If the served engine has another key: find or create the build Job for this key; read its
    outcome (the builder's summary from the pod's termination message).
 3. A succeeded build becomes the engine; a failed one is reported and changes nothing else,
    so the previous engine keeps serving.
 4. With an engine: apply Deployment, Service, PodDisruptionBudget, autoscaler, PodMonitor.
 5. Observe the Deployment; write status (conditions, phase, engine, benchmark) and Events.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from pydantic import ValidationError

from optimodel.api.crd import GROUP, VERSION
from optimodel.api.key import build_key
from optimodel.api.report import BuildSummary
from optimodel.api.status import (
    AccuracyStatus,
    BenchmarkStatus,
    BuildStatus,
    EngineStatus,
    OptimizedModelStatus,
    Throughput,
)
from optimodel.operator import manifests as m
from optimodel.operator import metrics
from optimodel.operator.conditions import Desired, merge_conditions, pod_problem, status_patch, transitions
from optimodel.operator.kube import Kube
from optimodel.operator.settings import OperatorSettings

log = logging.getLogger("optimodel.reconcile")

MODEL_API = f"{GROUP}/{VERSION}"
KEDA_CRD = "scaledobjects.keda.sh"
PODMONITOR_CRD = "podmonitors.monitoring.coreos.com"
REPLICAS = ("spec", "replicas")

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


@dataclass
class BuildOutcome:
    state: str  # Running | Succeeded | Failed
    job: str
    summary: BuildSummary | None = None
    reason: str | None = None
    message: str | None = None


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(kube: Kube, settings: OperatorSettings, namespace: str, name: str) -> None:
    """Converge one model. Serialized per object: model and child events may race."""
    with _locks[(namespace, name)]:
        started = time.monotonic()
        body = kube.get(MODEL_API, "OptimizedModel", namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # gone: owner references let the garbage collector remove the children
        try:
            _reconcile(kube, settings, body)
        except Exception:
            metrics.inc("optimodel_reconcile_total", result="error")
            raise
        metrics.inc("optimodel_reconcile_total", result="ok")
        metrics.inc("optimodel_reconcile_seconds_sum", time.monotonic() - started)
        metrics.inc("optimodel_reconcile_seconds_count")


def _reconcile(kube: Kube, settings: OperatorSettings, body: dict) -> None:
    # 1. What the spec asks for.
    model = m.ModelRef.from_body(body)
    old = OptimizedModelStatus.model_validate(body.get("status") or {})
    key = build_key(m.build_spec(model, settings))
    engine, benchmark = old.engine, old.benchmark

    # 2-3. Build unless the served engine already has this key (the engine cache).
    _cancel_superseded_builds(kube, model, key)
    build = None
    if engine is None or engine.key != key:
        outcome = _build(kube, settings, model, key)
        build = BuildStatus(key=key, job=outcome.job, state=outcome.state,
                            reason=outcome.reason, message=outcome.message)
        if outcome.state == "Succeeded" and outcome.summary and outcome.summary.engine:
            engine = _engine_status(outcome.summary, m.artifact_uri(model, key, settings))
            benchmark = _benchmark_status(outcome.summary)
            build = None  # the build became the engine: nothing in flight

    # 4. Serve the engine (the previous one while a new build runs or after it failed).
    deployment, autoscaler, problem = None, None, None
    if engine is not None:
        deployment, autoscaler = _serve(kube, settings, model, engine)
        if deployment and (deployment.get("status") or {}).get("readyReplicas", 0) == 0:
            selector = ",".join(f"{k}={v}" for k, v in m.selector_labels(model).items())
            problem = pod_problem(kube.list("v1", "Pod", model.namespace, label_selector=selector))

    # 5. Status and Events.
    new = _status(body, model, old, key, engine, benchmark, build, deployment, autoscaler, problem)
    patch = status_patch(old.to_wire(), new.to_wire())
    if patch is not None:
        kube.patch_model_status(model.namespace, model.name, patch)
        for type_, reason, message in transitions(old, new):
            kube.post_event(body, type_, reason, message)
            if reason in ("EngineBuilt", "BuildFailed"):
                metrics.inc("optimodel_builds_total", event="succeeded" if reason == "EngineBuilt" else "failed")


def _build(kube: Kube, settings: OperatorSettings, model: m.ModelRef, key: str) -> BuildOutcome:
    job_name = m.job_name(model, key)
    job = kube.get("batch/v1", "Job", model.namespace, job_name)
    if job is None:
        kube.apply(m.builder_job(model, key, settings))
        metrics.inc("optimodel_builds_total", event="created")
        log.info("created build Job %s/%s for key %s", model.namespace, job_name, key[:10])
        return BuildOutcome("Running", job_name, message=f"Build Job {job_name} created")
    conditions = {c["type"]: c for c in (job.get("status") or {}).get("conditions") or []
                  if c.get("status") == "True"}
    if "Complete" not in conditions and "Failed" not in conditions:
        return BuildOutcome("Running", job_name, message=f"Build Job {job_name} running")
    summary = _read_summary(kube, model.namespace, job_name)
    if "Complete" in conditions:
        if summary and summary.succeeded and summary.engine:
            return BuildOutcome("Succeeded", job_name, summary,
                                message=f"Engine {summary.engine.precision}/{summary.engine.target} built")
        return BuildOutcome("Failed", job_name, summary, reason="ReportMissing",
                            message=f"Build Job {job_name} completed without a valid build summary "
                            "in its termination message")
    if summary and not summary.succeeded:
        return BuildOutcome("Failed", job_name, summary, reason=summary.reason or "BuildFailed",
                            message=summary.message)
    failed = conditions["Failed"]
    return BuildOutcome("Failed", job_name, summary, reason=failed.get("reason") or "BuildFailed",
                        message=failed.get("message") or f"Build Job {job_name} failed")


def _cancel_superseded_builds(kube: Kube, model: m.ModelRef, key: str) -> None:
    """Delete running build Jobs of this model for keys the spec no longer asks for.

    They would hold a GPU for an engine nobody will serve. Finished Jobs are kept as history.
    """
    selector = f"{m.MODEL_LABEL}={model.name},app.kubernetes.io/component=builder"
    for job in kube.list("batch/v1", "Job", model.namespace, label_selector=selector):
        done = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                   for c in (job.get("status") or {}).get("conditions") or [])
        job_key = (job["metadata"].get("annotations") or {}).get(m.KEY_ANNOTATION)
        if job_key != key and not done:
            log.info("cancelling superseded build Job %s", job["metadata"]["name"])
            kube.delete("batch/v1", "Job", model.namespace, job["metadata"]["name"])
            metrics.inc("optimodel_builds_total", event="cancelled")


def _read_summary(kube: Kube, namespace: str, job_name: str) -> BuildSummary | None:
    """The builder's summary from the newest pod's termination message, if any."""
    pods = kube.list("v1", "Pod", namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}")
    pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") == "builder" and terminated.get("message"):
                try:
                    return BuildSummary.model_validate(json.loads(terminated["message"]))
                except (ValueError, ValidationError) as err:
                    log.warning("unparseable termination message in %s: %s", pod["metadata"]["name"], err)
    return None


def _engine_status(summary: BuildSummary, uri: str) -> EngineStatus:
    e = summary.engine
    return EngineStatus(key=summary.build_key, uri=uri, model_name=e.model_name, precision=e.precision,
                        target=e.target, platform=e.platform, gpu_product=e.gpu_product,
                        compute_capability=e.compute_capability, runtime_version=e.runtime_version,
                        size_bytes=e.size_bytes)


def _benchmark_status(summary: BuildSummary) -> BenchmarkStatus:
    accuracy = None
    if summary.accuracy_metric is not None and summary.accuracy_value is not None:
        accuracy = AccuracyStatus(metric=summary.accuracy_metric, value=summary.accuracy_value)
    return BenchmarkStatus(
        baseline=Throughput(throughput=summary.baseline_throughput, batch_size=summary.batch_size),
        optimized=Throughput(throughput=summary.optimized_throughput, batch_size=summary.batch_size,
                             runtime=summary.engine.target if summary.engine else None),
        speedup=summary.speedup,
        speedup_text=f"{summary.speedup:.2f}x" if summary.speedup else None,
        accuracy=accuracy,
        report_uri=summary.report_uri,
    )


def _serve(kube: Kube, settings: OperatorSettings, model: m.ModelRef, engine: EngineStatus
           ) -> tuple[dict | None, str | None]:
    """Apply the serving objects; return the live Deployment and the autoscaler kind in use."""
    scaling = model.spec.autoscaling.enabled
    # With autoscaling on, spec.replicas belongs to the autoscaler: set once at creation only.
    kube.apply(m.triton_deployment(model, engine, settings), not_owned=(REPLICAS,) if scaling else ())
    kube.apply(m.triton_service(model))
    kube.apply(m.pod_disruption_budget(model))
    keda_installed = kube.crd_installed(KEDA_CRD)
    choice = m.autoscaler_engine(model, keda_installed=keda_installed)
    # Exactly one autoscaler (or none): remove the kind we do not use (404 = already gone).
    if choice == "hpa":
        kube.apply(m.horizontal_pod_autoscaler(model))
    else:
        kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", model.namespace, model.name)
    if choice == "keda":
        kube.apply(m.scaled_object(model, settings))
    elif keda_installed:
        kube.delete("keda.sh/v1alpha1", "ScaledObject", model.namespace, model.name)
    if kube.crd_installed(PODMONITOR_CRD):
        kube.apply(m.pod_monitor(model))
    return kube.get("apps/v1", "Deployment", model.namespace, model.name), choice or "none"


def _status(body: dict, model: m.ModelRef, old: OptimizedModelStatus, key: str,
            engine: EngineStatus | None, benchmark: BenchmarkStatus | None, build: BuildStatus | None,
            deployment: dict | None, autoscaler: str | None, problem: str | None) -> OptimizedModelStatus:
    generation = body["metadata"].get("generation")
    built_current = engine is not None and engine.key == key
    failed = build is not None and build.state == "Failed" and build.key == key

    if built_current:
        built = Desired("Built", True, "EngineBuilt", f"Engine {key[:10]} ({engine.precision}, "
                        f"{engine.target}) built and verified")
    elif failed:
        built = Desired("Built", False, "BuildFailed", f"{build.reason}: {build.message or ''}".strip())
    else:
        built = Desired("Built", False, "Building", f"Building engine {key[:10]} in Job {build.job if build else ''}")

    dstatus = (deployment or {}).get("status") or {}
    served_key = ((deployment or {}).get("metadata", {}).get("annotations") or {}).get(m.KEY_ANNOTATION)
    replicas = dstatus.get("replicas", 0)
    ready_replicas = dstatus.get("readyReplicas", 0)
    rolled_out = (deployment is not None
                  and dstatus.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
                  and dstatus.get("updatedReplicas", 0) == replicas)
    if deployment is None:
        deployed = Desired("Deployed", False, "WaitingForEngine", "No engine has been built yet")
        ready = Desired("Ready", False, "WaitingForEngine", "No engine has been built yet")
    else:
        deployed = Desired("Deployed", True, "TritonDeployed",
                           f"Triton serves engine {served_key[:10] if served_key else '?'}")
        if ready_replicas > 0 and rolled_out:
            ready = Desired("Ready", True, "ReplicasReady", f"{ready_replicas}/{replicas} replicas ready")
        else:
            detail = f"; {problem}" if problem else ""
            ready = Desired("Ready", False, "ReplicasNotReady", f"{ready_replicas}/{replicas} replicas ready{detail}")

    if failed:
        phase = "Failed"
    elif not built_current:
        phase = "Building"
    elif not ready.status:
        phase = "Deploying"
    else:
        phase = "Ready"

    return OptimizedModelStatus(
        phase=phase,
        observed_generation=generation,
        conditions=merge_conditions(old.conditions, [built, deployed, ready], now(), generation),
        engine=engine,
        build=build,
        benchmark=benchmark,
        precision=engine.precision if engine else None,
        replicas=replicas if deployment else None,
        ready_replicas=ready_replicas if deployment else None,
        autoscaler=autoscaler,
        endpoint=m.endpoint(model) if deployment else None,
        message=(f"{build.reason}: {build.message}" if failed else None),
    )
