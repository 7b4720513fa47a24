"""Audio windows, emotion latents with missing modalities, and the first stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from moee.data.media import normalize_track
from moee.data.sampling import window_audio
from moee.emotions import BASIC_EMOTIONS
from moee.models.emotion_latents import EmotionInputs
from moee.models.pretrained import PRESETS, build_first_stage
from moee.models.vae import PatchCodec, VideoVAE
from tests.models.conftest import CHANNELS, DIM


def test_audio_windows_follow_frames(tiny_net):
    encoder = tiny_net.audio_encoder
    assert encoder.loudness  # the tiny preset's stand-in carries loudness
    frames = 6
    wave = torch.randn(2, (frames + 4) * 640) * 0.3
    with torch.no_grad():
        windows = encoder(wave)
        hidden = torch.stack(
            encoder.model(
                torch.nn.functional.pad(wave, (encoder.pad, encoder.pad)),
                output_hidden_states=True,
            ).hidden_states,
            2,
        ).flatten(2)
    loudness = wave.reshape(2, -1, 320).pow(2).mean(-1).add(1e-4).log()
    assert hidden.shape[1] == (frames + 4) * 2  # 50 Hz: exactly 2 tokens per video frame
    assert windows.shape == (2, frames, 10, encoder.token_features)
    assert encoder.token_features == hidden.shape[-1] + 1
    for i in range(frames):  # frame i sees frames i-2 .. i+2 of the clip
        torch.testing.assert_close(windows[:, i, :, :-1], hidden[:, 2 * i : 2 * i + 10],
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(windows[:, i, :, -1], loudness[:, 2 * i : 2 * i + 10])


def _centre_loudness(net, track: np.ndarray, start: int, frames: int) -> torch.Tensor:
    """The loudness the encoder gives each frame's own (centre) token, for the window of
    ``frames`` frames at ``start`` of a normalised track, as training and the pipeline cut it."""
    window = torch.from_numpy(window_audio(normalize_track(track), start, frames))[None]
    with torch.no_grad():
        return net.audio_encoder(window)[0, :, 4, -1]


def test_audio_loudness_tells_a_loud_frame_from_a_quiet_one(tiny_net):
    """What the jaw follows: the centre token of a loud frame is louder than of a quiet one,
    whatever the track's overall gain."""
    rng = np.random.default_rng(0)
    track = rng.standard_normal(8 * 640).astype(np.float32) * 0.01
    track[3 * 640 : 4 * 640] *= 50  # frame 3 is loud
    quiet_gain = _centre_loudness(tiny_net, track, 2, 4)
    torch.testing.assert_close(quiet_gain, _centre_loudness(tiny_net, track * 20, 2, 4))
    assert quiet_gain[1] > quiet_gain[[0, 2, 3]].max() + 3


def test_a_quiet_frame_reads_quiet_in_a_window_of_one_frame(tiny_net):
    """A still's window (one frame, image-mode training) and a long video's clip hear a frame
    at the same loudness: the track is normalised once, not each short window on its own
    scale (which made every window of a quiet stretch read as loud as a loud one)."""
    rng = np.random.default_rng(0)
    track = rng.standard_normal(20 * 640).astype(np.float32)
    track[10 * 640 :] *= 0.02  # the second half is near silence
    loud, quiet = (_centre_loudness(tiny_net, track, start, 1)[0] for start in (5, 15))
    assert loud > quiet + 5
    in_clip = _centre_loudness(tiny_net, track, 12, 8)[3]  # frame 15 inside an 8-frame clip
    torch.testing.assert_close(in_clip, quiet)


