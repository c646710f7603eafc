"""Where every dataset and checkpoint comes from (SPEC §7): the table behind ``scripts/setup_data.py``.

URLs and archive names are the reference setup scripts'; each entry's layout check comes from the readers'
own tables (``TASKS``, ``SUBJECTS``). ``size`` strings are approximate public figures, "unknown" where none is
published.

Verification (``Source.verification``, shown by ``setup_data.py --help``):

- pinned: ``sha256`` (and ``size_bytes`` where published) is the value published for that exact file, each
  with the place it was read in a comment; a download that differs is refused and deleted.
- trust on first use: the OFT authors' keeper archives (ADE20K, CelebA-HQ, DeepFashion) publish no checksum,
  and the DreamBooth archive is GitHub's snapshot of a moving branch (and a clone is not one file). The first
  successful setup records size and SHA-256 in ``<root>/.oft-manifest.json`` and prints them; later downloads
  into the same root must match them. Pin a value here only once it is published by a source you can cite.
"""

from __future__ import annotations

from functools import partial

from oft.setup.download import Source
from oft.setup.layout import (
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
            # The Hugging Face hub's Git LFS pointer of runwayml's v1-5-pruned.ckpt, read on the hub's own pages:
            # "Git LFS Details: SHA256 e144…a053" of the file in huggingface.co/drdiffusion/StDiffClo (a hub
            # "Duplicate from runwayml/stable-diffusion-v1-5", which copies the pointers), and the pointer text
            # "oid sha256:e144…a053 / size 7703807346" in huggingface.co/taini/SdTraining commit 56624cda; a
            # file listing of runwayml/stable-diffusion-v1-5 gives v1-5-pruned.ckpt as 7703807346 bytes too.
            sha256="e1441589a6f3c5a53f5f54d0975a18a7feb7cdf0b0dee276dfc3331ae376a053",
            size_bytes=7_703_807_346,
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
            # COCO publishes no checksums; torchvision pins these (pytorch/vision,
            # torchvision/prototype/datasets/_builtin/coco.py, _IMAGES_CHECKSUMS[("2017", "train")]).
            sha256="69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929",
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
            # torchvision's pin, as above: _IMAGES_CHECKSUMS[("2017", "val")]
            sha256="4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
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
            # torchvision's pin, as above: _META_CHECKSUMS["2017"] (annotations_trainval2017.zip)
            sha256="113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
        ),
    ]
}
