"""DreamBooth test data: google/dreambooth's prompts file written from a prompt table."""

from __future__ import annotations

from pathlib import Path

from oft.specs.benchmark import PromptTable


def write_prompts_file(table: PromptTable, path: Path, newline: str = "\n") -> Path:
    """A copy of google/dreambooth's prompts_and_classes.txt in its own layout, written from ``table``."""
    lines = ["Classes", "", "subject_name,class", *(f"{s},{c}" for s, c in table.subjects), "", "Prompts", ""]
    for title, prompts in (
        ("Object Prompts", table.object_prompts),
        ("Live Subject Prompts", table.live_prompts),
    ):
        body = [f"'{p}'.format(unique_token, class_token)," for p in prompts]
        body[-1] = body[-1].rstrip(",")
        lines += [title, "", "prompt_list = [", *body, "]", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(newline.join(lines).encode())
    return path
