#!/usr/bin/env bash
# Sets up the deepfashion control dataset under the data root (--data-root, $OFT_DATA_ROOT or ./data).
# Resumable and idempotent; --help lists the options. All logic lives in scripts/setup_data.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$here/setup_data.py" deepfashion "$@"
