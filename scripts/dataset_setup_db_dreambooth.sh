#!/usr/bin/env bash
# Sets up the DreamBooth benchmark (google/dreambooth dataset/*) as data/dreambooth/<subject>/.
# Clones with git when available, else downloads the repository archive (--method git|zip to choose).
# Resumable and idempotent; --help lists the options. All logic lives in scripts/setup_data.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=_python.sh
source "$here/_python.sh"
oft_python tqdm   # sets OFT_PYTHON (chosen in _python.sh), or exits with one line
exec "$OFT_PYTHON" "$here/setup_data.py" dreambooth "$@"
