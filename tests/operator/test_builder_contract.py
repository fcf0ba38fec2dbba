"""The operator <-> builder <-> Triton-pod contract with no part faked.

The operator creates the build Job; this test plays the kubelet *and runs the real container
command*: ``optimodel`` with the Job's exact args, with the pvc:// claims "mounted" under a temp
dir, as the kubelet would mount them. The real termination message goes back into the pod; the
operator deploys; then the Deployment's init container args run the real ``stage-repository``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from opharness import wait_for

from optimodel.api.report import BuildReport

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
OPTIMODEL = Path(sys.executable).parent / "optimodel"


def small_cnn_onnx(path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10)).eval()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)


def run_container(container, pvc_root: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a container spec's command + args as the kubelet would (no shell), pvc mounts mapped."""
    env = {**os.environ, "PYTHONSAFEPATH": "1", **(extra_env or {})}
    env.update({e.name: e.value for e in container.env or []})
    env["OPTIMODEL_PVC_ROOT"] = str(pvc_root)
    assert container.command == ["optimodel"]
    return subprocess.run([str(OPTIMODEL), *container.args], cwd="/", env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def claims(models, namespace):
    """Bound PersistentVolumeClaims ``models`` and ``artifacts`` (static PVs), so pods schedule."""
    names = ["models", "artifacts"]
    for claim in names:
        pv = f"{namespace}-{claim}"
        models.core.create_persistent_volume({
            "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                     "storageClassName": "", "hostPath": {"path": f"/srv/{pv}"},
                     "claimRef": {"namespace": namespace, "name": claim}},
        })
        models.core.create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                     "resources": {"requests": {"storage": "1Gi"}}},
        })
    wait_for(lambda: all(models.core.read_namespaced_persistent_volume_claim(c, namespace).status.phase == "Bound"
                         for c in names), what="claims bound")
    yield names
    for claim in names:
        models.core.delete_persistent_volume(f"{namespace}-{claim}")


def test_real_build_from_job_args_then_real_staging(models, operator, operator_env, namespace, claims, tmp_path):
    pvc_root = tmp_path / "pvc"
    (pvc_root / "models").mkdir(parents=True)
    (pvc_root / "artifacts").mkdir()
    small_cnn_onnx(pvc_root / "models" / "cnn.onnx")
    operator.stop()
    operator.env["OPTIMODEL_ARTIFACT_ROOT"] = "pvc://artifacts/builds"
    operator.start()
    models.create("cnn", {
        "model": {"uri": "pvc://models/cnn.onnx", "format": "onnx"},
        "optimization": {"precision": "auto", "target": "onnxruntime", "maxBatchSize": 8,
                         "accuracy": {"metric": "top1-agreement", "threshold": 0.95}},
        "serving": {"gpu": {"product": "NVIDIA-L4"}, "instancesPerGpu": 2,
                    "dynamicBatching": {"maxQueueDelayMicroseconds": 250, "preferredBatchSizes": [4]}},
        "autoscaling": {"engine": "hpa"},
    })
    job = models.wait_job()[0]
    container = job.spec.template.spec.containers[0]
    termination = tmp_path / "termination-log"
    args = list(container.args)
    args[args.index("--termination-message-path") + 1] = str(termination)
    container.args = args + ["--quick"]
    built = run_container(container, pvc_root)
    assert built.returncode == 0, built.stderr[-3000:]
    message = termination.read_text()
    assert len(message.encode()) <= 4096
    models.finish_build(job.metadata.name, message, exit_code=0)
    wait_for(lambda: models.status("cnn").get("phase") == "Ready", timeout=60, what="Ready on a real build")

    status = models.status("cnn")
    key = job.metadata.annotations["optimodel.dev/build-key"]
    output = pvc_root / "artifacts" / "builds" / namespace / "cnn" / key
    report = BuildReport.model_validate_json((output / "report.json").read_text())
    assert report.build_key == key == status["engine"]["key"]
    assert status["engine"]["uri"] == f"pvc://artifacts/builds/{namespace}/cnn/{key}" == report.engine.uri
    assert status["engine"] == report.engine.to_wire()  # the builder's engine, as is
    assert status["benchmark"]["speedupCheck"] == report.speedup_check.to_wire()
    assert status["benchmark"]["accuracy"] == report.accuracy.to_wire()
    assert status["engine"]["platform"] == "onnxruntime_onnx"
    assert status["benchmark"]["speedup"] == pytest.approx(report.speedup)
    assert status["benchmark"]["accuracy"]["metric"] == "top1-agreement"

    # The Triton pod's init container, exactly as the Deployment says, into a fake emptyDir.
    deployment = models.apps.read_namespaced_deployment("cnn", namespace)
    init = deployment.spec.template.spec.init_containers[0]
    models_dir = tmp_path / "models"
    init.args = [str(models_dir) if a == "/models" else a for a in init.args]
    staged = run_container(init, pvc_root)
    assert staged.returncode == 0, staged.stderr[-3000:]
    from optimodel.triton.config import parse_config

    config = parse_config((models_dir / "cnn" / "config.pbtxt").read_text())
    assert config.name == "cnn" and config.platform == "onnxruntime_onnx"
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.instance_group[0].count == 2
    assert (models_dir / "cnn" / "1" / "model.onnx").is_file()


def test_version_skew_is_refused_by_the_real_builder_and_reported(models, operator, namespace, tmp_path):
    """One build key, computed by the operator, recomputed by the builder: a Job whose key the
    builder does not reproduce (an operator and a builder of different versions) is refused
    with BuildKeyMismatch (exit 20), and the model says so instead of stalling."""
    models.create("skew", {"model": {"uri": "pvc://models/none.onnx", "format": "onnx"},
                           "serving": {"gpu": {"product": "NVIDIA-L4"}}})
    job = models.wait_job()[0]
    container = job.spec.template.spec.containers[0]
    termination = tmp_path / "termination-log"
    args = list(container.args)
    args[args.index("--termination-message-path") + 1] = str(termination)
    asked = args[args.index("--build-key") + 1]
    assert asked == job.metadata.annotations["optimodel.dev/build-key"]
    skewed = "0" * 64  # what an operator of another version would have computed
    args[args.index("--build-key") + 1] = skewed
    container.args = args
    (tmp_path / "pvc").mkdir()
    built = run_container(container, tmp_path / "pvc")
    assert built.returncode == 20, built.stderr[-2000:]
    message = termination.read_text()
    assert '"reason":"BuildKeyMismatch"' in message and asked[:12] in message and skewed[:12] in message
    models.finish_build(job.metadata.name, message, exit_code=20)
    wait_for(lambda: models.status("skew").get("phase") == "Failed", timeout=30, what="phase Failed")
    build = models.status("skew")["build"]
    assert build["reason"] == "BuildKeyMismatch" and asked[:12] in build["message"], build
    assert len(models.jobs()) == 1, "a version mismatch is not retried"
