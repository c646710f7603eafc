"""The offline tokenizer gives SD1.5's ids: CLIP BPE, 77 tokens, padded with <|endoftext|>, truncated."""

import open_clip
import pytest
import torch

from oft.sd.configs import BOS_TOKEN_ID, EOS_TOKEN_ID, MAX_LENGTH, VOCAB_SIZE
from oft.sd.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _ids(tok, prompts):
    return tok(
        prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids


def test_vocabulary_and_special_tokens(tok):
    assert tok.vocab_size == VOCAB_SIZE == 49408
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert tok.model_max_length == MAX_LENGTH


def test_known_ids_with_end_of_text_padding(tok):
    ids = _ids(tok, ["a photo of sks dog", ""])
    assert ids.shape == (2, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 48136, 1929, 49407]
    assert (ids[0, 7:] == EOS_TOKEN_ID).all()  # SD1.5 pads with end-of-text, not 0 as open_clip does
    assert ids[1, 0] == BOS_TOKEN_ID and (ids[1, 1:] == EOS_TOKEN_ID).all()


def test_truncation_keeps_start_and_end_tokens(tok):
    ids = _ids(tok, ["dog " * 200])
    assert ids.shape == (1, 77)
    assert ids[0, 0] == BOS_TOKEN_ID and ids[0, -1] == EOS_TOKEN_ID
    assert (ids[0, 1:-1] == 1929).all()  # "dog</w>"


def test_same_ids_as_open_clip(tok):
    prompts = [
        "a photo of qwe backpack",
        "A  High-Quality PHOTO, of the cat!! 123 héllo",
        "a red cartoon on top of a mountain, with a wheat field in the background",
        "xyzzy quux",
        "word " * 90,
    ]
    ours = _ids(tok, prompts)
    ref = open_clip.tokenize(prompts)  # pads with 0 after the end token
    ref = torch.where(ref == 0, torch.full_like(ref, EOS_TOKEN_ID), ref)
    assert torch.equal(ours, ref)
