#!/usr/bin/env bash
# Prepares bench/device-check.sh for a GPU machine that cannot reach a package registry (the device tool's): run
# it here, where pip works, then carry both folders it fills (both git-ignored).
#   .device-wheels/  wheels of the packages eldarts needs that such a machine lacks (pydantic and its parts, thop,
#                    and the CLI's typer/click/rich stack, at the versions installed here, which the tests ran with)
#   .device-data/    the CIFAR-10 JPEG archive for the two-epoch search (copied from ../shared/datasets/ or --data)
#
#   bash bench/device-prepare.sh [--python-version 3.12] [--data PATH/cifar10-jpeg.tar.gz]
#
# --python-version is the GPU machine's Python (wheels with compiled parts are built per version). Run it in the
# project's environment (its venv active, or PYTHON=path/to/python): the versions are that Python's.
set -euo pipefail
cd "$(dirname "$0")/.."

pyver=3.12
data=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) pyver="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;  # the comment at the top
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
py="${PYTHON:-python3}"
packages=(pydantic pydantic-core annotated-types typing-inspection typing-extensions thop
          typer annotated-doc click rich shellingham markdown-it-py mdurl pygments)
# the versions installed here; a package not installed here is fetched at its newest version
pins=$("$py" - "${packages[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
)
rm -rf .device-wheels.partial
mkdir -p .device-wheels.partial
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .device-wheels.partial $pins \
  || { echo "error: pip could not download the wheels (above); is a package registry reachable?" >&2; exit 1; }
rm -rf .device-wheels
mv .device-wheels.partial .device-wheels

if [ -z "$data" ]; then data=../shared/datasets/cifar10-jpeg.tar.gz; fi
if [ -f "$data" ]; then
  mkdir -p .device-data
  cp "$data" .device-data/cifar10-jpeg.tar.gz
else
  echo "warning: no CIFAR-10 archive at $data (--data PATH): the GPU check's two-epoch search will refuse to start" >&2
fi
echo "versions of $("$py" -c 'import sys; print(sys.executable)'): $(echo $pins | tr '\n' ' ')"
echo "$(ls .device-wheels | wc -l) wheels in .device-wheels ($(du -sh .device-wheels | cut -f1)), data:" \
  "$(ls .device-data 2>/dev/null || echo none)"
echo "On the GPU machine: bash bench/device-check.sh   (carry .device-wheels and .device-data)"
