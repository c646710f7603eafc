"""The 750-run DreamBooth benchmark (SPEC §4): prompt lists, run-index mapping, and the dataset's prompt file.

Run ``i`` (0..749) trains subject ``i // 25`` of ``oft.specs.subjects.SUBJECTS`` and validates (and is evaluated) on
prompt ``i % 25`` of the subject's list: the live-subject list for cats and dogs, the object list otherwise. The
two lists below are those of google/dreambooth's ``dataset/prompts_and_classes.txt`` (``{0}`` = unique token,
``{1}`` = class noun); ``read_table`` parses that file when the dataset is present and refuses one that differs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from oft.specs.subjects import PROMPTS_FILE, SUBJECTS

UNIQUE_TOKEN = "qwe"
PROMPTS_PER_SUBJECT = 25
NUM_RUNS = len(SUBJECTS) * PROMPTS_PER_SUBJECT  # 750
LIVE_CLASSES = ("cat", "dog")  # subjects of these classes use the live-subject prompts
SETUP_HINT = "run `bash scripts/dataset_setup_db_dreambooth.sh`"

_SHARED_HEAD = (
    "a {0} {1} in the jungle",
    "a {0} {1} in the snow",
    "a {0} {1} on the beach",
    "a {0} {1} on a cobblestone street",
    "a {0} {1} on top of pink fabric",
    "a {0} {1} on top of a wooden floor",
    "a {0} {1} with a city in the background",
    "a {0} {1} with a mountain in the background",
    "a {0} {1} with a blue house in the background",
    "a {0} {1} on top of a purple rug in a forest",
)
_SHARED_TAIL = (
    "a red {0} {1}",
    "a purple {0} {1}",
    "a shiny {0} {1}",
    "a wet {0} {1}",
    "a cube shaped {0} {1}",
)

OBJECT_PROMPTS: tuple[str, ...] = (
    *_SHARED_HEAD,
    "a {0} {1} with a wheat field in the background",
    "a {0} {1} with a tree and autumn leaves in the background",
    "a {0} {1} with the Eiffel Tower in the background",
    "a {0} {1} floating on top of water",
    "a {0} {1} floating in an ocean of milk",
    "a {0} {1} on top of green grass with sunflowers around it",
    "a {0} {1} on top of a mirror",
    "a {0} {1} on top of the sidewalk in a crowded street",
    "a {0} {1} on top of a dirt road",
    "a {0} {1} on top of a white rug",
    *_SHARED_TAIL,
)

LIVE_PROMPTS: tuple[str, ...] = (
    *_SHARED_HEAD,
    "a {0} {1} wearing a red hat",
    "a {0} {1} wearing a santa hat",
    "a {0} {1} wearing a rainbow scarf",
    "a {0} {1} wearing a black top hat and a monocle",
    "a {0} {1} in a chef outfit",
    "a {0} {1} in a firefighter outfit",
    "a {0} {1} in a police outfit",
    "a {0} {1} wearing pink glasses",
    "a {0} {1} wearing a yellow shirt",
    "a {0} {1} in a purple wizard outfit",
    *_SHARED_TAIL,
)


@dataclass(frozen=True)
class PromptTable:
    """Subjects with their class nouns, and the object / live-subject prompt templates."""

    subjects: tuple[tuple[str, str], ...]
    object_prompts: tuple[str, ...]
    live_prompts: tuple[str, ...]


BUILTIN = PromptTable(SUBJECTS, OBJECT_PROMPTS, LIVE_PROMPTS)


@dataclass(frozen=True)
class Run:
    """Everything SPEC §4 fixes for one benchmark run."""

    index: int
    subject_index: int
    prompt_index: int
    subject: str
    class_noun: str
    live: bool
    instance_prompt: str  # "a photo of qwe {class}"
    class_prompt: str  # "a photo of {class}" (prior preservation)
    validation_prompt: str  # the run's prompt with the unique token
    eval_prompt: str  # the same prompt without the unique token (CLIP-T text)

    @property
    def name(self) -> str:
        """Output folder name, ``{subject}-{prompt index}`` as the reference named it."""
        return f"{self.subject}-{self.prompt_index}"

    @property
    def class_dir_name(self) -> str:
        """Folder of the class images shared by all subjects of this class (no spaces)."""
        return self.class_noun.replace(" ", "_")


def get_run(index: int, table: PromptTable = BUILTIN) -> Run:
    """Run ``index`` of the benchmark: subject ``index // 25``, prompt ``index % 25``."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < NUM_RUNS:
        raise ValueError(f"run index must be an integer in 0..{NUM_RUNS - 1}, got {index!r}")
    s, p = divmod(index, PROMPTS_PER_SUBJECT)
    subject, noun = table.subjects[s]
    live = noun in LIVE_CLASSES
    template = (table.live_prompts if live else table.object_prompts)[p]
    return Run(
        index=index,
        subject_index=s,
        prompt_index=p,
        subject=subject,
        class_noun=noun,
        live=live,
        instance_prompt=f"a photo of {UNIQUE_TOKEN} {noun}",
        class_prompt=f"a photo of {noun}",
        validation_prompt=template.format(UNIQUE_TOKEN, noun),
        # dropping "{0} " leaves the plain prompt, e.g. "a dog in the jungle", "a cube shaped dog"
        eval_prompt=template.replace("{0} ", "").format("", noun),
    )


