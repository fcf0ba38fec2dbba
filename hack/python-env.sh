#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and print its path.
#
# Why outside the work tree: torch and friends are gigabytes; a venv keyed by the hash of
# pyproject.toml under $OPTIMODEL_CACHE is built once and reused by every clone on the machine
# (CI's fresh clone included). The project itself is (re)installed editable each time, which is
# cheap and points the venv at the calling checkout.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
# Never run Python with the checkout as cwd on sys.path: the folder operator/ would shadow the
# standard library module of that name.
cd /
export PYTHONSAFEPATH=1
CACHE="${OPTIMODEL_CACHE:-$HOME/.cache/optimodel}"
PY="${PYTHON:-python3}"
extras="${OPTIMODEL_EXTRAS:-builder,fp8,serve,test}"
# Keyed by the requirements actually installed (core + the chosen extras), so editing other
# project metadata, or adding an extra that is not installed here, reuses the venv.
key=$("$PY" - "$here/pyproject.toml" "$extras" <<'PYKEY'
import hashlib, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[2].split(","):
    reqs += project["optional-dependencies"][extra]
print(hashlib.sha256("\n".join(sorted(reqs)).encode()).hexdigest()[:12])
PYKEY
)
venv="$CACHE/venv-$key"
log() { printf '[python-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ ! -f "$venv/.complete-$extras" ]; then
  log "creating $venv with extras [$extras] (first time: downloads torch, onnxruntime, Triton)"
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip wheel "setuptools>=77" >&2
  "$venv/bin/python" -m pip install -q --progress-bar off -e "$here[$extras]" >&2
  touch "$venv/.complete-$extras"
fi
# Point the editable install at this checkout (a CI clone lives elsewhere than the dev tree).
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$here" >&2
echo "$venv"
