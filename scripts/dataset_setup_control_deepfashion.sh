#!/usr/bin/env bash
# Sets up the deepfashion control dataset under the data root (--data-root, $OFT_DATA_ROOT or ./data).
# Resumable and idempotent; --help lists the options. All logic lives in scripts/setup_data.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=_python.sh
source "$here/_python.sh"
oft_python tqdm   # sets OFT_PYTHON (chosen in _python.sh), or exits with one line
exec "$OFT_PYTHON" "$here/setup_data.py" deepfashion "$@"
