#!/usr/bin/env python3
"""Build the project's images from its own Dockerfile, daemonless, cached by a hash of their inputs.

Why this way: no container registry is reachable here and there is no Docker engine, so

- the Python base is made here: a ``debootstrap`` of Debian bookworm (Python 3.11 and its shared
  libpython, which Triton's Python backend stub embeds) with a virtual environment at
  ``/opt/python`` first on ``PATH`` (Debian's own Python refuses ``pip install``, PEP 668). It is
  passed to the Dockerfile as ``PYTHON_IMAGE``; users building with Docker keep the public
  ``python:3.11-slim`` default;
- pip inside a build step cannot verify the package index's certificate from this machine, so
  Python packages come from a wheelhouse made on the host (``pip wheel``) and mounted into the
  build at ``/wheelhouse`` with ``PIP_NO_INDEX=1`` (the air-gapped recipe in the Dockerfile);
- ``buildah bud`` runs the Dockerfile's targets (``operator``, ``builder-cpu``, ``triton-local``);
  the kubelet's sandbox image (``pause``) is a static Go binary in an otherwise empty image;
- every image is tagged ``<version>-<hash of its inputs>`` and kept in buildah's storage under
  ``$OPTIMODEL_CACHE/buildah``; it is rebuilt only when an input (a source file, the Dockerfile,
  the requirements, the base) changes, and then with buildah's layer cache, so the dependency
  layer (torch alone is gigabytes) is reused until ``pyproject.toml`` changes. Older tags of the
  same image are removed. ``hack/realnode.py`` imports an image into the node's containerd
  only when the node lacks that tag, through an OCI layout directory (``export``) that, like
  containerd, stores each layer once: an unchanged dependency layer is not copied again.

    python3 hack/images.py build [TARGET ...]   # build what is missing; print "name ref"
    python3 hack/images.py refs                 # the refs the current inputs would have (JSON)
    python3 hack/images.py requirements         # regenerate requirements/*.txt (make manifests)

Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("OPTIMODEL_CACHE", Path.home() / ".cache" / "optimodel"))
WHEELHOUSE = CACHE / "wheelhouse"
BUILDAH_ROOT = CACHE / "buildah"
BUILDAH_RUNROOT = Path("/run/optimodel-buildah")
OCI_LAYOUT = CACHE / "oci-layout"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("OPTIMODEL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# libpython3.11: the shared library that Triton's Python backend stub embeds.
BASE_PACKAGES = ("python3", "python3-venv", "libpython3.11", "ca-certificates")
BASE_RECIPE = "venv /opt/python on PATH; LANG=C.UTF-8; v1"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# Dockerfile targets -> the pyproject extras their image installs.
DOCKERFILE_TARGETS = {
    "operator": ("stage",),
    "builder-cpu": ("builder",),
    "triton-local": ("triton-local",),
}
CONTEXT_PATHS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "requirements", "optimodel",
                 "operator", "builder")
REQUIREMENTS_DIR = REPO / "requirements"
PAUSE_SOURCE = """// Command pause is the node's sandbox image: it holds the pod's namespaces until told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
"""


def log(msg: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Image:
    name: str
    digest: str  # hash of the inputs (not the image's content digest)

    @property
    def ref(self) -> str:
        # A full reference: containerd normalises "optimodel-x:tag" to docker.io/library/...
        return f"localhost/optimodel-{self.name}:{VERSION}-{self.digest[:12]}"

    @property
    def repository(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    def built(self) -> bool:
        return has_local_image(self.ref)


def _hash(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def _tree_hash(paths: tuple[str, ...]) -> str:
    """Content hash of the build context files (what .dockerignore lets through, roughly)."""
    h = hashlib.sha256()
    for rel in paths:
        path = REPO / rel
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            and not p.name.endswith((".pyc", ".egg-info")) and ".egg-info" not in str(p))
        for f in files:
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def requirements(extras: tuple[str, ...]) -> list[str]:
    """The project's core requirements plus ``extras``, as pyproject.toml lists them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    # The project wheel itself is built inside the image (build isolation needs these).
    return sorted(set(reqs)) + ["setuptools>=77", "wheel"]


def rendered_requirements() -> dict[str, str]:
    """``requirements/<extra>.txt`` for each image: what its dependency layer installs.

    Generated from pyproject.toml (``make manifests``; a test fails when stale) so that the
    Dockerfile's dependency layer changes only when that image's requirements do, not on every
    edit of pyproject.toml.
    """
    files = {}
    for extras in DOCKERFILE_TARGETS.values():
        (extra,) = extras
        reqs = [r for r in requirements(extras) if r not in ("setuptools>=77", "wheel")]
        files[f"{extra}.txt"] = (f"# Generated from pyproject.toml by `make manifests`: core + the `{extra}` extra.\n"
                                 + "\n".join(reqs) + "\n")
    return files


