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
# What a trained adapter is exported as (oft.db.export): the first two are base + adapter merged into one model.
EXPORT_FORMATS = {
    "diffusers": "a merged StableDiffusionPipeline folder",
    "single-file": "one merged LDM-layout .safetensors/.ckpt, like v1-5-pruned.ckpt",
    "peft": "a PEFT OFT folder (BOFT with magnitude scales) for PeftModel.from_pretrained",
    "webui": "per-layer weight differences (.safetensors) that A1111 and ComfyUI load as a LoRA",
    "adapter": "this project's adapter file (e.g. converted from a PEFT folder)",
}
MERGED_FORMATS = ("diffusers", "single-file")