def parse_run_range(spec: str) -> list[int]:
    """Run indices from ``"137"``, ``"0-749"``, ``"0-24,50,100-124"`` (inclusive ranges), sorted, unique."""
    indices: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad run range {part!r} in {spec!r}: use e.g. 137, 0-749 or 0-24,50")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if lo > hi or hi >= NUM_RUNS:
            raise ValueError(f"run range {part!r} is outside 0..{NUM_RUNS - 1} or reversed")
        indices.update(range(lo, hi + 1))
    return sorted(indices)


# --- the dataset's prompts_and_classes.txt --------------------------------------------------------------------
_PROMPT_LINE = re.compile(r"'(.*)'\.format\(unique_token, class_token\),?")
_SECTIONS = {"Object Prompts": "object", "Live Subject Prompts": "live"}


def parse_prompts_file(text: str, source: str = PROMPTS_FILE) -> PromptTable:
    """Parse google/dreambooth's ``prompts_and_classes.txt``: a ``subject_name,class`` CSV under "Classes",
    then two ``prompt_list = [...]`` blocks of ``'...'.format(unique_token, class_token)`` lines under
    "Object Prompts" and "Live Subject Prompts"."""
    subjects: list[tuple[str, str]] = []
    prompts: dict[str, list[str]] = {"object": [], "live": []}
    section = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line in ("Prompts", "subject_name,class", "prompt_list = [", "]"):
            continue
        if line == "Classes":
            section = "classes"
        elif line in _SECTIONS:
            section = _SECTIONS[line]
        elif section == "classes" and line.count(",") == 1:
            name, noun = line.split(",")
            subjects.append((name.strip(), noun.strip()))
        elif section in prompts and (m := _PROMPT_LINE.fullmatch(line)):
            prompts[section].append(m[1])
        else:
            raise ValueError(f"{source} line {number}: cannot read {line!r}")
    return PromptTable(tuple(subjects), tuple(prompts["object"]), tuple(prompts["live"]))


def first_difference(found: PromptTable, expected: PromptTable = BUILTIN) -> str | None:
    """A one-line description of the first entry where ``found`` differs from ``expected`` (None if equal)."""
    for field in ("subjects", "object_prompts", "live_prompts"):
        a, b = getattr(found, field), getattr(expected, field)
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else "<missing>"
            y = b[i] if i < len(b) else "<missing>"
            if x != y:
                return f"{field}[{i}] is {x!r}, the benchmark has {y!r}"
    return None


def read_table(dataset_dir: str | os.PathLike | None) -> PromptTable:
    """The benchmark table, checked against the dataset's ``prompts_and_classes.txt`` when that file exists.

    A file that differs from the built-in table is refused (the run indices would silently mean other runs).
    """
    path = Path(dataset_dir) / PROMPTS_FILE if dataset_dir is not None else None
    if path is None or not path.is_file():
        return BUILTIN
    diff = first_difference(parse_prompts_file(path.read_text(encoding="utf-8"), str(path)))
    if diff is not None:
        raise ValueError(f"{path} does not match the benchmark table: {diff}; re-download it ({SETUP_HINT})")
    return BUILTIN