def write_requirements() -> None:
    REQUIREMENTS_DIR.mkdir(exist_ok=True)
    for name, text in rendered_requirements().items():
        (REQUIREMENTS_DIR / name).write_text(text)


def base_image() -> Image:
    return Image("python-base", _hash(DEBIAN_SUITE, *BASE_PACKAGES, BASE_RECIPE))


def pause_image() -> Image:
    go = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    return Image("pause", _hash(PAUSE_SOURCE, go))


def dockerfile_image(target: str) -> Image:
    return Image(target, _hash(target, base_image().ref, _tree_hash(CONTEXT_PATHS),
                               *requirements(DOCKERFILE_TARGETS[target])))


def all_images() -> dict[str, Image]:
    return {"pause": pause_image(), **{t: dockerfile_image(t) for t in DOCKERFILE_TARGETS}}


# --------------------------------------------------------------------------------------------
# buildah
# --------------------------------------------------------------------------------------------


def buildah_command(*args: str) -> list[str]:
    """buildah on the project's own storage (overlay driver; root), never the system's."""
    return ["buildah", "--root", str(BUILDAH_ROOT / "storage"), "--runroot", str(BUILDAH_RUNROOT),
            "--storage-driver", os.environ.get("OPTIMODEL_BUILDAH_DRIVER", "overlay"), *args]


def buildah(*args: str, capture: bool = False) -> str:
    cmd = buildah_command(*args)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=sys.stderr, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args[:3])} failed with exit {proc.returncode}")
    return (proc.stdout or "").strip()


def has_local_image(ref: str) -> bool:
    return subprocess.run(buildah_command("inspect", "--type", "image", ref), capture_output=True).returncode == 0


def export(ref: str) -> Path:
    """Put ``ref`` into the shared OCI layout directory and return it.

    Layers stay uncompressed (compressing gigabytes on two cores costs minutes, for a copy that
    never leaves the machine), and a blob already in the layout is not written again, so
    re-exporting a rebuilt builder writes only its new top layers.
    """
    OCI_LAYOUT.mkdir(parents=True, exist_ok=True)
    buildah("push", "--quiet", "--disable-compression", ref, f"oci:{OCI_LAYOUT}:{ref}")
    prune_layout(OCI_LAYOUT, keep=ref)
    return OCI_LAYOUT


def prune_layout(layout: Path, keep: str) -> None:
    """Drop other tags of ``keep``'s repository from the layout, and blobs nothing references."""
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    repository = keep.rsplit(":", 1)[0]

    def ref_name(desc: dict) -> str:
        return (desc.get("annotations") or {}).get("org.opencontainers.image.ref.name", "")

    index["manifests"] = [m for m in index["manifests"]
                          if ref_name(m) == keep or ref_name(m).rsplit(":", 1)[0] != repository]
    referenced = set()
    for desc in index["manifests"]:
        manifest = json.loads((layout / "blobs" / desc["digest"].replace(":", "/", 1)).read_text())
        referenced |= {desc["digest"], manifest["config"]["digest"], *(l["digest"] for l in manifest["layers"])}
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    tmp.rename(index_path)
    for blob in (layout / "blobs" / "sha256").iterdir():
        if f"sha256:{blob.name}" not in referenced:
            blob.unlink()


def remove_older_tags(image: Image) -> None:
    """Drop earlier builds of the same image (their unique layers go; shared ones stay)."""
    listed = buildah("images", "--format", "{{.Name}}:{{.Tag}}", capture=True)
    for ref in listed.split():
        if ref != image.ref and ref.startswith(image.repository + ":"):
            buildah("rmi", ref)


