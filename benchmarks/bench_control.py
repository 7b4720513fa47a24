"""How finely the emotion is controlled: compounds as blends, intensity, mixes and single AUs.

Every held-out SynthEmo identity's neutral portrait is animated speaking its own neutral clip's
audio (one speech for every condition: only the condition differs), from seed-0 noise, with
the tiny preset's sampling, under:

==========  ===================================================  ===============================
table       conditions                                           what the probes read
==========  ===================================================  ===============================
compounds   the four compounds, ``happy:0.5,surprised:0.5``      P(compound class), P(each part)
intensity   each basic label at ``@0.25 … @1``                   read as asked; AU magnitude
mix         ``happy:w,sad:1-w``, w = 0 … 1                       P(happy), P(sad)
AUs         ``AU1 AU4 AU6 AU12 AU15 AU26`` alone at 1            the driven AU's rise, the others'
==========  ===================================================  ===============================

The paper's limitations 1 (a compound leans to one side: "sadly disgusted" reads as disgusted)
and 2 (AUs are not disentangled) are what the compound and AU tables check. AU magnitude is
the norm of the probes' frame-averaged AU reading minus that of the same person's neutral
video (same speech, same noise); an AU's rise is its reading minus the neutral video's, and
the others' leak the mean absolute change of every other AU. Probabilities are frame- and
person-averaged. It writes ``docs/intensity_sheet.png`` (a row per emotion, columns by
intensity) and ``docs/compound_sheet.png`` (each compound between its two components).

    python benchmarks/bench_control.py [--weights runs/tiny/weights] [--people 4] [--steps 4]
        [--intensity_guidance false]
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from jsonargparse import CLI  # noqa: E402
from tqdm import tqdm  # noqa: E402

from moee.data.batch import from_numpy_frames  # noqa: E402
from moee.data.media import SAMPLES_PER_FRAME, VIDEO_FPS  # noqa: E402
from moee.data.shards import ShardError  # noqa: E402
from moee.data.synth.sheet import with_header, write_png  # noqa: E402
from moee.emotions import (  # noqa: E402
    ACTION_UNITS,
    BASIC_EMOTIONS,
    COMPOUND_EMOTIONS,
    EMOTION_CLASSES,
    NEUTRAL,
    emotion_components,
    parse_emotion,
)
from moee.evaluation.probe_judge import ProbeJudge, VideoReading  # noqa: E402
from moee.evaluation.probes import load_probes  # noqa: E402
from moee.inference.animate import stage_weights  # noqa: E402
from moee.inference.conditions import EmotionTrack  # noqa: E402
from moee.inference.pipeline import MoEEPipeline  # noqa: E402
from moee.inference.sampling import PRESET_SAMPLING  # noqa: E402
from moee.models.moee_net import MoEENetConfig  # noqa: E402
from moee.models.weights import StageWeightsError  # noqa: E402
from moee.showcase import Person, held_out_people  # noqa: E402

INTENSITIES = (0.25, 0.5, 0.75, 1.0)
MIX_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
DRIVEN_AUS = ("AU1", "AU4", "AU6", "AU12", "AU15", "AU26")
EVEN_MIX = "happy:0.5,surprised:0.5"


def mix_condition(w: float) -> str:
    """``happy:w,sad:1-w``, its ends as the plain labels."""
    return "sad" if w == 0 else "happy" if w == 1 else f"happy:{w:g},sad:{1 - w:g}"


def conditions() -> list[str]:
    """Every condition animated for each person, neutral first (the AU baseline)."""
    return list(dict.fromkeys([
        NEUTRAL, *COMPOUND_EMOTIONS, EVEN_MIX,
        *(f"{e}@{i:g}" if i < 1 else e for e in BASIC_EMOTIONS for i in INTENSITIES),
        *(mix_condition(w) for w in MIX_WEIGHTS), *(f"{au}:1" for au in DRIVEN_AUS)]))


def animate_person(pipeline: MoEEPipeline, person: Person, specs: list[str], frames: int,
                   batch: int) -> dict[str, np.ndarray]:
    """{condition: (T, H, W, 3) uint8}: the person's portrait speaking its neutral clip, up to
    ``batch`` conditions that route the Emotion MoE alike per network batch."""
    audio = person.clips[NEUTRAL].audio[: frames * SAMPLES_PER_FRAME]
    groups: dict[str, list[str]] = {}
    for spec in specs:
        groups.setdefault(pipeline.routing_kind(parse_emotion(spec)), []).append(spec)
    made = {}
    for group in groups.values():
        for start in range(0, len(group), batch):
            chunk = group[start : start + batch]
            videos = pipeline.generate_many(
                from_numpy_frames(person.portrait), [audio] * len(chunk),
                [EmotionTrack.parse(spec) for spec in chunk],
                [torch.Generator().manual_seed(0) for _ in chunk])
            made.update(zip(chunk, videos))
    return made


def probability(probabilities: np.ndarray, emotion: str) -> float:
    """The probability of one emotion class in frame-averaged probabilities (11,)."""
    return float(probabilities[EMOTION_CLASSES.index(emotion)])


def parts_of(spec: str) -> list[str]:
    """The two basic emotions of a compound or of the even mix."""
    return list(emotion_components(spec)) if spec != EVEN_MIX else ["happy", "surprised"]


def compound_table(readings: list[dict[str, VideoReading]]) -> list[str]:
    """Each compound's own class and its two components, as probabilities."""
    lines = ["| asked | P(compound) | P(part 1) | P(part 2) | part 1 share | read most |",
             "|---|---:|---:|---:|---:|---|"]
    for spec in (*COMPOUND_EMOTIONS, EVEN_MIX):
        parts = parts_of(spec)
        mean = np.mean([r[spec].probabilities for r in readings], 0)
        own = probability(mean, spec) if spec in EMOTION_CLASSES else float("nan")
        p = [probability(mean, part) for part in parts]
        lines.append(f"| {spec} | {own:.2f} | {parts[0]} {p[0]:.2f} | {parts[1]} {p[1]:.2f} | "
                     f"{p[0] / max(p[0] + p[1], 1e-9):.2f} | "
                     f"{EMOTION_CLASSES[int(mean.argmax())]} |")
    return lines


