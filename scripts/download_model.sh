#!/usr/bin/env bash
# Downloads Stable Diffusion 1.5 (v1-5-pruned.ckpt) into the models root ($OFT_MODELS_ROOT or ./models).
# --url MIRROR to use another copy; HF_TOKEN=... (or --token) when the host asks for a login.
# Resumable and idempotent; --help lists the options. All logic lives in scripts/setup_data.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=_python.sh
source "$here/_python.sh"
oft_python tqdm   # sets OFT_PYTHON (chosen in _python.sh), or exits with one line
exec "$OFT_PYTHON" "$here/setup_data.py" sd15 "$@"
