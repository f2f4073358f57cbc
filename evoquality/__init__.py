"""EvoQuality: self-supervised post-training of VLMs for image quality assessment."""

__version__ = "0.1.0"
