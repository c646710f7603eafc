"""COCO 2017 into the reference's control layout: ``<data root>/COCO/{train,val}/`` for canny (and depth).

Per split folder (``train`` from train2017, ``val`` from val2017):

- ``color/<stem>.png``: the target, the COCO image resized (shorter side to ``size``) and centre-cropped to
  ``size`` x ``size`` (the reference's loader does not resize, and batches need one size), lossless PNG;
- ``canny/<stem>.png``: ``cv2.Canny(color, 100, 200)`` of exactly that image, 3 channels (ControlNet's
  annotator applies Canny to the colour image; the C2I metric recomputes it the same way on the targets);
- ``depth/<stem>.png``: only with a local transformers depth model (DPT/MiDaS style);
- caption files, JSON lines ``{"source": "source/<stem>.png", "target": "target/<stem>.png", "prompt": ...}``:
  ``prompt_train_blip.json`` (all training images), ``prompt_val_blip_full.json`` (all 5,000 validation
  images, the evaluation set), ``prompt_val_blip.json`` (a seeded preview of a few validation images);
- the canny1k/5k/20k/50k subsets: ``train/prompt_train_blip_{N}k.json``, the first N of one seeded
  permutation of the training list (so 1k ⊂ 5k ⊂ 20k ⊂ 50k), sharing the image folders. Names come from
  ``Task.caption_name``.

Prompts are the first COCO caption of each image (lowest annotation id) unless BLIP captions are given.
Everything is deterministic given the seed; images already written are skipped, so a killed run resumes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from tqdm import tqdm

from oft.common.files import atomic_write_bytes
from oft.setup.download import SetupError, say
from oft.setup.layout import check_control_dataset
from oft.specs.tasks import CANNY_THRESHOLDS, TASKS, Task, read_captions

COCO_SPLITS = {"train": "train2017", "val": "val2017"}
DATASET_DIR = "COCO"
CANNY = TASKS["canny"]
DEPTH = TASKS["depth"]
SUBSET_TASKS = tuple(t for t in TASKS.values() if t.dataset_dir == DATASET_DIR and t.subset.value is not None)


# ------------------------------------------------------------------------------------------ captions


def coco_captions(annotation_file: str | Path) -> dict[str, str]:
    """``{image stem: caption}`` from a COCO captions JSON: each image's caption with the lowest annotation id."""
    data = json.loads(Path(annotation_file).read_text(encoding="utf-8"))
    stems = {img["id"]: PurePosixPath(img["file_name"]).stem for img in data["images"]}
    captions: dict[str, str] = {}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        captions.setdefault(stems[ann["image_id"]], " ".join(ann["caption"].split()))
    return captions