def intensity_table(readings: list[dict[str, VideoReading]], people: list[Person],
                    judge: ProbeJudge) -> list[str]:
    """Share read as asked, and AU magnitude, per intensity (every basic emotion)."""
    lines = ["| intensity | read as asked | AU magnitude | " + " | ".join(BASIC_EMOTIONS) + " |",
             "|---:|---:|---:|" + "---:|" * len(BASIC_EMOTIONS)]
    for level in INTENSITIES:
        hits, magnitudes, per_emotion = 0, [], []
        for emotion in BASIC_EMOTIONS:
            spec = f"{emotion}@{level:g}" if level < 1 else emotion
            read = [judge.reads_as(r[spec], emotion, p.identity)
                    for r, p in zip(readings, people)]
            hits += sum(read)
            au = [np.linalg.norm(r[spec].action_units - r[NEUTRAL].action_units)
                  for r in readings]
            magnitudes += au
            per_emotion.append(f"{sum(read)}/{len(read)} {np.mean(au):.2f}")
        total = len(readings) * len(BASIC_EMOTIONS)
        lines.append(f"| {level:g} | {hits}/{total} ({hits / total:.0%}) | "
                     f"{np.mean(magnitudes):.2f} | " + " | ".join(per_emotion) + " |")
    return lines


def mix_table(readings: list[dict[str, VideoReading]]) -> list[str]:
    """P(happy) and P(sad) along ``happy:w,sad:1-w``."""
    lines = ["| w (happy) | P(happy) | P(sad) | read most |", "|---:|---:|---:|---|"]
    for w in MIX_WEIGHTS:
        spec = mix_condition(w)
        mean = np.mean([r[spec].probabilities for r in readings], 0)
        lines.append(f"| {w:g} | {probability(mean, 'happy'):.2f} | "
                     f"{probability(mean, 'sad'):.2f} | "
                     f"{EMOTION_CLASSES[int(mean.argmax())]} |")
    return lines


def au_table(readings: list[dict[str, VideoReading]]) -> list[str]:
    """Each driven AU's rise over the neutral video, and the mean change of the others."""
    lines = ["| driven | asked | its rise | others' mean abs change | most-moved other |",
             "|---|---:|---:|---:|---|"]
    for au in DRIVEN_AUS:
        index = ACTION_UNITS.index(au)
        change = np.mean([r[f"{au}:1"].action_units - r[NEUTRAL].action_units
                          for r in readings], 0)
        others = np.delete(change, index)
        names = [a for a in ACTION_UNITS if a != au]
        most = int(np.abs(others).argmax())
        lines.append(f"| {au} | 1 | {change[index]:+.2f} | {np.abs(others).mean():.2f} | "
                     f"{names[most]} {others[most]:+.2f} |")
    return lines


