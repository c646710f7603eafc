"""The interactive app (``oft-control/app.py``): a Gradio page around ``OFTControlPipeline``, in the manner of
ControlNet's ``gradio_canny2image.py``. In: a control image, or a photo whose canny edges become the control
(for models trained on canny edges: the synthetic task's grey-level edges, C2I's colour edges), a prompt, the
number of images, DDIM steps, guidance and seed; out: the images and the control image they were made from.

Image n is drawn with the seed ``test_oft_parallel.py`` gives sample n of item 0 (``OFTControlPipeline``), so
the page shows exactly what the pipeline returns for the same inputs. Offline: no analytics or version check, no
share link, system fonts only (no font download), no server-side rendering (no Node).
"""

from __future__ import annotations

import os

import numpy as np

from oft.control.pipeline import OFTControlPipeline
from oft.metrics.canny import canny_edges
from oft.setup.coco import square_resize
from oft.specs import synthetic
from oft.specs.tasks import TASKS

MAX_SAMPLES = 8
NO_CONTROL = "give a control image, or a photo to take canny edges from"


def photo_edges(meta: dict[str, str]) -> str | None:
    """How a photo becomes the control of the model with metadata ``meta``: ``"gray"`` canny (the synthetic
    task's), ``"colour"`` canny (C2I's, as ControlNet's annotator), or None (a control the app cannot compute)."""
    task = meta.get("task", "")
    if task == "synthetic":  # files without "synthetic_hint" were trained on the default, canny
        return "gray" if meta.get("synthetic_hint", "canny") == "canny" else None
    return "colour" if task in TASKS and TASKS[task].control_dir == "canny" else None


def control_image(
    control: np.ndarray | None, photo: np.ndarray | None, edges: str | None, size: int
) -> np.ndarray:
    """The (size, size, 3) uint8 control to sample with: ``control`` (H, W, 3) uint8 RGB, else the canny edges
    (``edges``: see ``photo_edges``) of ``photo``; either resized on its shorter side and centre-cropped."""
    if control is not None:
        return control if control.shape[:2] == (size, size) else square_resize(control, size)
    if photo is None:
        raise ValueError(NO_CONTROL)
    if edges is None:
        raise ValueError("this model's control cannot be computed from a photo: give a control image")
    edge_map = canny_edges(square_resize(photo, size), gray=edges == "gray")
    return np.repeat(edge_map[:, :, None], 3, axis=2).astype(np.uint8) * 255


def example(meta: dict[str, str], size: int) -> tuple[np.ndarray | None, str]:
    """What the page starts with: for a synthetic-task model, a validation item's control and caption."""
    if meta.get("task") != "synthetic":
        return None, ""
    _, caption, controls, _ = synthetic.make_item(0, 1, size)  # stream 1: SyntheticDataset("val", seed=0)
    hint = controls[meta.get("synthetic_hint", "canny")]
    return (np.repeat(hint[:, :, None], 3, axis=2) if hint.ndim == 2 else hint), caption


def build_app(pipe: OFTControlPipeline, meta: dict[str, str], size: int, title: str = "OFT control"):
    """The page (a ``gradio.Blocks``; its API endpoint ``/generate`` returns the gallery and the control used)."""
    import gradio as gr  # the optional dependency (pip install .[app]): only the app needs it

    edges = photo_edges(meta)
    start_control, start_prompt = example(meta, size)

    def run(control, photo, prompt, samples, steps, guidance, seed, progress=gr.Progress()):  # noqa: B008
        try:
            hint = control_image(control, photo, edges, size)
        except ValueError as err:
            raise gr.Error(str(err)) from None

        def step_end(_pipe, step: int, _t, tensors: dict) -> dict:
            progress((step + 1, int(steps)), desc="sampling")
            return tensors

        images = pipe(
            prompt,
            hint,
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            seed=int(seed),
            num_images_per_prompt=int(samples),
            callback_on_step_end=step_end,
        ).images
        return images, hint

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        how = "a control image, or a photo to take canny edges from" if edges else "a control image"
        gr.Markdown(
            f"## {title}\n`{meta.get('task', '?')}` control, {size} x {size} px: give {how}, and a prompt."
        )
        with gr.Row():
            with gr.Column():
                control = gr.Image(
                    start_control,
                    label="control image",
                    type="numpy",
                    image_mode="RGB",
                    format="png",
                    height=256,
                )
                photo = gr.Image(
                    label="or a photo: its canny edges become the control",
                    type="numpy",
                    image_mode="RGB",
                    format="png",
                    visible=edges is not None,
                )
                prompt = gr.Textbox(start_prompt, label="prompt")
                button = gr.Button("Generate", variant="primary")
                samples = gr.Slider(1, MAX_SAMPLES, value=4, step=1, label="images")
                steps = gr.Slider(1, 100, value=pipe.sampler.steps, step=1, label="DDIM steps")
                guidance = gr.Slider(1.0, 20.0, value=pipe.sampler.guidance, step=0.5, label="guidance scale")
                seed = gr.Number(0, precision=0, label="seed")
            with gr.Column():
                gallery = gr.Gallery(
                    label="results", format="png", columns=4, object_fit="contain", height="auto"
                )
                used = gr.Image(
                    label="control used", type="numpy", format="png", interactive=False, height=256
                )
        inputs = [control, photo, prompt, samples, steps, guidance, seed]
        button.click(run, inputs=inputs, outputs=[gallery, used], api_name="generate")
    return app


def serve(app, host: str = "127.0.0.1", port: int | None = None, block: bool = True) -> str:
    """Start ``app`` on ``host``:``port`` (None: the first free one from 7860), offline; returns its URL.
    ``block=False`` returns at once, the server running in a thread (tests)."""
    import gradio as gr

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no version check, no telemetry
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    app.queue(default_concurrency_limit=1)  # one generation at a time: the model is shared
    app.launch(
        server_name=host,
        server_port=port,
        share=False,
        ssr_mode=False,
        theme=theme,
        prevent_thread_lock=True,
        quiet=True,
    )
    print(f"app running at {app.local_url} (Ctrl+C to stop)")
    if block:
        app.block_thread()
    return app.local_url
