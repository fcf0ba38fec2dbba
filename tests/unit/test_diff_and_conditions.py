"""Desired-in-live comparison and status arithmetic, table-driven."""

from __future__ import annotations

import diff  # tests/support
import pytest

from optimodel.api.status import Condition, OptimizedModelStatus
from optimodel.operator.conditions import Desired, merge_conditions, pod_problem, status_patch, transitions
from optimodel.operator.settings import OperatorSettings

DESIRED = {"metadata": {"name": "m", "labels": {"a": "1"}},
           "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}}}


@pytest.mark.parametrize("live,expected", [
    (DESIRED, True),
    # Server-defaulted and foreign fields are not compared.
    ({"metadata": {"name": "m", "labels": {"a": "1", "b": "2"}, "uid": "x"},
      "spec": {"replicas": 2, "template": {"spec": {"containers": [
          {"name": "c", "image": "i:1", "imagePullPolicy": "IfNotPresent"}]}}}}, True),
    ({**DESIRED, "spec": {**DESIRED["spec"], "replicas": 7}}, False),
    ({**DESIRED, "spec": {"replicas": 2, "template": {"spec": {"containers": [
        {"name": "c", "image": "i:1"}, {"name": "sidecar", "image": "s"}]}}}}, False),
    ({"metadata": {"name": "m"}, "spec": DESIRED["spec"]}, False),
], ids=["identical", "server-defaults", "replicas-drift", "extra-container", "label-missing"])
def test_is_subset(live, expected):
    assert diff.is_subset(DESIRED, live) is expected


def test_first_difference_names_the_path():
    live = {**DESIRED, "spec": {**DESIRED["spec"], "replicas": 3}}
    assert diff.first_difference(DESIRED, live) == ".spec.replicas: want 2, have 3"
    assert diff.first_difference(DESIRED, DESIRED) is None


def cond(type_, status, reason, since="t0"):
    return Condition(type=type_, status=status, reason=reason, message="", last_transition_time=since)


def test_transition_time_moves_only_when_status_flips():
    old = [cond("Built", "False", "Building"), cond("Ready", "True", "ReplicasReady")]
    new = merge_conditions(old, [Desired("Built", False, "BuildFailed", "x"),
                                 Desired("Ready", False, "ReplicasNotReady", "0/1")], "t1", 3)
    assert [(c.type, c.last_transition_time, c.observed_generation) for c in new] == [
        ("Built", "t0", 3), ("Ready", "t1", 3)]


@pytest.mark.parametrize("old,new,expected", [
    ([], [cond("Built", "False", "Building")], [("Normal", "Building")]),
    ([], [cond("Ready", "False", "WaitingForEngine")], []),
    ([cond("Built", "False", "Building")], [cond("Built", "True", "EngineBuilt")], [("Normal", "EngineBuilt")]),
    ([cond("Built", "False", "Building")], [cond("Built", "False", "BuildFailed")], [("Warning", "BuildFailed")]),
    ([cond("Ready", "True", "ReplicasReady")], [cond("Ready", "False", "ReplicasNotReady")],
     [("Warning", "ReplicasNotReady")]),
    ([cond("Ready", "True", "ReplicasReady")], [cond("Ready", "True", "ReplicasReady", "t9")], []),
], ids=["build-started", "quiet-waiting", "built", "failed", "lost-replicas", "unchanged"])
def test_transitions_become_events(old, new, expected):
    events = transitions(OptimizedModelStatus(conditions=old), OptimizedModelStatus(conditions=new))
    assert [(t, r) for t, r, _ in events] == expected


def test_status_patch_nulls_removed_keys_and_skips_no_ops():
    assert status_patch({"phase": "Ready"}, {"phase": "Ready"}) is None
    assert status_patch({"phase": "Building", "build": {"key": "k"}}, {"phase": "Ready"}) == {
        "phase": "Ready", "build": None}
    # A nested key is removed too (a merge patch merges nested objects: one left out stays).
    assert status_patch({"build": {"key": "k", "reason": "BuildPending"}}, {"build": {"key": "k"}}) == {
        "build": {"key": "k", "reason": None}}


def test_settings_from_environment():
    s = OperatorSettings.from_env({
        "OPTIMODEL_NAMESPACES": "ml, search ,",
        "OPTIMODEL_GPU_TOLERATIONS": '[{"key": "gpu", "operator": "Exists"}]',
        "OPTIMODEL_BUILD_ACTIVE_DEADLINE_SECONDS": "7200",
        "OPTIMODEL_UNRELATED": "ignored",
    })
    assert s.namespaces == ["ml", "search"]
    assert s.gpu_tolerations == [{"key": "gpu", "operator": "Exists"}]
    assert s.build_active_deadline_seconds == 7200
    assert OperatorSettings.from_env({}).namespaces == []


def test_bad_settings_fail_loudly_naming_the_variable():
    with pytest.raises(ValueError, match="build_active_deadline_seconds"):
        OperatorSettings.from_env({"OPTIMODEL_BUILD_ACTIVE_DEADLINE_SECONDS": "5"})


@pytest.mark.parametrize("status,expected", [
    ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": 'persistentvolumeclaim "artifacts" not found'}]},
     'pod p unschedulable: persistentvolumeclaim "artifacts" not found'),
    ({"initContainerStatuses": [{"name": "stage-repository", "state": {"waiting": {
        "reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}}]},
     "pod p container stage-repository: CrashLoopBackOff back-off 5m0s"),
    ({"initContainerStatuses": [{"name": "stage-repository", "state": {"waiting": {
        "reason": "CrashLoopBackOff", "message": "back-off 10s"}}, "lastState": {"terminated": {
            "exitCode": 1, "message": "optimodel stage-repository: CredentialsTooBroad: ...\n"}}}]},
     "pod p container stage-repository: CrashLoopBackOff back-off 10s; last exit: "
     "optimodel stage-repository: CredentialsTooBroad: ..."),
    ({"containerStatuses": [{"name": "triton", "state": {"waiting": {"reason": "ContainerCreating"}}}]}, None),
    ({"phase": "Running"}, None),
], ids=["unschedulable", "init-crashloop", "crashloop-last-words", "creating", "running"])
def test_pod_problem_explains_why_serving_is_not_ready(status, expected):
    assert pod_problem([{"metadata": {"name": "p"}, "status": status}]) == expected
