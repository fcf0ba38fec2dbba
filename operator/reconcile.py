"""Reconcile one ``OptimizedModel``: from spec to build, engine, serving objects and status.

Level-triggered and idempotent: every call reads the world afresh (the model, its build Jobs,
its Deployment) and converges it; calling it twice changes nothing the second time. The work
queue (``controller``) calls it for every event of the model or its children, on a periodic
resync, and again with backoff when it raised.

Steps:
 1. Read the model; compute the build key of what the spec asks for.
 2. If the served engine has another key: advance that key's build (``builds.step``): create
    its Job, explain a wait, read the outcome, retry an infrastructure failure.
 3. A succeeded build becomes the engine; a failed one is reported and changes nothing else,
    so the previous engine keeps serving.
 4. With an engine: apply Deployment, Service, PodDisruptionBudget, autoscaler, PodMonitor.
 5. Observe the Deployment; write status (conditions, phase, engine, benchmark) and Events.

Status is a cache, not the only record: a lost status is rebuilt from the Deployment's engine
annotation and the build Jobs' summaries (``builds``).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass

from pydantic import ValidationError

from optimodel.api.crd import GROUP, VERSION
from optimodel.api.key import build_key
from optimodel.api.report import EngineInfo
from optimodel.api.status import BenchmarkStatus, BuildStatus, OptimizedModelStatus
from optimodel.operator import builds, metrics
from optimodel.operator import manifests as m
from optimodel.operator.compatibility import tensorrt_mismatch
from optimodel.operator.conditions import Desired, merge_conditions, pod_problem, status_patch, transitions
from optimodel.operator.kube import Kube
from optimodel.operator.settings import OperatorSettings

log = logging.getLogger("optimodel.reconcile")

MODEL_API = f"{GROUP}/{VERSION}"
KEDA_CRD = "scaledobjects.keda.sh"
PODMONITOR_CRD = "podmonitors.monitoring.coreos.com"


@dataclass(frozen=True)
class Result:
    """What the work queue should do next with this key (besides the periodic resync)."""

    requeue_after: float | None = None


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(kube: Kube, settings: OperatorSettings, namespace: str, name: str) -> Result | None:
    """Converge one model; None when it is gone (nothing to requeue)."""
    body = kube.get(MODEL_API, "OptimizedModel", namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None  # gone: owner references let the garbage collector remove the children
    return _reconcile(kube, settings, body)


def read_status(body: dict) -> OptimizedModelStatus:
    """The model's status, or an empty one if it cannot be read (then it is rebuilt)."""
    try:
        return OptimizedModelStatus.model_validate(body.get("status") or {})
    except ValidationError as err:
        log.warning("unreadable status of %s/%s, rebuilding it: %s", body["metadata"]["namespace"],
                    body["metadata"]["name"], err)
        return OptimizedModelStatus()


def _reconcile(kube: Kube, settings: OperatorSettings, body: dict) -> Result:
    # 1. What the spec asks for; what is served (status, else the Deployment's record).
    model = m.ModelRef.from_body(body)
    old = read_status(body)
    key = build_key(m.build_spec(model, settings))
    live = kube.get("apps/v1", "Deployment", model.namespace, model.name)
    engine, benchmark = old.engine, old.benchmark
    if engine is None:
        engine, benchmark = m.engine_from_deployment(live)

    # 2-3. Build unless the served engine already has this key (the engine cache).
    jobs = builds.model_jobs(kube, model)
    _cancel_superseded_builds(kube, model, key, jobs)
    build, requeue = None, None
    if engine is None or engine.key != key:
        outcome = builds.step(kube, settings, model, key, jobs)
        requeue = outcome.requeue_after
        build = BuildStatus(key=key, job=outcome.job, state=_build_state(outcome.state),
                            attempt=outcome.attempt, reason=outcome.reason, message=outcome.message)
        if outcome.state == "Succeeded" and outcome.summary and outcome.summary.engine:
            built = outcome.summary.engine
            unservable = tensorrt_mismatch(built.platform, built.runtime_version, settings.triton_tensorrt_version,
                                           settings.triton_image)
            if unservable:  # final, like a model failure: the same builder would build the same plan
                build = build.model_copy(update={"state": "Failed", "reason": "TensorRTVersionMismatch",
                                                 "message": unservable})
            else:
                engine = _served_engine(built, outcome.summary.build_key, m.artifact_uri(model, key, settings))
                benchmark = BenchmarkStatus.of(outcome.summary.benchmark) if outcome.summary.benchmark else None
                build = None  # the build became the engine: nothing in flight

    # 4. Serve the engine (the previous one while a new build runs or after it failed).
    deployment, scaling, problem = None, None, None
    if engine is not None:
        deployment, scaling = _serve(kube, settings, model, engine, benchmark, live)
        if (deployment.get("status") or {}).get("readyReplicas", 0) == 0:
            selector = ",".join(f"{k}={v}" for k, v in m.selector_labels(model).items())
            problem = pod_problem(kube.list("v1", "Pod", model.namespace, label_selector=selector))

    # 5. Status and Events.
    new = _status(body, model, old, key, engine, benchmark, build, deployment, scaling, problem)
    write_status(kube, body, old, new)
    return Result(requeue_after=requeue)


def write_status(kube: Kube, body: dict, old: OptimizedModelStatus, new: OptimizedModelStatus) -> None:
    """Patch what changed, then one Event per condition transition (none when nothing changed).

    The patch is against the status as stored, not as read: what ``read_status`` could not read
    (e.g. an accuracy recorded in an older shape) is removed, not left behind for the API server
    to validate against the current schema on every write.
    """
    patch = status_patch(body.get("status") or {}, new.to_wire())
    if patch is None:
        return
    meta = body["metadata"]
    kube.patch_model_status(meta["namespace"], meta["name"], patch)
    for type_, reason, message in transitions(old, new):
        kube.post_event(body, type_, reason, message)
        if reason in ("EngineBuilt", "BuildFailed"):
            metrics.inc("optimodel_builds_total", event="succeeded" if reason == "EngineBuilt" else "failed")


