#!/usr/bin/env bash
# One run of the 750-run DreamBooth benchmark: run $1 trains subject $1/25 with validation prompt $1%25
# (SPEC §4), resuming from its newest checkpoint when it was interrupted. Made for job arrays, e.g.
#   sbatch --array=0-749 --gpus=1 --wrap 'bash oft-db/train_dreambooth_oft.sh $SLURM_ARRAY_TASK_ID'
# Extra arguments go to train_dreambooth_oft.py (e.g. --dry-run, --no-coft, --output_root DIR).
set -euo pipefail
usage="usage: bash oft-db/train_dreambooth_oft.sh RUN_INDEX(0..749) [train_dreambooth_oft.py options]"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=../scripts/_python.sh
source "$here/../scripts/_python.sh"
modules=(torch torchvision diffusers transformers accelerate safetensors open_clip tqdm)
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  oft_python "${modules[@]}"   # sets OFT_PYTHON (chosen in _python.sh), or exits with one line
  printf '%s\n  (runs train_dreambooth_oft.py --run RUN_INDEX --resume_from_checkpoint latest)\n\n' "$usage"
  exec "$OFT_PYTHON" "$here/train_dreambooth_oft.py" --help
fi
if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
  echo "$usage (--help lists the options)" >&2
  exit 2
fi
run=$1
shift
oft_python "${modules[@]}"
exec "$OFT_PYTHON" "$here/train_dreambooth_oft.py" --run "$run" --resume_from_checkpoint latest "$@"
