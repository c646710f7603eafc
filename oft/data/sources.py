"""Where every dataset and checkpoint comes from (SPEC §7): the table behind ``scripts/setup_data.py``.

URLs and archive names are the reference setup scripts'; each entry's layout check comes from the readers'
own tables (``TASKS``, ``SUBJECTS``). Sizes are approximate public figures, "unknown" where none is published.
Checksums are not pinned yet: the first successful setup records them in ``<root>/.oft-manifest.json`` and
prints them, so that a maintainer can pin them here.
"""

from __future__ import annotations

from functools import partial

from oft.data.download import Source
from oft.data.layout import (
    check_checkpoint,
    check_coco_annotations,
    check_control_dataset,
    check_dreambooth,
    check_image_folder,
)

_KEEPER = "https://keeper.mpdl.mpg.de/f/{}/?dl=1"
_SD15 = "v1-5-pruned.ckpt"
_COCO = "http://images.cocodataset.org/{}"

SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "ade20k",
            "ADE20K with BLIP captions and segmentation maps (task segm), preprocessed by the OFT authors",
            (_KEEPER.format("80b2fc97ffc3430c98de"),),
            "ade20k.zip",
            "ADE20K",
            partial(check_control_dataset, dataset_dir="ADE20K"),
        ),
        Source(
            "celebhq",
            "CelebA-HQ with BLIP captions and 2D landmark maps (task landmark), by the OFT authors",
            # "celechq" (sic) is the reference script's archive name.
            (_KEEPER.format("72c34a6017cb40b896e9"),),
            "celechq-text.zip",
            "celebhq-text",
            partial(check_control_dataset, dataset_dir="celebhq-text"),
        ),
        Source(
            "deepfashion",
            "DeepFashion-MultiModal with BLIP captions and DensePose maps (task densepose)",
            (_KEEPER.format("e3d1e4294b3f49a5aff0"),),
            "deepfashion.zip",
            "DeepFashion",
            partial(check_control_dataset, dataset_dir="DeepFashion"),
        ),
        Source(
            "dreambooth",
            "the DreamBooth benchmark (google/dreambooth dataset/): 30 subjects and their prompts",
            ("https://github.com/google/dreambooth/archive/refs/heads/main.zip",),
            "dreambooth-main.zip",
            "dreambooth",
            check_dreambooth,
            member="dreambooth-main/dataset",
            git_url="https://github.com/google/dreambooth",
            git_member="dataset",
        ),
        Source(
            "sd15",
            "Stable Diffusion 1.5, the single-file checkpoint v1-5-pruned.ckpt (EMA and non-EMA weights)",
            # runwayml's repository is gone; stable-diffusion-v1-5 is its maintained copy.
            (
                f"https://huggingface.co/runwayml/stable-diffusion-v1-5/resolve/main/{_SD15}",
                f"https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/{_SD15}",
            ),
            _SD15,
            _SD15,
            check_checkpoint,
            kind="file",
            size="about 7.7 GB",
            models=True,
        ),
        Source(
            "coco_train2017",
            "COCO 2017 training images (118,287)",
            (_COCO.format("zips/train2017.zip"),),
            "train2017.zip",
            "coco2017/train2017",
            check_image_folder,
            member="train2017",
            size="about 18 GB",
        ),
        Source(
            "coco_val2017",
            "COCO 2017 validation images (5,000)",
            (_COCO.format("zips/val2017.zip"),),
            "val2017.zip",
            "coco2017/val2017",
            check_image_folder,
            member="val2017",
            size="about 0.8 GB",
        ),
        Source(
            "coco_annotations",
            "COCO 2017 annotations (captions_{train,val}2017.json)",
            (_COCO.format("annotations/annotations_trainval2017.zip"),),
            "annotations_trainval2017.zip",
            "coco2017/annotations",
            check_coco_annotations,
            member="annotations",
            size="about 0.25 GB",
        ),
    ]
}
