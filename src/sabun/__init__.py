"""sabun (差分): train LoRA adapters for Stable Diffusion by learning differences."""

import os

# transformers warns at import that torchvision is absent (sabun never needs it) and prints a load
# report for every adapter it loads; keep the console for sabun's own output unless the user asks.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"
