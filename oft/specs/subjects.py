"""The 30 DreamBooth subjects (google/dreambooth ``dataset/``) in benchmark order, with their class nouns.

Run ``i`` of the 750-run benchmark trains subject ``i // 25`` (SPEC §4); this tuple is the single source of
that order and of the class token used in ``a photo of qwe {class}``.
"""

from __future__ import annotations

SUBJECTS: tuple[tuple[str, str], ...] = (
    ("backpack", "backpack"),
    ("backpack_dog", "backpack"),
    ("bear_plushie", "stuffed animal"),
    ("berry_bowl", "bowl"),
    ("can", "can"),
    ("candle", "candle"),
    ("cat", "cat"),
    ("cat2", "cat"),
    ("clock", "clock"),
    ("colorful_sneaker", "sneaker"),
    ("dog", "dog"),
    ("dog2", "dog"),
    ("dog3", "dog"),
    ("dog5", "dog"),
    ("dog6", "dog"),
    ("dog7", "dog"),
    ("dog8", "dog"),
    ("duck_toy", "toy"),
    ("fancy_boot", "boot"),
    ("grey_sloth_plushie", "stuffed animal"),
    ("monster_toy", "toy"),
    ("pink_sunglasses", "glasses"),
    ("poop_emoji", "toy"),
    ("rc_car", "toy"),
    ("red_cartoon", "cartoon"),
    ("robot_toy", "toy"),
    ("shiny_sneaker", "sneaker"),
    ("teapot", "teapot"),
    ("vase", "vase"),
    ("wolf_plushie", "stuffed animal"),
)

# The dataset's own file listing the object and live-subject prompt templates.
PROMPTS_FILE = "prompts_and_classes.txt"
