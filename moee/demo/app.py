"""The Gradio page of ``python -m moee demo``: a portrait, a speech track and an emotion in
every form MoEE reads → a talking video.

:func:`build_app` lays out the page around a :class:`~moee.demo.engine.DemoModel`;
:func:`serve` sets up the app's temporary folder (every upload and output stays in it), the
queue (one generation at a time), the upload size limit, and starts the server.
"""

from __future__ import annotations

import html
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import gradio as gr

from moee.demo import forms
from moee.demo.engine import DemoModel, Request, SessionFiles
from moee.demo.examples import Example, write_examples
from moee.emotions import ACTION_UNITS, BASIC_EMOTIONS, EmotionSpecError
from moee.errors import MoEEError
from moee.inference.sampling import StepProgress

log = logging.getLogger(__name__)

TITLE = "MoEE — emotion-controllable talking portraits"
SAMPLERS = ("dpmpp", "ddim", "euler")
TIMELINE_START = [[0, "neutral"], [1, "happy"], [2, "sadly surprised"]]
CSS = ".moee-check {font-size: 0.9em; opacity: 0.85}"


def page_error(message: str) -> gr.Error:
    """A message as one line on the page, kept until closed (no traceback in the log)."""
    return gr.Error(html.escape(" ".join(message.split())), duration=None,
                    print_exception=False)


def readable_uploads(image: gr.Image) -> gr.Image:
    """Make an upload that is not an image one readable error on the page.

    gradio opens the image before any event function runs; its own error says only "Error".
    (An instance attribute, not a subclass: gradio writes a ``.pyi`` beside every subclass.)
    """
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except (OSError, ValueError, SyntaxError):
            raise page_error("cannot read the portrait: not an image file") from None

    image.preprocess = checked
    return image


@dataclass
class Form:
    """One emotion form: its tab, its input components and the builder of its condition."""

    tab: gr.Tab
    inputs: list[gr.components.Component]
    build: Callable[..., str]


def show_condition(build: Callable[..., str], *values) -> tuple:
    """A form's values → (the condition string, its check line); a value the form cannot
    write keeps the string and says why."""
    try:
        spec = build(*values)
    except EmotionSpecError as error:
        return gr.update(), f"✗ {error}"
    return spec, forms.check_condition(spec)


def emotion_forms() -> list[Form]:
    """The tabs of every emotion form, laid out in the current Blocks context."""
    made = []
    with gr.Tab("Emotion", elem_id="tab-label") as tab:
        label = gr.Dropdown(list(forms.LABELS), value="neutral", label="Emotion",
                            info="neutral, the six basic emotions, the four compounds",
                            elem_id="label")
        intensity = gr.Slider(0, 1, value=1, step=0.05, label="Intensity", elem_id="intensity")
        made.append(Form(tab, [label, intensity], forms.label_condition))
    with gr.Tab("Mix", elem_id="tab-mix") as tab:
        gr.Markdown("One weight per basic emotion; the weights are normalised to sum 1 and "
                    "replace the learned global gate.")
        with gr.Row():
            mix = [gr.Slider(0, 1, value=0, step=0.05, label=name, min_width=120,
                             elem_id=f"mix-{name}") for name in BASIC_EMOTIONS]
        made.append(Form(tab, mix, lambda *weights: forms.mix_condition(weights)))
    with gr.Tab("Text") as tab:
        text = gr.Textbox(label="Describe the emotion", placeholder="a faint, nervous smile")
        made.append(Form(tab, [text], forms.text_condition))
    with gr.Tab("Action units") as tab:
        with gr.Row():
            units = [gr.Slider(0, 1, value=0, step=0.05, label=forms.action_unit_label(au),
                               min_width=160) for au in ACTION_UNITS]
        made.append(Form(tab, units, lambda *values: forms.action_unit_condition(values)))
    with gr.Tab("Speech tone") as tab:
        gr.Markdown("No explicit emotion: the speech-emotion encoder reads the tone of each "
                    "clip's audio, and the learned gates mix the experts.")
        made.append(Form(tab, [], lambda: "speech"))
    with gr.Tab("Timeline") as tab:
        timeline = gr.Dataframe(TIMELINE_START, headers=list(forms.TIMELINE_COLUMNS),
                                datatype=["number", "str"], type="array", row_count=3,
                                column_count=2, label="Emotion over time (any form per row)")
        made.append(Form(tab, [timeline], forms.timeline_condition))
    return made