def _build_state(state: str) -> str:
    return {"Pending": "Running", "Retrying": "Running"}.get(state, state)


def _cancel_superseded_builds(kube: Kube, model: m.ModelRef, key: str, jobs: list[dict]) -> None:
    """Delete running build Jobs of this model for keys the spec no longer asks for.

    They would hold a GPU for an engine nobody will serve. Finished Jobs are kept as history.
    """
    for job in jobs:
        if builds.key_of(job) != key and not builds.finished(job):
            log.info("cancelling superseded build Job %s", job["metadata"]["name"])
            if kube.delete_owned("batch/v1", "Job", model.namespace, job["metadata"]["name"], model.uid):
                metrics.inc("optimodel_builds_total", event="cancelled")


def _served_engine(built: EngineInfo, key: str, uri: str) -> EngineInfo:
    """The builder's engine as served: its key is the build's, and its output root is the one the
    operator gave the Job (``artifact_uri``), whatever the summary says: the stager reads only
    where the operator wrote. Both mean the same thing, so they differ only in a skewed builder."""
    if built.uri.rstrip("/") != uri:
        log.warning("build %s reports its output at %s; serving it from %s, where the operator put it",
                    key[:10], built.uri, uri)
    return built.model_copy(update={"key": key, "uri": uri})


@dataclass(frozen=True)
class Scaling:
    """The autoscaler in use (hpa, keda, none) and, when the asked-for one cannot run, why."""

    engine: str
    problem: str | None = None


def _serve(kube: Kube, settings: OperatorSettings, model: m.ModelRef, engine: EngineInfo,
           benchmark: BenchmarkStatus | None, live: dict | None) -> tuple[dict, Scaling]:
    """Apply the serving objects; return the live Deployment and the autoscaler in use."""
    # Created once and never read (a 409 means it is there): see manifests.triton_admin_secret.
    kube.create(m.triton_admin_secret(model, secrets.token_urlsafe(32)))
    deployment, _ = kube.apply(m.triton_deployment(model, engine, settings, live, benchmark))
    if live is None and model.spec.autoscaling.enabled:
        deployment, _ = kube.apply(m.initial_replicas(model), manager=m.INITIAL_REPLICAS_MANAGER)
    kube.apply(m.triton_service(model))
    kube.apply(m.pod_disruption_budget(model))
    keda_installed = kube.crd_installed(KEDA_CRD)
    choice = m.autoscaler_engine(model, keda_installed=keda_installed)
    scaling = Scaling(choice or "none")
    if choice == "keda" and not keda_installed:
        scaling = Scaling("none", f"autoscaling.engine is keda but KEDA is not installed (no CRD "
                          f"{KEDA_CRD}): install KEDA, or set autoscaling.engine to hpa or auto")
    # Exactly one autoscaler (or none): remove one of ours of the kind we do not use.
    if scaling.engine == "hpa":
        kube.apply(m.horizontal_pod_autoscaler(model))
    else:
        kube.delete_owned("autoscaling/v2", "HorizontalPodAutoscaler", model.namespace, model.name, model.uid)
    if scaling.engine == "keda":
        kube.apply(m.scaled_object(model, settings))
    elif keda_installed:
        kube.delete_owned("keda.sh/v1alpha1", "ScaledObject", model.namespace, model.name, model.uid)
    if kube.crd_installed(PODMONITOR_CRD):
        kube.apply(m.pod_monitor(model))
    return deployment, scaling


def _status(body: dict, model: m.ModelRef, old: OptimizedModelStatus, key: str,
            engine: EngineInfo | None, benchmark: BenchmarkStatus | None, build: BuildStatus | None,
            deployment: dict | None, scaling: Scaling | None, problem: str | None) -> OptimizedModelStatus:
    generation = body["metadata"].get("generation")
    built_current = engine is not None and engine.key == key
    failed = build is not None and build.state == "Failed" and build.key == key

    if built_current:
        built = Desired("Built", True, "EngineBuilt", f"Engine {key[:10]} ({engine.precision}, "
                        f"{engine.target}) built and verified")
    elif failed:
        built = Desired("Built", False, "BuildFailed", f"{build.reason}: {build.message or ''}".strip())
    elif build is not None and build.reason:  # waiting (BuildPending) or retrying (BuildRetrying)
        built = Desired("Built", False, build.reason, build.message or "")
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

    desired = [built, deployed, ready]
    if deployment is not None and model.spec.autoscaling.enabled and scaling is not None:
        if scaling.problem:
            desired.append(Desired("Autoscaling", False, "AutoscalerNotInstalled", scaling.problem))
        else:
            bounds = f"{model.spec.autoscaling.min_replicas}-{model.spec.autoscaling.max_replicas}"
            desired.append(Desired("Autoscaling", True, "AutoscalerActive",
                                   f"{scaling.engine} scales {bounds} replicas on queue depth"))
    desired.append(Desired("Synced", True, "Reconciled", ""))

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
        conditions=merge_conditions(old.conditions, desired, now(), generation),
        engine=engine,
        build=build,
        benchmark=benchmark,
        precision=engine.precision if engine else None,
        replicas=replicas if deployment else None,
        ready_replicas=ready_replicas if deployment else None,
        autoscaler=scaling.engine if scaling else None,
        endpoint=m.endpoint(model) if deployment else None,
        message=(f"{build.reason}: {build.message}" if failed else None),
    )
