"""SynthEmo: procedural emotional talking faces with exact AU, landmark, emotion and text labels.

- :mod:`~moee.data.synth.identity`: who (``sample_identity``)
- :mod:`~moee.data.synth.face`: the renderer (``FaceRenderer``)
- :mod:`~moee.data.synth.audio`: speech and visemes (``synthesize_speech``)
- :mod:`~moee.data.synth.text`: AU descriptions (``describe_aus``)
- :mod:`~moee.data.synth.generator`: clips and shards (``make_clip``, ``generate_dataset``)
- :mod:`~moee.data.synth.sheet`: the contact sheet; :mod:`~moee.data.synth.cli`: ``moee synth``
"""

from moee.data.synth.audio import Speech, synthesize_speech
from moee.data.synth.face import FaceRenderer, combine_speech, mouth_opening_from_landmarks
from moee.data.synth.generator import GENERATOR_VERSION, ClipConfig, generate_dataset, make_clip
from moee.data.synth.identity import Identity, sample_identity

__all__ = [
    "GENERATOR_VERSION", "ClipConfig", "FaceRenderer", "Identity", "Speech", "combine_speech",
    "generate_dataset", "make_clip", "mouth_opening_from_landmarks", "sample_identity",
    "synthesize_speech",
]