@torch.no_grad()
def test_emotion_latents_modalities(tiny_net):
    to_latents = tiny_net.emotion_to_latents
    label = torch.eye(6)[[3, 4]]
    full = EmotionInputs(
        label=label, au=torch.rand(2, 17), text=["a happy smile", None], speech=torch.randn(2, 8000)
    )
    latents = to_latents(full)
    assert latents.shape == (2, 8, DIM)
    assert not torch.allclose(to_latents(EmotionInputs(label=label)), latents)
    masked = EmotionInputs(label=label, au=full.au, present=torch.tensor([[1, 0, 0, 0]] * 2))
    torch.testing.assert_close(to_latents(masked), to_latents(EmotionInputs(label=label)))
    nothing = EmotionInputs(label=label, present=torch.zeros(2, 4, dtype=torch.bool))
    torch.testing.assert_close(to_latents(nothing), to_latents.null(2))
    one_dropped = EmotionInputs(label=label, present=torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]]))
    dropped = to_latents(one_dropped)
    torch.testing.assert_close(dropped[0], to_latents.null(1)[0])
    torch.testing.assert_close(dropped[1], to_latents(EmotionInputs(label=label))[1])


@torch.no_grad()
def test_untrained_emotion_latents_differ_by_token_and_by_label(tiny_net):
    """Stages 1 and 2 keep Emotion-to-Latents at its initial weights. Its tokens must already
    differ, or every expert's cross-attention returns one constant vector at every position
    (measured: tokens and labels within 1 % of each other made the experts learn colour only)."""
    latents = tiny_net.emotion_to_latents(EmotionInputs(label=torch.eye(6)))  # 6 m d
    spread = latents.std()
    assert latents.std(1).mean() > 0.3 * spread  # between the m tokens of one label
    assert latents.std(0).mean() > 0.1 * spread  # between the six labels, token by token
    weaker = tiny_net.emotion_to_latents(EmotionInputs(label=0.3 * torch.eye(6)))
    assert (weaker - latents).abs().mean() > 0.05 * spread  # intensity reaches the latents


