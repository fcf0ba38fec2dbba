"""The local cluster's certificates, made with the ``openssl`` command (standard library only).

Why our own CA instead of the API server's self-signed serving certificate: a real kubelet and
kube-proxy join with client certificates that the API server must trust (``--client-ca-file``),
the API server talks back to the kubelet with a client certificate the kubelet trusts, pods
reach the API server through the ``kubernetes`` Service IP (which must be in the serving
certificate), and the aggregation layer (prometheus-adapter, KEDA's metrics server) needs a
front-proxy CA. One small CA per cluster covers all of these. EC P-256 keys keep it fast.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _new_key(path: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path), cwd=path.parent)
    path.chmod(0o600)


def certificate_authority(directory: Path, name: str, common_name: str) -> KeyPair:
    """A self-signed CA valid for ten years (the cluster lives for minutes to days)."""
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _new_key(pair.key)
    _openssl("req", "-x509", "-new", "-key", str(pair.key), "-sha256", "-days", "3650",
             "-subj", f"/CN={common_name}", "-out", str(pair.cert),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return pair


def issue(ca: KeyPair, directory: Path, name: str, common_name: str, *,
          organizations: tuple[str, ...] = (), dns: tuple[str, ...] = (),
          ips: tuple[str, ...] = (), server: bool = False) -> KeyPair:
    """A certificate signed by ``ca``: a client certificate, or a serving one with SANs."""
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _new_key(pair.key)
    subject = "".join(f"/O={o}" for o in organizations) + f"/CN={common_name}"
    csr = directory / f"{name}.csr"
    _openssl("req", "-new", "-key", str(pair.key), "-subj", subject, "-out", str(csr), cwd=directory)
    extensions = ["basicConstraints=critical,CA:FALSE",
                  "keyUsage=critical,digitalSignature,keyEncipherment",
                  f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}"]
    sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
    if sans:
        extensions.append("subjectAltName=" + ",".join(sans))
    ext = directory / f"{name}.ext"
    ext.write_text("\n".join(extensions) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
             "-CAcreateserial", "-sha256", "-days", "825", "-extfile", str(ext),
             "-out", str(pair.cert), cwd=directory)
    csr.unlink()
    ext.unlink()
    return pair
