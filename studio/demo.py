"""Stakeholder demo (Gradio): upload an image or pick a synthetic sample and see what the teacher
(trained on real images) and the student (trained on synthetic images only) predict; browse the
synthetic set. No real training image is ever shown.

    python -m pipeline demo --run RUN_ID [--project DIR] [--host 127.0.0.1] [--port 7860]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.core.launch import check_port  # noqa: E402
from pipeline.core.project import Project  # noqa: E402
from pipeline.views.demo import (  # noqa: E402
    DemoModels,
    SyntheticSample,
    as_scores,
    load_demo,
    model_names,
    predict,
    read_upload,
    samples_of,
)

DISPLAY = 112  # pixels: tiny synthetic images are enlarged (nearest neighbour) to be seen


def _display(sample: SyntheticSample) -> tuple[Image.Image, str]:
    with Image.open(sample.path) as image:
        image = image.convert("RGB")
    scale = max(1, DISPLAY // max(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST), sample.class_name


def summary(demo: DemoModels) -> str:
    """The page's heading, what each model learned from, and their accuracy and AUC (names as on the
    Trade-offs page)."""
    names = model_names(demo)
    lines = [f"## What a model trained on synthetic data sees — run `{demo.run_id}`",
             f"The **{names['teacher']}** was trained on real images. The **{names['student']}** never saw a real "
             "image: it learned from synthetic images and the teacher's answers only. The images below are all "
             "synthetic."]
    m = demo.metrics
    if "teacher" in m and "student" in m:
        lines.append("| model | test accuracy | membership-inference AUC (0.5 = a coin flip: the attack cannot tell "
                     "training images from others) |\n|---|---|---|\n" + "\n".join(
                         f"| {names[role]} | {m[role]['accuracy']:.3f} | {m[role]['mia']['auc']:.3f} |"
                         for role in ("teacher", "student")))
    return "\n\n".join(lines)


def build_demo(project: Project, run_id: str):
    """The Gradio page for one finished run (not launched)."""
    demo = load_demo(project, run_id)
    picks = samples_of(demo, limit=30)
    default_k = min(3, len(demo.class_names))

    def classify(image: str | Image.Image | None, top_k: float) -> tuple[dict, dict]:
        if image is None:
            return {}, {}
        if not isinstance(image, Image.Image):  # an upload: its size is checked before it is decoded
            try:
                image = read_upload(image)
            except (ValueError, OSError) as err:
                raise gr.Error(str(err)) from err
        out = predict(demo, image, int(top_k))
        return as_scores(out["teacher"]), as_scores(out["student"])

    def pick(top_k: float, evt: gr.SelectData) -> tuple[Image.Image, dict, dict]:
        sample = picks[evt.index]
        with Image.open(sample.path) as image:
            image = image.convert("RGB")
        teacher, student = classify(image, top_k)  # predicted from the original, not the enlarged copy
        return _display(sample)[0], teacher, student

    def browse(class_name: str) -> list[tuple[Image.Image, str]]:
        chosen = samples_of(demo, None if class_name == "all classes" else class_name, limit=60)
        return [_display(s) for s in chosen]

    names = model_names(demo)
    with gr.Blocks(title=f"TCKR demo · {run_id}") as blocks:
        gr.Markdown(summary(demo))
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    # a file path, not a PIL image: Gradio would decode the upload before classify could check its size
                    # (image_mode=None: no conversion, so Gradio only reads the header)
                    image = gr.Image(type="filepath", image_mode=None, label="Your image",
                                     sources=["upload", "clipboard"], height=260)
                    top_k = gr.Slider(1, len(demo.class_names), value=default_k, step=1, label="Top-k classes")
                    button = gr.Button("Predict", variant="primary")
                    gallery = gr.Gallery([_display(s) for s in picks], label="...or pick a synthetic sample",
                                         columns=6, height=300, allow_preview=False, object_fit="contain")
                with gr.Column():
                    teacher = gr.Label(label=names["teacher"], num_top_classes=len(demo.class_names))
                    student = gr.Label(label=names["student"], num_top_classes=len(demo.class_names))
            button.click(classify, [image, top_k], [teacher, student])
            image.upload(classify, [image, top_k], [teacher, student])
            gallery.select(pick, [top_k], [image, teacher, student])
        with gr.Tab("Synthetic samples"):
            choice = gr.Dropdown(["all classes", *demo.class_names], value="all classes", label="Class")
            browser = gr.Gallery(browse("all classes"), label="Synthetic training images", columns=8, height=520,
                                 object_fit="contain")
            choice.change(browse, [choice], [browser])
    return blocks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a finished experiment run id")
    parser.add_argument("--project", default=None, help="project folder (default: $TCKR_PROJECT or ./workspace)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    try:
        check_port("demo", args.host, args.port)  # run on its own (python -m studio.demo): the same one line
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    blocks = build_demo(Project.open(args.project), args.run)
    # quiet: Gradio's start-up lines end with "set `share=True` in `launch()`", advice a user of this
    # command cannot act on (the demo is never shared through a public tunnel); the address is ours to say
    blocks.launch(server_name=args.host, server_port=args.port, share=False, footer_links=[], quiet=True,
                  prevent_thread_lock=True)
    print(f"The demo of run {args.run} is on {blocks.local_url} (Ctrl+C stops it)", flush=True)
    blocks.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
