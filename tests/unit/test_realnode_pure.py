"""Pure parts of the real node and image tooling, tested without touching the host."""

from __future__ import annotations

import images
import realnode

DUMP = """-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-N KUBE-SERVICES
-N KUBE-FIREWALL
-N CNI-HOSTPORT-DNAT
-N USER-CHAIN
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A INPUT -j USER-CHAIN
-A OUTPUT -m comment --comment "kubernetes firewall for dropping marked packets" -j DROP
-A OUTPUT -s 10.0.0.0/8 -j ACCEPT
-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-X
-A USER-CHAIN -j KUBE-FIREWALL
"""


def test_owned_rules_are_kube_and_cni_chains_and_the_jumps_to_them():
    rules, chains = realnode.owned_rules(DUMP)
    assert chains == ["KUBE-SERVICES", "KUBE-FIREWALL", "CNI-HOSTPORT-DNAT"]
    assert rules == [
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes firewall for dropping marked packets" -j DROP',
        "-A USER-CHAIN -j KUBE-FIREWALL",
    ]


def test_no_rules_owned_on_a_clean_host():
    assert realnode.owned_rules("-P INPUT ACCEPT\n-A INPUT -s 10.0.0.0/8 -j ACCEPT\n") == ([], [])


def test_kubelet_config_keeps_the_host_safe():
    config = realnode.kubelet_config(realnode.Path("/state"), realnode.Path("/ca.crt"), 10250)
    assert config["resolvConf"] == ""  # no host resolver in pods: nothing leaves the machine by name
    assert config["imageGCHighThresholdPercent"] == 100  # images cannot be pulled again
    assert config["cgroupDriver"] == "cgroupfs" and config["failSwapOn"] is False
    assert config["registerWithTaints"] == [realnode.NODE_TAINT]
    proxy = realnode.kube_proxy_config(realnode.Path("/kc"), 1, 2)
    assert proxy["iptables"]["localhostNodePorts"] is False and proxy["conntrack"]["maxPerCore"] == 0


def test_cni_config_does_not_masquerade_pod_traffic():
    bridge = realnode.cni_config(realnode.Path("/state"))["plugins"][0]
    assert bridge["bridge"] == realnode.BRIDGE and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": realnode.POD_CIDR, "gateway": realnode.NODE_IP}]]


def test_image_refs_are_keyed_by_their_inputs():
    refs = {name: image.ref for name, image in images.all_images().items()}
    assert set(refs) == {"pause", "operator", "builder-cpu", "triton-local"}
    for name, ref in refs.items():
        assert ref.startswith(f"localhost/optimodel-{name}:{images.VERSION}-")
    assert images.requirements(("stage",))[-2:] == ["setuptools>=77", "wheel"]
    assert images.dockerfile_image("operator") == images.dockerfile_image("operator")
    assert images.dockerfile_image("operator").digest != images.dockerfile_image("triton-local").digest
