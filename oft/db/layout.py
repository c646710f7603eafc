"""The files of a DreamBooth run folder, named once: the trainer writes them, the queue and the evaluation read them.

<output_dir>/adapter.safetensors        the result; its presence marks the run finished
<output_dir>/run.json                   the options and prompts of the run
<output_dir>/log.jsonl                  one record per optimizer step
<output_dir>/checkpoint-NNNNNN/         resumable state (state.pt and the adapter of that step)
<output_dir>/validation/step-NNNNNN/    validation images (00.png, ...; final/ from the saved adapter)
"""

from __future__ import annotations

ADAPTER_NAME = "adapter.safetensors"
RUN_INFO = "run.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_PREFIX = "checkpoint-"
STATE_NAME = "state.pt"
VALIDATION_DIR = "validation"
EXPORT_FORMATS = ("diffusers", "single-file")  # what a merged model is exported as (oft.db.export)
