"""`Compose`, `ToTensor` and `Normalize` with torchvision's semantics for HWC uint8 images."""

from __future__ import annotations

import enum
import types

import numpy as np
import torch


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image


class ToTensor:
    """An HWC uint8 image (array or PIL) as a CHW float tensor in [0, 1]."""

    def __call__(self, image):
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return tensor.float().div(255) if array.dtype == np.uint8 else tensor.float()


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __call__(self, tensor):
        return (tensor - self.mean) / self.std


def _missing(name):
    def call(*args, **kwargs):
        raise NotImplementedError(f"torchvision.transforms.functional.{name}: not in the benchmark's stand-in")

    return call


functional = types.SimpleNamespace(
    **{name: _missing(name) for name in ("resize", "pil_to_tensor", "gaussian_blur", "to_tensor", "normalize")}
)