@torch.no_grad()
def test_patch_codec_is_lossless_space_to_depth(tiny_net):
    assert isinstance(tiny_net.vae, PatchCodec)
    frames = torch.rand(2, 3, 3, 64, 64) * 2 - 1
    latents = tiny_net.vae.encode(frames, sample=False)
    p = tiny_net.vae.downsample
    assert latents.shape == (2, 3, CHANNELS, 64 // p, 64 // p)
    assert CHANNELS == tiny_net.vae.latent_channels == 3 * p * p
    torch.testing.assert_close(tiny_net.vae.decode(latents), frames, rtol=0, atol=1e-6)
    # latent (c, i, j) is pixel (c // p², p i + (c % p²) // p, p j + c % p) of the frame,
    # scaled to unit variance
    channel, row, col = p * p + p * 1 + (p - 1), 5, 7
    torch.testing.assert_close(latents[0, 0, channel, row, col], tiny_net.vae.scaling_factor
                               * frames[0, 0, 1, p * row + 1, p * col + p - 1])


def test_patch_preset_refuses_vae_weights():
    with pytest.raises(ValueError, match="weights.vae to null"):
        build_first_stage(PRESETS["tiny"], "runs/tiny/weights/vae")


@torch.no_grad()
def test_autoencoder_first_stage_round_trip_shapes():
    vae = VideoVAE(AutoencoderKL(block_out_channels=(16, 32), down_block_types=(
        "DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=64))
    frames = torch.rand(2, 3, 3, 64, 64) * 2 - 1
    latents = vae.encode(frames, sample=False)
    assert latents.shape == (2, 3, 4, 32, 32) and vae.downsample == 2
    assert vae.decode(latents).shape == frames.shape
    single = vae.encode(frames[:, 1:2], sample=False)
    torch.testing.assert_close(single, latents[:, 1:2], atol=1e-5, rtol=1e-4)


def test_tiny_speech_emotion_stand_in_learns_tone_of_unseen_voices():
    """The tiny preset's random speech-emotion encoder is pretrained (SpeechEmotionModule); it
    must be able to hear tone (pitch, its range, rate), not only the speaker: its own classifier
    tells sad from happy speech of voices it never heard after 120 steps (91 %; a separate
    linear head on the 16 conv channels it had before: 56 %; its head at transformers' init:
    55 %)."""
    import numpy as np

    from moee.data.sampling import SPEECH_FRAMES
    from moee.data.synth.audio import synthesize_speech
    from moee.models.emotion_latents import SpeechEmotionEncoder
    from moee.models.pretrained import build_speech_encoder

    def voices(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 2, n)
        waves = [synthesize_speech(SPEECH_FRAMES, ("sad", "happy")[y], rng,
                                   pitch_hz=rng.uniform(90, 220)).audio for y in labels]
        return torch.from_numpy(np.stack(waves)).float(), torch.from_numpy(labels)

    torch.manual_seed(0)
    encoder = SpeechEmotionEncoder(build_speech_encoder(PRESETS["tiny"], None))
    sad_happy = [BASIC_EMOTIONS.index("sad"), BASIC_EMOTIONS.index("happy")]
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    for step in range(120):
        waves, labels = voices(step, 8)
        loss = torch.nn.functional.cross_entropy(encoder(waves).logits[:, sad_happy], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    waves, labels = voices(1000, 64)  # other speakers, other sentences
    with torch.no_grad():
        heard = encoder.eval()(waves).emotions[:, sad_happy]
    accuracy = (heard.argmax(1) == labels).float().mean()
    assert accuracy >= 0.85, accuracy


@torch.no_grad()
def test_speech_encoder_hears_emotions_through_its_classifier(tmp_path):
    """An emotion-recognition checkpoint (SUPERB's IEMOCAP classes) loads with its head; its
    posterior maps onto the basic emotions by class name, neutral weighing nothing; the
    features are its last layer's, mean-pooled. A bare encoder gives features only."""
    from transformers import HubertConfig, HubertForSequenceClassification, HubertModel

    from moee.models.audio import normalize_waveform
    from moee.models.emotion_latents import SpeechEmotionEncoder
    from moee.models.pretrained import build_speech_encoder

    iemocap = {0: "neu", 1: "hap", 2: "ang", 3: "sad"}
    config = HubertConfig(**{**PRESETS["tiny"].speech_encoder, "id2label": iemocap})
    saved = HubertForSequenceClassification(config).eval()
    saved.save_pretrained(tmp_path / "er")
    encoder = SpeechEmotionEncoder(build_speech_encoder(PRESETS["tiny"], str(tmp_path / "er")))
    assert encoder.hears_emotion
    waves = normalize_waveform(torch.randn(3, 8000))
    heard = encoder.eval()(waves)
    logits = saved(waves).logits
    torch.testing.assert_close(heard.logits, logits)  # the head loaded, not drawn anew
    posterior = logits.softmax(-1)
    expected = torch.zeros(3, 6)
    for column, emotion in ((1, "happy"), (2, "angry"), (3, "sad")):
        expected[:, BASIC_EMOTIONS.index(emotion)] = posterior[:, column]
    torch.testing.assert_close(heard.emotions, expected)
    torch.testing.assert_close(heard.features,
                               saved.hubert(waves).last_hidden_state.mean(1))
    HubertModel(config).save_pretrained(tmp_path / "bare")
    bare = SpeechEmotionEncoder(build_speech_encoder(PRESETS["tiny"], str(tmp_path / "bare")))
    assert not bare.hears_emotion
    heard = bare.eval()(waves)
    assert heard.emotions is None and heard.features.shape == (3, config.hidden_size)


@torch.no_grad()
def test_speech_asks_as_the_label_it_is_heard_as(tiny_net):
    """With an emotion classifier, speech's query is the label MLP's on the emotions it hears
    plus the speech MLP's on its features, which starts at zero: an untrained speech path asks
    exactly as that label would. The paper's path (``speech_posterior`` off) does not."""
    from moee.models.moee_net import MoEENet, MoEENetConfig

    waves = torch.randn(2, 8000)
    to_latents = tiny_net.emotion_to_latents
    heard = to_latents.speech_encoder(waves).emotions
    torch.testing.assert_close(to_latents(EmotionInputs(speech=waves)),
                               to_latents(EmotionInputs(label=heard)))
    paper = MoEENet(MoEENetConfig(speech_posterior=False)).eval().emotion_to_latents
    assert not paper.speech_posterior
    gap = paper(EmotionInputs(speech=waves)) - paper(EmotionInputs(label=heard))
    assert gap.abs().mean() > 0.1
