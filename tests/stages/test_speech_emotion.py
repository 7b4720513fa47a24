"""SpeechEmotionModule: the tiny preset's speech-emotion recogniser trains, and its export is the
network's speech encoder."""

import lightning as L
import numpy as np
import torch
from safetensors import safe_open

from moee.data.sampling import SPEECH_FRAMES
from moee.data.synth.audio import synthesize_speech
from moee.models.moee_net import SPEECH_ENCODER, MoEENet, MoEENetConfig
from moee.models.weights import load_net_weights
from moee.stages import SpeechEmotionModule

SAD, HAPPY = 4, 3  # indices in BASIC_EMOTIONS


def voices(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sad or happy speech windows of random speakers (pitch)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([SAD, HAPPY], n)
    waves = [synthesize_speech(SPEECH_FRAMES, "sad" if y == SAD else "happy", rng,
                               pitch_hz=rng.uniform(90, 220)).audio for y in labels]
    return torch.from_numpy(np.stack(waves)).float(), torch.from_numpy(labels)


class Batches(torch.utils.data.IterableDataset):
    """The same batch of speech windows, endlessly."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


def test_recogniser_fits_its_speech_and_exports_the_network_s_encoder(tmp_path):
    """Trained through Lightning, the recogniser learns the emotions of a batch of voices (the
    encoder's power to hear tone in unseen voices is tests/models/test_encoders.py's), its lr
    decays to zero, and the export loads into MoEENet as its speech encoder, which then hears
    exactly what the module heard, its classifier included."""
    export = tmp_path / "speech_emotion.safetensors"
    module = SpeechEmotionModule(export_path=str(export), lr_decay=0.3)
    waves, labels = voices(0, 16)
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(module(waves), labels)
    fit = L.Trainer(max_steps=60, accelerator="cpu", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False,
                    default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader(Batches((waves, labels)), batch_size=None)
    fit.fit(module, train_dataloaders=loader)
    assert fit.optimizers[0].param_groups[0]["lr"] == 0.0
    module.eval()
    with torch.no_grad():
        logits = module(waves)
    assert torch.nn.functional.cross_entropy(logits, labels) < 0.2 * before
    assert torch.equal(logits.argmax(1), labels)
    with safe_open(str(export), "pt") as file:
        assert file.metadata()["stage"] == "SpeechEmotionModule"
        assert all(k.startswith(f"{SPEECH_ENCODER}.") for k in file.keys())
        assert f"{SPEECH_ENCODER}.model.classifier.weight" in file.keys()  # the head too
    net = MoEENet(MoEENetConfig(preset="tiny"))
    load_net_weights(net, export)
    with torch.no_grad():
        heard, expected = net.emotion_to_latents.speech_encoder(waves), module.encoder(waves)
    torch.testing.assert_close(heard.features, expected.features)
    torch.testing.assert_close(heard.logits, logits)
    assert torch.equal(heard.emotions.argmax(1), labels)  # the network hears what it learnt