def middle(frames: np.ndarray) -> np.ndarray:
    """A video's middle frame."""
    return frames[len(frames) // 2]


def labelled_rows(rows: list[tuple[str, list[np.ndarray]]], header: list[str]) -> np.ndarray:
    """A grid of frames under a header naming its columns, a label before each row."""
    width, size = 96, rows[0][1][0].shape[0]
    tags = []
    for label, _ in rows:
        tag = np.full((size, width, 3), 255, np.uint8)
        text = with_header(np.zeros((0, width, 3), np.uint8), [label.replace(",", ", ")],
                           width)  # one word (or mix component) per line
        tag[: text.shape[0]] = text[:size]
        tags.append(tag)
    cells = np.concatenate([np.concatenate(cells, 1) for _, cells in rows], 0)
    return np.concatenate([with_header(np.concatenate(tags, 0), [""], width),
                           with_header(cells, header, size)], 1)


def sheets(made: dict[str, np.ndarray], out: str) -> None:
    """The intensity and compound contact sheets of one person's videos."""
    rows = [(e, [middle(made[f"{e}@{i:g}" if i < 1 else e]) for i in INTENSITIES])
            for e in BASIC_EMOTIONS]
    write_png(os.path.join(out, "intensity_sheet.png"),
              labelled_rows(rows, [f"@{i:g}" for i in INTENSITIES]))
    rows = []
    for spec in (*COMPOUND_EMOTIONS, EVEN_MIX):
        parts = parts_of(spec)
        rows.append((spec, [middle(made[parts[0]]), middle(made[spec]), middle(made[parts[1]])]))
    write_png(os.path.join(out, "compound_sheet.png"),
              labelled_rows(rows, ["part 1", "asked", "part 2"]))


def main(weights: str = "runs/tiny/weights", test: str = "runs/synthemo/test", people: int = 4,
         seconds: float = 0.64, steps: int | None = None, batch: int = 8,
         sheet_dir: str = "docs", intensity_guidance: bool | None = None) -> None:
    """Animate every condition of the module table for ``people`` held-out identities, print
    the four tables and write the two contact sheets (of the first identity);
    ``intensity_guidance`` (default: the tiny preset's) weighs the emotion term by the
    intensity (:class:`~moee.inference.sampling.SamplerSettings`)."""
    preset = PRESET_SAMPLING["tiny"]
    if intensity_guidance is not None:
        preset = replace(preset, intensity_guidance=intensity_guidance)
    if people < 1:
        sys.exit(f"error: --people must be at least 1, got {people}")
    start = time.perf_counter()
    try:
        pipeline = MoEEPipeline.from_weights(
            MoEENetConfig(preset="tiny"), stage_weights([weights]), progress=False,
            settings=replace(preset, steps=preset.steps if steps is None else steps))
        everyone = held_out_people(test)
        probes = load_probes()
    except (FileNotFoundError, StageWeightsError, ShardError) as error:
        sys.exit(f"error: {error}")
    judge = ProbeJudge(probes, {p.identity: p.portrait for p in everyone})
    persons = everyone[:people]
    specs, frames = conditions(), round(seconds * VIDEO_FPS)
    readings, first = [], None
    for person in tqdm(persons, desc="people", unit="person"):
        made = animate_person(pipeline, person, specs, frames, batch)
        readings.append({spec: judge.read(video, person.identity) for spec, video in made.items()})
        first = first or made
    sheets(first, sheet_dir)
    print(f"## Compounds as blends ({len(persons)} people)")
    print("\n".join(compound_table(readings)))
    print("\n## Intensity (read as asked, and AU magnitude, per emotion)")
    print("\n".join(intensity_table(readings, persons, judge)))
    print("\n## Mix sweep happy:w,sad:1-w")
    print("\n".join(mix_table(readings)))
    print("\n## Single action units at 1")
    print("\n".join(au_table(readings)))
    print(f"\n{len(specs) * len(persons)} videos, {pipeline.settings.steps} steps, "
          f"{time.perf_counter() - start:.0f} s; sheets in {sheet_dir}/")


if __name__ == "__main__":
    CLI(main)