def user_captions(path: str | Path) -> dict[str, str]:
    """``{image stem: caption}`` from user captions (e.g. BLIP): a JSON object ``{file name: caption}``, or a
    JSON list / JSON lines of records with ``image``/``file_name``/``source`` and ``prompt``/``caption``."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        return {PurePosixPath(k).stem: v for k, v in data.items()}
    captions = {}
    for record in data:
        name = record.get("image") or record.get("file_name") or record.get("source")
        caption = record.get("prompt") or record.get("caption")
        if name is None or caption is None:
            raise SetupError(
                f"{path}: record {record!r} lacks an image name or a caption: use "
                '{"image": "000000000139.jpg", "prompt": "..."} records'
            )
        captions[PurePosixPath(name).stem] = caption
    return captions


# ------------------------------------------------------------------------------------------ images


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size``, then centre-crop to ``size`` x ``size`` (H x W x C)."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]


def canny_map(image: np.ndarray) -> np.ndarray:
    """The canny hint of a BGR (or RGB) uint8 image: edges in {0, 255}, repeated to 3 channels (H x W x 3)."""
    edges = cv2.Canny(image, *CANNY_THRESHOLDS)
    return cv2.cvtColor(edges, cv2.COLOR_GRAY2BGR)


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _prepare_one(job: tuple[str, str, str, int]) -> None:
    """Write one colour target and its canny hint (skipped by the caller when both exist)."""
    src, color, hint, size = job
    image = cv2.imread(src, cv2.IMREAD_COLOR)
    if image is None:
        raise SetupError(
            f"cannot read {src}: the COCO image is damaged; replace it (or re-download COCO) and rerun"
        )
    image = square_resize(image, size)
    atomic_write_bytes(hint, _png(canny_map(image)))
    atomic_write_bytes(color, _png(image))


def _single_threaded_cv2() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def _run(jobs: list, workers: int, desc: str, progress: bool) -> None:
    if workers <= 1:
        for job in tqdm(jobs, desc=desc, unit="img", disable=not progress):
            _prepare_one(job)
        return
    # forkserver, not fork: a forked child inherits OpenCV's thread pool in whatever state the parent left
    # it and can deadlock on its first cv2 call (seen here after the parent itself ran cv2 in parallel).
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_single_threaded_cv2) as pool:
        done = pool.map(_prepare_one, jobs, chunksize=max(1, min(64, len(jobs) // (4 * workers))))
        for _ in tqdm(done, total=len(jobs), desc=desc, unit="img", disable=not progress):
            pass


def _entry(stem: str, prompt: str) -> dict:
    return {"source": f"source/{stem}.png", "target": f"target/{stem}.png", "prompt": prompt}


def _write_jsonl(path: Path, entries: Iterable[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode())


def prepare_split(
    coco_dir: Path,
    out: Path,
    split: str,
    captions: dict[str, str],
    size: int,
    workers: int,
    progress: bool = True,
) -> list[dict]:
    """Write ``out/color`` and ``out/canny`` for one split; return its caption entries in file-name order."""
    image_dir = coco_dir / COCO_SPLITS[split]
    if not image_dir.is_dir():
        raise SetupError(
            f"no {image_dir}: pass --coco-dir with the COCO 2017 folder (train2017/, val2017/, annotations/)"
        )
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    uncaptioned = sum(p.stem not in captions for p in images)
    if uncaptioned:
        say(f"{split}: {uncaptioned} of {len(images)} images have no caption and are left out")
    images = [p for p in images if p.stem in captions]
    if not images:
        raise SetupError(
            f"no captioned images in {image_dir}: check that the captions belong to {COCO_SPLITS[split]}"
        )
    for folder in (CANNY.control_dir, CANNY.target_dir):
        (out / folder).mkdir(parents=True, exist_ok=True)
    jobs = [
        (
            str(p),
            str(out / CANNY.target_dir / f"{p.stem}.png"),
            str(out / CANNY.control_dir / f"{p.stem}.png"),
            size,
        )
        for p in images
    ]
    todo = [j for j in jobs if not (Path(j[1]).is_file() and Path(j[2]).is_file())]
    say(f"{split}: {len(images) - len(todo)} of {len(images)} images already prepared")
    _run(todo, workers, f"canny {split}", progress)
    return [_entry(p.stem, captions[p.stem]) for p in images]


def seeded_order(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` fixed by ``seed`` (Python's ``random``, stable across platforms)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def write_subsets(out: Path, seed: int, tasks: Iterable[Task] = SUBSET_TASKS) -> list[Task]:
    """Write each subset task's training list from ``out/train/prompt_train_blip.json``; return those written.

    The subset of N is the first N of one seeded permutation, kept in file order, so smaller subsets are
    contained in larger ones. Subsets larger than the training list are skipped with a message.
    """
    entries = read_captions(
        out / CANNY.split_subdir("train") / CANNY.caption_name("train"), CANNY.caption_format
    )
    order = seeded_order(len(entries), seed)
    written = []
    for task in tasks:
        if task.subset.value > len(entries):
            say(
                f"{task.name}: needs {task.subset.value:,} training items, only {len(entries):,} prepared: skipped"
            )
            continue
        keep = sorted(order[: task.subset.value])
        _write_jsonl(
            out / task.split_subdir("train") / task.caption_name("train"), (entries[i] for i in keep)
        )
        written.append(task)
    return written


def make_depth(
    out: Path, entries: list[dict], model: Path, size: int, batch_size: int = 8, progress: bool = True
) -> None:
    """Write ``out/depth/<stem>.png`` (relative depth scaled to 0..255, 3 channels) with a local
    transformers depth-estimation model (DPT/MiDaS style); existing files are kept."""
    if not model.is_dir():
        raise SetupError(
            f"--depth-model {model} is not a folder: give a local transformers depth model folder"
        )
    import torch
    from PIL import Image
    from transformers import pipeline

    try:
        estimator = pipeline(
            "depth-estimation", model=str(model), device=0 if torch.cuda.is_available() else -1
        )
    except (OSError, ValueError, KeyError) as exc:
        raise SetupError(
            f"cannot load a depth model from {model} ({str(exc).splitlines()[0]}): give a folder saved "
            "with save_pretrained, e.g. Intel/dpt-hybrid-midas"
        ) from None
    (out / DEPTH.control_dir).mkdir(parents=True, exist_ok=True)
    names = [PurePosixPath(e["source"]).name for e in entries]
    todo = [n for n in names if not (out / DEPTH.control_dir / n).is_file()]
    for start in tqdm(
        range(0, len(todo), batch_size), desc=f"depth {out.name}", unit="batch", disable=not progress
    ):
        batch = todo[start : start + batch_size]
        images = [Image.open(out / DEPTH.target_dir / n).convert("RGB") for n in batch]
        for name, result in zip(batch, estimator(images, batch_size=batch_size), strict=True):
            depth = np.asarray(result["depth"].convert("L").resize((size, size), Image.BICUBIC))
            atomic_write_bytes(out / DEPTH.control_dir / name, _png(cv2.cvtColor(depth, cv2.COLOR_GRAY2BGR)))


def prepare_coco(
    coco_dir: str | Path,
    root: str | Path,
    *,
    captions: dict[str, Path] | None = None,
    size: int = 512,
    seed: int = 0,
    workers: int | None = None,
    val_preview: int = 8,
    depth_model: str | Path | None = None,
    progress: bool = True,
) -> str:
    """Build ``root/COCO`` from a COCO 2017 folder; return the layout check's one-line summary.

    ``captions`` maps a split to a user caption file (``user_captions``); otherwise COCO's captions are used.
    """
    coco_dir, out = Path(coco_dir), Path(root) / DATASET_DIR
    workers = workers or os.cpu_count() or 1
    entries: dict[str, list[dict]] = {}
    for split, coco_split in COCO_SPLITS.items():
        given = (captions or {}).get(split)
        ann = coco_dir / "annotations" / f"captions_{coco_split}.json"
        if given is None and not ann.is_file():
            raise SetupError(
                f"no {ann}: pass --coco-dir with COCO's annotations/, or --captions-{split} FILE"
            )
        caps = user_captions(given) if given is not None else coco_captions(ann)
        split_dir = out / CANNY.split_subdir(split)
        entries[split] = prepare_split(coco_dir, split_dir, split, caps, size, workers, progress)
    train_dir, val_dir = out / CANNY.split_subdir("train"), out / CANNY.split_subdir("val")
    _write_jsonl(train_dir / CANNY.caption_name("train"), entries["train"])
    _write_jsonl(val_dir / CANNY.caption_name("val", full=True), entries["val"])
    preview = sorted(seeded_order(len(entries["val"]), seed)[:val_preview])
    _write_jsonl(val_dir / CANNY.caption_name("val"), (entries["val"][i] for i in preview))
    tasks = [CANNY, *write_subsets(out, seed)]
    if depth_model is None:
        say(
            "depth: skipped, no local depth model; pass --depth-model PATH (a transformers DPT/MiDaS folder, "
            "e.g. Intel/dpt-hybrid-midas saved with save_pretrained) to also write COCO/{train,val}/depth/"
        )
    else:
        for split in COCO_SPLITS:
            make_depth(
                out / DEPTH.split_subdir(split), entries[split], Path(depth_model), size, progress=progress
            )
        tasks.append(DEPTH)
    return check_control_dataset(out, DATASET_DIR, tasks)
