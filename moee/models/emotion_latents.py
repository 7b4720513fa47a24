"""Emotion-to-Latents: every way of naming an emotion becomes ``m`` emotion latent tokens.

Each modality is encoded, then mapped by FC layers to ``m`` query tokens of a common width:

* ``label``: basic-emotion weights x intensity (b 6), a 2-layer MLP (single, compound and
  weighted mixes; neutral is all zeros);
* ``au``: action-unit intensities (b 17), a 2-layer MLP (fine-grained control);
* ``text``: a T5 encoder, mean-pooled over tokens;
* ``speech``: an emotion2vec-like speech encoder (a wav2vec2-family model), mean-pooled; where
  the encoder is an emotion classifier, the basic emotions it hears also go through the label
  MLP and add to the speech query (a voice heard as 0.8 happy asks as ``happy@0.8`` would, the
  features correcting it).

The queries of the modalities present for a sample are averaged and attend to a set of learnable
embeddings (keys and values); the attention output is the emotion latent (b m d). A sample with
no modality present, or whose condition is dropped for classifier-free guidance, gets the learned
null latent instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, T5EncoderModel

from moee.emotions import NUM_ACTION_UNITS, NUM_EXPERTS, classifier_emotion_weights
from moee.models.audio import normalize_waveform

log = logging.getLogger(__name__)

MODALITIES = ("label", "au", "text", "speech")
"""Order of the columns of :attr:`EmotionInputs.present`."""


@dataclass
class EmotionInputs:
    """One batch of emotion conditions; every modality is optional.

    Attributes:
        label: (b 6) basic-emotion weights x intensity, ``BASIC_EMOTIONS`` order.
        au: (b 17) action-unit intensities in [0, 1], ``ACTION_UNITS`` order.
        text: ``b`` descriptions (``None`` where a sample has none).
        speech: (b s) 16 kHz mono waveform whose tone conveys the emotion.
        present: (b 4) bool, which modalities a sample uses, ``MODALITIES`` order; by default
            every given modality (and every non-``None`` text) is present.
    """

    label: torch.Tensor | None = None
    au: torch.Tensor | None = None
    text: list[str | None] | None = None
    speech: torch.Tensor | None = None
    present: torch.Tensor | None = None

    def select(self, rows: slice) -> EmotionInputs:
        """The conditions of a slice of the samples."""
        return EmotionInputs(*(None if v is None else v[rows]
                               for v in (self.label, self.au, self.text, self.speech,
                                         self.present)))

    def batch_size(self) -> int:
        """Number of samples ``b``."""
        for value in (self.label, self.au, self.speech, self.present):
            if value is not None:
                return value.shape[0]
        if self.text is not None:
            return len(self.text)
        raise ValueError("EmotionInputs holds no modality: pass at least one")

    def presence(self, device: torch.device) -> torch.Tensor:
        """(b 4) bool: which modalities each sample uses (given AND marked present)."""
        b = self.batch_size()
        given = [self.label is not None, self.au is not None, False, self.speech is not None]
        present = torch.tensor(given, device=device).expand(b, -1).clone()
        if self.text is not None:
            present[:, 2] = torch.tensor([t is not None for t in self.text], device=device)
        if self.present is not None:
            present &= self.present.to(device=device, dtype=torch.bool)
        return present


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


class TextEmotionEncoder(nn.Module):
    """A T5 encoder and its tokenizer: descriptions -> mean-pooled features (b c)."""

    def __init__(self, model: T5EncoderModel, tokenizer: PreTrainedTokenizerBase, max_length=64):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def hidden_size(self) -> int:
        """Width of the pooled features."""
        return self.model.config.d_model

    def forward(self, texts: list[str]) -> torch.Tensor:
        """``b`` strings -> (b c)."""
        device = self.model.device
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.model(**tokens).last_hidden_state  # b l c
        mask = tokens["attention_mask"][..., None].to(hidden.dtype)  # b l 1
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


@dataclass
class SpeechEmotion:
    """What the speech-emotion encoder hears in a batch of waveforms.

    Attributes:
        features: (b c) mean-pooled hidden states of its last layer.
        logits: (b k) its classifier's scores of its own classes (``None`` without one).
        emotions: (b 6) its posterior mapped onto basic-emotion weights, ``BASIC_EMOTIONS``
            order (a neutral class weighs nothing; ``None`` without a classifier).
    """

    features: torch.Tensor
    logits: torch.Tensor | None = None
    emotions: torch.Tensor | None = None


class SpeechEmotionEncoder(nn.Module):
    """An emotion2vec-like speech encoder: waveform (b s) -> :class:`SpeechEmotion`.

    Any transformers wav2vec2-family model fits: a bare one (``Wav2Vec2Model``, ``HubertModel``,
    ``Data2VecAudioModel``) gives features, an emotion classifier (``...ForSequenceClassification``
    such as SUPERB's emotion-recognition HuBERT) also the emotions it hears, its classes mapped
    onto the basic emotions by name (:func:`~moee.emotions.classifier_emotion_weights`).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        class_emotions = None
        if getattr(model, "classifier", None) is not None:
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
            weights, unknown = classifier_emotion_weights(labels)
            if unknown:
                log.warning("speech-emotion classes %s name no basic emotion: they weigh "
                            "nothing, as neutral does", unknown)
            class_emotions = torch.from_numpy(weights)
        self.register_buffer("class_emotions", class_emotions, persistent=False)

    @property
    def hidden_size(self) -> int:
        """Width of the pooled features."""
        return self.model.config.hidden_size

    @property
    def hears_emotion(self) -> bool:
        """Whether the encoder has an emotion classifier (:attr:`SpeechEmotion.emotions`)."""
        return self.class_emotions is not None

    @property
    def hears_every_emotion(self) -> bool:
        """Whether its classifier has a class for each of the six basic emotions."""
        return self.hears_emotion and bool((self.class_emotions.sum(0) > 0).all())

    def forward(self, waveform: torch.Tensor) -> SpeechEmotion:
        """(b s) 16 kHz -> features (b c) and, with a classifier, its logits and emotions."""
        out = self.model(normalize_waveform(waveform), output_hidden_states=self.hears_emotion)
        if not self.hears_emotion:
            return SpeechEmotion(out.last_hidden_state.mean(1))
        emotions = out.logits.float().softmax(-1) @ self.class_emotions
        return SpeechEmotion(out.hidden_states[-1].mean(1), out.logits,
                             emotions.to(out.logits.dtype))


class EmotionToLatents(nn.Module):
    """Map an :class:`EmotionInputs` batch to emotion latents (b m d).

    Args:
        text_encoder: T5 text encoder (frozen by the builder).
        speech_encoder: speech emotion encoder (frozen by the builder).
        dim: width ``d`` of the queries, embeddings and latents.
        num_tokens: number of latent tokens ``m``.
        num_embeddings: size of the learnable key/value embedding set.
        heads: attention heads of the query-to-embedding attention.
        hidden_dim: hidden width of the label and AU MLPs.
        speech_posterior: add the label query of the emotions the speech encoder hears to the
            speech query (only with a classifier: :attr:`SpeechEmotionEncoder.hears_emotion`);
            the speech MLP then starts at zero, so speech first asks exactly as that label.
            ``False`` is the paper's speech path (features alone).
    """

    def __init__(
        self,
        text_encoder: TextEmotionEncoder,
        speech_encoder: SpeechEmotionEncoder,
        dim: int,
        num_tokens: int = 32,
        num_embeddings: int = 64,
        heads: int = 8,
        hidden_dim: int = 256,
        speech_posterior: bool = True,
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.speech_posterior = speech_posterior and speech_encoder.hears_emotion
        self.text_encoder = text_encoder
        self.speech_encoder = speech_encoder
        queries = num_tokens * dim
        self.to_queries = nn.ModuleDict(
            {
                "label": _mlp(NUM_EXPERTS, hidden_dim, queries),
                "au": _mlp(NUM_ACTION_UNITS, hidden_dim, queries),
                "text": _mlp(text_encoder.hidden_size, hidden_dim, queries),
                "speech": _mlp(speech_encoder.hidden_size, hidden_dim, queries),
            }
        )
        # Unit-scale token queries and embeddings: the attention below is peaked from the start,
        # so the m latent tokens differ from each other (an expert's cross-attention over m
        # identical tokens is one constant vector, the same at every position: colour, never
        # geometry) and from label to label, before this module has trained at all.
        for mlp in self.to_queries.values():  # condition queries on the tokens' unit scale
            nn.init.normal_(mlp[-1].weight, std=4 * hidden_dim**-0.5)
        if self.speech_posterior:  # speech starts as the label it is heard as
            nn.init.zeros_(self.to_queries["speech"][-1].weight)
            nn.init.zeros_(self.to_queries["speech"][-1].bias)
        self.query_tokens = nn.Parameter(torch.randn(num_tokens, dim))
        self.embeddings = nn.Parameter(torch.randn(num_embeddings, dim))
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.null_latent = nn.Parameter(torch.randn(num_tokens, dim) * dim**-0.5)

    def null(self, batch_size: int) -> torch.Tensor:
        """The learned null condition, (b m d), for classifier-free guidance."""
        return self.null_latent.expand(batch_size, -1, -1)

    def _queries(self, inputs: EmotionInputs, name: str) -> torch.Tensor:
        """One modality's queries (b (m d))."""
        if name == "text":
            return self.to_queries["text"](self.text_encoder([t or "" for t in inputs.text]))
        if name == "speech":
            heard = self.speech_encoder(inputs.speech)
            queries = self.to_queries["speech"](heard.features)
            if self.speech_posterior:
                queries = queries + self.to_queries["label"](heard.emotions)
            return queries
        return self.to_queries[name](getattr(inputs, name).to(self.embeddings.dtype))

    def forward(self, inputs: EmotionInputs) -> torch.Tensor:
        """Emotion latents (b m d)."""
        b, device, dtype = inputs.batch_size(), self.embeddings.device, self.embeddings.dtype
        present = inputs.presence(device).to(dtype)  # b 4
        queries = torch.zeros(b, self.num_tokens, self.embeddings.shape[1], device=device,
                              dtype=dtype)
        for column, name in enumerate(MODALITIES):
            if present[:, column].any():
                q = rearrange(self._queries(inputs, name), "b (m d) -> b m d",
                              m=self.num_tokens)
                queries = queries + q * present[:, column, None, None]
        queries = self.query_tokens + queries / present.sum(1).clamp(min=1)[:, None, None]
        kv = self.embeddings.expand(b, -1, -1)
        latents = self.norm(self.attention(queries, kv, kv, need_weights=False)[0])
        use_null = ~present.bool().any(1)
        return torch.where(use_null[:, None, None], self.null(b), latents)
