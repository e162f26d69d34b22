"""sabun (差分): train LoRA adapters for Stable Diffusion by learning differences."""

__version__ = "0.1.0"
