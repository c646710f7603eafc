#!/usr/bin/env bash
# One run of the 750-run DreamBooth benchmark: run $1 trains subject $1/25 with validation prompt $1%25
# (SPEC §4), resuming from its newest checkpoint when it was interrupted. Made for job arrays, e.g.
#   sbatch --array=0-749 --gpus=1 --wrap 'bash oft-db/train_dreambooth_oft.sh $SLURM_ARRAY_TASK_ID'
# Extra arguments go to train_dreambooth_oft.py (e.g. --dry-run, --no-coft, --output_root DIR).
set -euo pipefail
if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
  echo "usage: bash oft-db/train_dreambooth_oft.sh RUN_INDEX(0..749) [train_dreambooth_oft.py options]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
run=$1
shift
exec "${PYTHON:-python3}" "$here/train_dreambooth_oft.py" --run "$run" --resume_from_checkpoint latest "$@"