def sampling_options(model: DemoModel) -> list[gr.components.Component]:
    """The advanced fold's inputs, in :func:`generate`'s argument order."""
    defaults = model.defaults
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            sampler = gr.Dropdown(list(SAMPLERS), value=defaults.sampler, label="Sampler")
            steps = gr.Slider(1, 50, value=defaults.steps, step=1, label="Steps per clip")
            seed = gr.Number(defaults.seed, precision=0, label="Seed")
        with gr.Row():
            audio_guidance = gr.Slider(1, 6, value=defaults.audio_guidance, step=0.5,
                                       label="Audio guidance")
            emotion_guidance = gr.Slider(1, 6, value=defaults.emotion_guidance, step=0.5,
                                         label="Emotion guidance")
            strength = gr.Slider(0.05, 1, value=defaults.strength, step=0.05,
                                 label="Strength (1: from pure noise)")
        with gr.Row():
            clip_frames = gr.Slider(2, model.max_clip_frames, value=defaults.clip_frames,
                                    step=1, label="Frames per clip")
            transition = gr.Slider(0, 3, value=defaults.transition, step=0.25,
                                   label="Timeline blend (s)")
        with gr.Row():
            paste_back = gr.Checkbox(False, label="Paste the face back into the photo")
            detect = gr.Checkbox(True, label="Find the face (off: the image is a face crop)")
    return [sampler, steps, audio_guidance, emotion_guidance, strength, seed, clip_frames,
            transition, paste_back, detect]


class Handlers:
    """The page's server-side events, bound to the model and the session files."""

    def __init__(self, model: DemoModel, files: SessionFiles) -> None:
        self.model, self.files = model, files

    def generate(self, image: str | None, audio: str | None, emotion: str, sampler: str,
                 steps: float, audio_guidance: float, emotion_guidance: float,
                 strength: float, seed: float, clip_frames: float, transition: float,
                 paste_back: bool, detect: bool, request: gr.Request,
                 progress: gr.Progress = gr.Progress()) -> tuple[str, str, str]:  # noqa: B008
        """The Generate button: the video, its frame strip and one line on how it went."""
        session = request.session_hash or "anonymous"
        self.files.use(session, image, audio)
        progress(0, desc="reading the inputs")

        def on_step(where: StepProgress) -> None:
            progress(where.fraction, desc=f"clip {where.clip}/{where.clips} · "
                                          f"step {where.step}/{where.steps}")

        sampling = replace(self.model.defaults, sampler=sampler, steps=int(steps),
                           seed=int(seed or 0), audio_guidance=audio_guidance,
                           emotion_guidance=emotion_guidance, clip_frames=int(clip_frames),
                           transition=transition, strength=strength)  # the rest: the preset's
        job = Request(image, audio, emotion or "", sampling, paste_back, detect)
        try:
            result = self.model.generate(job, self.files.folder(session), on_step)
        except MoEEError as error:
            raise page_error(str(error)) from None
        log.info("%s", result.summary())
        return str(result.video), str(result.strip), result.summary()

    def track(self, path: str | None, request: gr.Request) -> None:
        """An upload or webcam shot changed: the session now uses that file."""
        self.files.use(request.session_hash, path)

    def close(self, request: gr.Request) -> None:
        """The browser session ended: remove its files."""
        self.files.close(request.session_hash)


