"""The Gradio app, served on a free local port and driven through ``gradio_client`` as a browser drives it: it
returns the pipeline's images for the same inputs, seeded, with the control image it used (the given one, or the
canny edges of a photo), and a missing model or image is one clear line. Also the shipped tiny demo model."""

from __future__ import annotations

import socket
import sys

import gradio as gr  # the optional dependency group `app`, which make test installs
import numpy as np
import PIL.Image
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from oft.cli.control import app as app_cli
from oft.control.checkpoint import read_control
from oft.control.pipeline import OFTControlPipeline
from oft.demo.app import NO_CONTROL, build_app, control_image, photo_edges, serve
from oft.demo.app_model import APP_BASE, APP_MODEL
from oft.metrics.canny import canny_edges
from oft.setup.coco import square_resize
from oft.specs import synthetic
from tests.helpers import REPO
from tests.helpers.pipeline import SIZE, random_control_file

PROMPT = "a red circle on a blue background"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, pipeline) of the app on a random-weight control file of the synthetic task, 32 px."""
    model = random_control_file(tmp_path_factory.mktemp("app"), task="synthetic")
    pipe = OFTControlPipeline.from_control_file(model)
    url = serve(build_app(pipe, pipe.meta, SIZE), port=free_port(), block=False)
    yield Client(url, verbose=False), pipe
    gr.close_all()


@pytest.fixture(scope="module")
def item(tmp_path_factory):
    """A synthetic validation item as files: (photo, its canny edges, caption, the edges as an array)."""
    target, caption, controls, _ = synthetic.make_item(3, 1, SIZE)
    folder = tmp_path_factory.mktemp("item")
    PIL.Image.fromarray(target).save(folder / "photo.png")
    PIL.Image.fromarray(controls["canny"]).save(folder / "edges.png")
    return folder / "photo.png", folder / "edges.png", caption, controls["canny"]


def ask(client: Client, control=None, photo=None, prompt=PROMPT, samples=2, steps=2, guidance=5.0, seed=0):
    """The /generate endpoint: (list of (H, W, 3) uint8 images, the control used)."""
    files = [None if p is None else handle_file(str(p)) for p in (control, photo)]
    gallery, used = client.predict(*files, prompt, samples, steps, guidance, seed, api_name="/generate")
    return [np.asarray(PIL.Image.open(g["image"])) for g in gallery], np.asarray(PIL.Image.open(used))


def test_the_page_returns_the_pipelines_images_and_the_control_it_used(served, item):
    client, pipe = served
    _, edges_file, caption, edges = item
    images, used = ask(client, control=edges_file, prompt=caption, samples=3, seed=5)
    assert len(images) == 3 and all(im.shape == (SIZE, SIZE, 3) for im in images)
    assert np.array_equal(used, np.repeat(edges[:, :, None], 3, axis=2))
    expected = pipe(caption, used, num_inference_steps=2, guidance_scale=5.0, seed=5, num_images_per_prompt=3)
    # the same model, kernels and inputs in one process, lossless PNG in between: the same pixels
    for got, want in zip(images, expected.images, strict=True):
        assert np.array_equal(got, np.asarray(want))


def test_the_same_seed_gives_the_same_pixels_and_another_seed_others(served, item):
    client, _ = served
    _, edges_file, caption, _ = item
    first, _ = ask(client, control=edges_file, prompt=caption, seed=1)
    again, _ = ask(client, control=edges_file, prompt=caption, seed=1)
    other, _ = ask(client, control=edges_file, prompt=caption, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert not np.array_equal(first[0], first[1])  # the images of one call have their own seeds


def test_a_photo_becomes_its_canny_edges_as_the_synthetic_task_made_them(served, item):
    client, _ = served
    photo, edges_file, caption, edges = item
    from_photo, used = ask(client, photo=photo, prompt=caption, seed=3)
    from_edges, _ = ask(client, control=edges_file, prompt=caption, seed=3)
    assert np.array_equal(used[:, :, 0], edges) and edges.any()
    assert all(np.array_equal(a, b) for a, b in zip(from_photo, from_edges, strict=True))


def test_no_image_is_one_clear_message(served):
    client, _ = served
    with pytest.raises(AppError, match=NO_CONTROL):
        ask(client)


def test_the_shipped_demo_model_runs_out_of_the_box(tmp_path):
    """``oft-control/app.py`` without --model: the trained tiny control file, on the shipped base, 64 px."""
    assert APP_MODEL.stat().st_size < 300_000  # a few hundred KB in the package
    _, meta, has_base = read_control(APP_MODEL)
    assert (
        not has_base
        and meta["base_path"] == ""
        and meta["task"] == "synthetic"
        and meta["resolution"] == "64"
    )
    url = app_cli.main(app_cli.parse_args(["--port", str(free_port())]), block=False)
    try:
        target, caption, _, _ = synthetic.make_item(0, 1, 64)
        PIL.Image.fromarray(target).save(tmp_path / "photo.png")
        images, used = ask(Client(url, verbose=False), photo=tmp_path / "photo.png", prompt=caption)
    finally:
        gr.close_all()
    assert len(images) == 2 and all(im.shape == (64, 64, 3) for im in images) and used.shape == (64, 64, 3)
    pipe = OFTControlPipeline.from_control_file(APP_MODEL, APP_BASE)
    assert (
        torch.count_nonzero(pipe.hint_encoder.encoder.zero_conv.weight) > 0
    )  # trained, not the initial file


def test_a_missing_model_and_a_bad_resolution_are_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(
        sys, "argv", [str(REPO / "oft-control/app.py"), "--model", str(tmp_path / "none.safetensors")]
    )
    with pytest.raises(SystemExit) as caught:
        app_cli.cli()
    assert (
        caught.value.code
        == f"app: control model not found: {tmp_path / 'none.safetensors'}; pass --model <trained control file>"
    )
    with pytest.raises(SystemExit):
        app_cli.parse_args(["--resolution", "30"])
    assert "--resolution must be a positive multiple of 8, got 30" in capsys.readouterr().err


def test_which_photos_become_controls_follows_the_task_the_model_records():
    photo = np.zeros((40, 48, 3), np.uint8)
    photo[10:30, 12:36] = (200, 40, 40)  # a red rectangle: a colour step everywhere, a grey step of 56
    assert photo_edges({"task": "synthetic"}) == "gray" and photo_edges({"task": "canny5k"}) == "colour"
    assert (
        photo_edges({"task": "synthetic", "synthetic_hint": "segm"}) is None
        and photo_edges({"task": "segm"}) is None
    )
    colour = control_image(None, photo, "colour", 32)
    square = square_resize(photo, 32)
    assert colour.shape == (32, 32, 3) and np.array_equal(colour[:, :, 0] > 0, canny_edges(square))
    assert np.array_equal(control_image(None, photo, "gray", 32)[:, :, 1] > 0, canny_edges(square, gray=True))
    with pytest.raises(ValueError, match="cannot be computed from a photo: give a control image"):
        control_image(None, photo, None, 32)
    given = np.full((32, 32, 3), 7, np.uint8)
    assert control_image(given, photo, "colour", 32) is given  # a control image of the right size as it is


def test_help_explains_and_without_gradio_the_app_says_how_to_install_it(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        app_cli.parse_args(["--help"])
    text = capsys.readouterr().out
    assert all(s in text for s in ("--model", "shipped tiny demo model", "--base", "--resolution", ".[app]"))
    find_spec = app_cli.importlib.util.find_spec
    monkeypatch.setattr(
        app_cli.importlib.util, "find_spec", lambda name: None if name == "gradio" else find_spec(name)
    )
    monkeypatch.setattr(sys, "argv", [str(REPO / "oft-control/app.py")])
    with pytest.raises(SystemExit) as caught:
        app_cli.cli()
    assert caught.value.code == "app: the app needs gradio: pip install -e '.[app]'"
