"""MoEE: Mixture of Emotion Experts for audio-driven, emotion-controllable portrait animation."""

__version__ = "0.1.0"
