#!/usr/bin/env bash
# Wheels that `import inference.local_engine` needs and the GPU machine's image lacks (its package list:
# /work/.library/device/KINDS.md, "Python packages already there"): pydantic & co., through bot.settings.
# Fetched here (the GPU machine downloads nothing) into .whl/ (git-ignored), for CPython 3.12 on x86-64 Linux, at the
# versions of this checkout's .venv; peft too (the image's is older). With --train, bitsandbytes as well (43 MB; not
# in the image, not in the .venv): the QLoRA trainer of bench/finetune_gpu.py and bench/train_while_serving.py.
# docs/gpu.md has the device command that installs them into /tmp/site.
#
#   bash bench/gpu_wheels.sh [--train]  # then carry ".whl" in the device call
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
PY=${PYTHON:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
PACKAGES=(
  pydantic pydantic-core pydantic-settings typing-inspection annotated-types python-dotenv
  typing-extensions # pydantic needs a recent one; the image's version is not recorded
  peft
)
BITSANDBYTES=0.50.2 # docs/learning.md: the version finetune-gpu.json was measured with (CUDA 13 library inside)
mkdir -p .whl
rm -f .whl/*.whl # one version of each, or the install stops
for name in "${PACKAGES[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$name==$(version "$name")"
done
if [ "${1:-}" = "--train" ]; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 -d .whl "bitsandbytes==$BITSANDBYTES"
fi
ls -l .whl
du -sh .whl
