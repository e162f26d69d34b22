"""A stand-in for the few torchvision transforms sd-scripts' SD 1.x LoRA path calls, for
bench_vs_sd_scripts.py only.

PyPI's torchvision does not import beside the CPU build of torch this project pins (its compiled
operators fail to register), and sd-scripts imports `torchvision.transforms` at start-up. Its
LoRA training on cached latents uses only `Compose([ToTensor(), Normalize([0.5], [0.5])])` while
encoding the images; everything else here raises, so a run that needed more fails loudly instead
of measuring something else."""

__version__ = "0.0-sabun-benchmark-stand-in"