def build_app(model: DemoModel, files: SessionFiles, examples: Sequence[Example] = ()) -> gr.Blocks:
    """The page: inputs and emotion forms on the left, the video on the right, examples below."""
    with gr.Blocks(title="MoEE demo", analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}\nA portrait, a speech track and an emotion → a talking video. "
                    "Every form below writes the condition that `python -m moee animate "
                    "--emotion` takes.")
        status = "⚠ " if model.pipeline is None else ""
        gr.Markdown(f"{status}**Model:** {html.escape(model.describe())}", elem_id="status")
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    portrait = readable_uploads(gr.Image(
                        sources=["upload", "webcam"], type="filepath", label="Portrait",
                        elem_id="portrait", height=260))
                    speech = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                      label="Speech", elem_id="speech")
                with gr.Tabs():
                    emotion_tabs = emotion_forms()
                condition = gr.Textbox("neutral", label="Condition (moee animate --emotion)",
                                       info="what Generate uses: the forms above write it, "
                                            "or type any condition", buttons=["copy"],
                                       elem_id="condition")
                check = gr.Markdown(forms.check_condition("neutral"), elem_id="check",
                                    elem_classes="moee-check")
                options = sampling_options(model)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="Video", elem_id="video", interactive=False,
                                 autoplay=False)
                strip = gr.Image(label="Frames", type="filepath", interactive=False,
                                 elem_id="strip", format="png")
                report = gr.Markdown(elem_id="report")
        if examples:
            gr.Examples([e.row() for e in examples], [portrait, speech, condition, options[-1]],
                        label="Examples (made offline: SynthEmo and the astronaut)")
        for form in emotion_tabs:
            gr.on([form.tab.select, *(c.change for c in form.inputs)],
                  partial(show_condition, form.build), form.inputs, [condition, check],
                  show_progress="hidden", trigger_mode="always_last", queue=False)
        condition.change(forms.check_condition, condition, check, show_progress="hidden",
                         queue=False)
        handlers = Handlers(model, files)
        for upload in (portrait, speech):
            upload.change(handlers.track, upload, None, show_progress="hidden", queue=False)
        button.click(handlers.generate, [portrait, speech, condition, *options],
                     [video, strip, report], concurrency_limit=1, concurrency_id="generate")
        app.unload(handlers.close)
    files.protect(portrait.keep_in_cache | speech.keep_in_cache)
    return app


@dataclass
class Server:
    """A running demo: its URL, the Blocks, and its temporary folder (removed by close)."""

    url: str
    app: gr.Blocks
    root: Path
    previous_temp_dir: str | None = None

    def close(self) -> None:
        """Stop the server, remove every temporary file of the app, restore the environment."""
        self.app.close()
        remove_temp_dir(self.root, self.previous_temp_dir)


def remove_temp_dir(root: Path, previous: str | None) -> None:
    """Remove the app's folder and give gradio back the temporary folder it had before."""
    shutil.rmtree(root, ignore_errors=True)
    if previous is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


def serve(model: DemoModel, host: str = "127.0.0.1", port: int | None = 7860,
          examples: bool = True, block: bool = True, quiet: bool = False) -> Server:
    """Start the page on ``host:port`` (``port=None``: a free one) and return the server.

    Every upload, cached file and output goes into one fresh temporary folder (gradio's
    ``GRADIO_TEMP_DIR``, so one demo per process); ``block=False`` returns at once (tests).
    """
    root = Path(tempfile.mkdtemp(prefix="moee-demo-"))
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        files = SessionFiles(root)
        app = build_app(model, files, write_examples(root / "examples") if examples else [])
        app.queue(default_concurrency_limit=1, max_size=16)
        app.launch(server_name=host, server_port=port, max_file_size=model.limits.max_file_size,
                   prevent_thread_lock=True, show_error=False, quiet=quiet, css=CSS,
                   footer_links=[])
    except BaseException:
        remove_temp_dir(root, previous)
        raise
    server = Server(app.local_url, app, root, previous)
    if block:
        try:
            app.block_thread()
        finally:
            server.close()
    return server