def build_base() -> Image:
    """Debian bookworm + Python 3.11 with a venv at /opt/python; stays in buildah's storage."""
    image = base_image()
    if has_local_image(image.ref):
        return image
    log(f"building {image.ref}: debootstrap {DEBIAN_SUITE} ({', '.join(BASE_PACKAGES)})")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="optimodel-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                        DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR], check=True,
                       stdout=subprocess.DEVNULL, stderr=sys.stderr)
        subprocess.run(["chroot", str(rootfs), "python3", "-m", "venv", "/opt/python"], check=True)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        container = buildah("from", "scratch", capture=True)
        try:
            buildah("copy", container, str(rootfs), "/")
            buildah("config", "--env", "PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env", "LANG=C.UTF-8", "--cmd", "python3",
                    "--label", f"org.opencontainers.image.description=Debian {DEBIAN_SUITE}, Python 3.11 venv at /opt/python",
                    container)
            buildah("commit", "--quiet", container, image.ref)
        finally:
            buildah("rm", container)
    log(f"built {image.ref} in {time.monotonic() - t0:.0f}s")
    return image


def build_pause() -> Image:
    image = pause_image()
    if image.built():
        return image
    log(f"building {image.ref}")
    with tempfile.TemporaryDirectory(prefix="optimodel-pause-") as tmp:
        src = Path(tmp)
        (src / "go.mod").write_text("module optimodel.dev/pause\n\ngo 1.22\n")
        (src / "main.go").write_text(PAUSE_SOURCE)
        env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
        subprocess.run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(src / "pause"), "."],
                       cwd=src, env=env, check=True)
        container = buildah("from", "scratch", capture=True)
        try:
            buildah("copy", "--chmod", "0755", container, str(src / "pause"), "/pause")
            buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
            buildah("commit", "--quiet", container, image.ref)
        finally:
            buildah("rm", container)
    remove_older_tags(image)
    return image


def ensure_wheelhouse(extras: tuple[str, ...]) -> None:
    """Wheels for ``extras`` on the host (pip's cache makes a second run cheap)."""
    reqs = requirements(extras)
    stamp = WHEELHOUSE / f".complete-{_hash(*reqs)[:16]}"
    if stamp.exists():
        return
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    log(f"wheelhouse for [{', '.join(extras)}]: pip wheel {len(reqs)} requirements")
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(WHEELHOUSE),
                    "--find-links", str(WHEELHOUSE), *reqs], check=True, env=env, stdout=sys.stderr)
    stamp.touch()


def build_dockerfile_target(target: str) -> Image:
    image = dockerfile_image(target)
    if image.built():
        return image
    base = build_base()
    ensure_wheelhouse(DOCKERFILE_TARGETS[target])
    buildah("rm", "--all")  # working containers a failed or killed build left behind
    log(f"building {image.ref} (Dockerfile target {target})")
    t0 = time.monotonic()
    buildah("bud", "--quiet", "--layers=true", "--network", "host",
            "--target", target, "--tag", image.ref,
            "--build-arg", f"PYTHON_IMAGE={base.ref}",
            "--build-arg", "PIP_NO_INDEX=1",
            "--volume", f"{WHEELHOUSE}:/wheelhouse:ro",
            "--file", str(REPO / "Dockerfile"), str(REPO))
    remove_older_tags(image)
    size = buildah("images", "--format", "{{.Size}}", image.ref, capture=True)
    log(f"built {image.ref} in {time.monotonic() - t0:.0f}s ({size})")
    return image


PRUNE_BELOW_BYTES = 25 * 2**30


def prune_if_disk_is_short() -> None:
    """Drop buildah's intermediate (cache) images when the disk runs short.

    They make a rebuild after a source change take seconds (the multi-gigabyte dependency layer
    is reused), so they are kept while there is room; a superseded dependency layer is gigabytes.
    """
    free = shutil.disk_usage(BUILDAH_ROOT if BUILDAH_ROOT.exists() else CACHE).free
    if free < PRUNE_BELOW_BYTES:
        log(f"{free / 2**30:.0f} GiB free: pruning buildah's intermediate images (build cache)")
        buildah("rmi", "--prune")


def build(targets: list[str]) -> dict[str, Image]:
    images = {}
    for target in targets:
        if target == "pause":
            images[target] = build_pause()
        elif target in DOCKERFILE_TARGETS:
            images[target] = build_dockerfile_target(target)
        else:
            raise SystemExit(f"unknown image {target!r}; known: pause, {', '.join(DOCKERFILE_TARGETS)}")
    prune_if_disk_is_short()
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "refs", "requirements"])
    parser.add_argument("targets", nargs="*", help="default: all")
    args = parser.parse_args(argv)
    if args.action == "requirements":
        write_requirements()
        return 0
    targets = args.targets or list(all_images())
    if args.action == "refs":
        print(json.dumps({t: {"ref": i.ref, "built": i.built()}
                          for t, i in all_images().items() if t in targets}, indent=2))
        return 0
    for name, image in build(targets).items():
        print(name, image.ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
