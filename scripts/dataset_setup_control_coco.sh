#!/usr/bin/env bash
# Prepares COCO 2017 for the canny/canny1k/5k/20k/50k (and, with --depth-model, depth) control tasks under
# the data root (--data-root, $OFT_DATA_ROOT or ./data). Downloads COCO unless --coco-dir points to a copy.
# Resumable and deterministic; --help lists the options. All logic lives in scripts/prepare_coco.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=_python.sh
source "$here/_python.sh"
oft_python numpy cv2 tqdm   # sets OFT_PYTHON (chosen in _python.sh), or exits with one line
exec "$OFT_PYTHON" "$here/prepare_coco.py" "$@"
