"""EvoQuality: self-supervised post-training of vision-language models for image quality assessment."""

__version__ = "0.1.0"
