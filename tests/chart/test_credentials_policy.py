"""The chart's credentials policy closes the confused deputy of ``spec.model.credentialsSecret``.

The operator creates the builder pod that mounts the named Secret, so without a check anyone who
may create an OptimizedModel could have any Secret of the namespace used on their behalf. On the
real API server, with the chart's rendered ValidatingAdmissionPolicy and binding: a user who may
create models but not read Secret ``hub-token`` is refused, naming the field; once granted
``get`` on it, the same model is admitted; a model without credentials needs nothing.
"""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml
from chart import template
from polling import wait_for

GROUP, VERSION = "optimodel.dev", "v1alpha1"
KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
USER = "alice@example.com"


def policy_objects(values: dict | None = None, **kwargs) -> list[dict]:
    return [o for o in template(values, **kwargs)
            if o["kind"] in KINDS and o["metadata"]["name"].endswith("-credentials")]


def test_rendered_by_default_and_can_be_switched_off(helm_bin):
    policy, binding = policy_objects()
    assert policy["metadata"]["name"] == binding["spec"]["policyName"] == "optimodel-credentials"
    for obj in (policy, binding):
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    assert "authorizer.group('').resource('secrets')" in policy["spec"]["validations"][0]["expression"]
    assert policy_objects({"credentialsPolicy.enabled": False}) == []
    (_, scoped) = policy_objects({"watchNamespaces": ["ml-a"]})
    assert scoped["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"] == ["ml-a"]


def model(name: str, secret: str | None) -> str:
    source = {"uri": "s3://models/minilm/", "format": "huggingface"}
    if secret:
        source["credentialsSecret"] = secret
    return json.dumps({"apiVersion": f"{GROUP}/{VERSION}", "kind": "OptimizedModel",
                       "metadata": {"name": name}, "spec": {"model": source}})


def test_a_model_may_only_name_a_secret_its_author_may_read(cluster, crd, namespace):
    objects = policy_objects({"watchNamespaces": [namespace]}, release=f"cp-{namespace}")
    name = objects[0]["metadata"]["name"]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    rbac = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: model-author, namespace: {namespace}}}
rules:
  - {{apiGroups: ["optimodel.dev"], resources: ["optimizedmodels"], verbs: ["create", "get", "delete"]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: model-author, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: model-author}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: "{USER}"}}]
"""
    cluster.kubectl("apply", "-f", "-", input=rbac)
    cluster.kubectl("create", "secret", "generic", "hub-token", "-n", namespace, "--from-literal=HF_TOKEN=x")
    try:
        def create_as_author(obj: str):
            return cluster.kubectl("create", "-n", namespace, "--as", USER, "-f", "-", input=obj, check=False)

        # The policy takes effect within seconds of its creation: poll until refused.
        def refused():
            proc = create_as_author(model("borrowed", "hub-token"))
            if proc.returncode == 0:
                cluster.kubectl("delete", "om", "borrowed", "-n", namespace, "--wait=true")
                return None
            return proc.stderr
        message = wait_for(refused, timeout=60, interval=1, what="the credentials policy in effect")
        assert "spec.model.credentialsSecret: you may not read Secret hub-token" in message, message
        assert f"ValidatingAdmissionPolicy '{name}'" in message, message
        assert create_as_author(model("plain", None)).returncode == 0, "no Secret, nothing to check"

        cluster.kubectl("create", "role", "read-hub-token", "-n", namespace, "--verb=get",
                        "--resource=secrets", "--resource-name=hub-token")
        cluster.kubectl("create", "rolebinding", "read-hub-token", "-n", namespace, "--role=read-hub-token",
                        f"--user={USER}")
        wait_for(lambda: create_as_author(model("owned", "hub-token")).returncode == 0, timeout=30,
                 interval=1, what="admitted once the author may read the Secret")
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name,
                        "--ignore-not-found")


@pytest.fixture
def crd(cluster):
    from pathlib import Path

    crd_file = Path(__file__).resolve().parents[2] / "crds" / "optimizedmodel.yaml"
    cluster.kubectl("apply", "-f", str(crd_file))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/optimizedmodels.optimodel.dev")
