#!/usr/bin/env bash
# The device check: `make device-check` (on a lent GPU machine) or, with arguments, e.g.
#   bash benchmarks/device.sh --accelerator cpu --tiny --output /tmp/device.json   (the test suite's)
# A GPU machine has torch, torchvision, Lightning and torchmetrics but neither Hydra nor the data
# and no network: `make device-pack` (here) puts the wheels it lacks in .device/whl and MNIST and
# Fashion-MNIST (gzipped) in .device/data; carry .device with the working tree and they are used.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if compgen -G ".device/whl/*.whl" > /dev/null && ! "$PYTHON" -c "import hydra" 2> /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/device-site .device/whl/*.whl
    export PYTHONPATH="/tmp/device-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "${DATA_ROOT:-}" ] && [ -d .device/data ]; then
    # torchvision reads the uncompressed IDX files.
    for packed in .device/data/*/raw/*.gz; do
        unpacked="/tmp/device-data/${packed#.device/data/}"
        mkdir -p "$(dirname "$unpacked")"
        [ -f "${unpacked%.gz}" ] || gunzip -c "$packed" > "${unpacked%.gz}"
    done
    export DATA_ROOT=/tmp/device-data
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" -m benchmarks.device "$@"
