"""Datasets: folders of images and captions -> checked, bucketed training images -> batches.

Folder layout (sd-scripts' convention, so existing datasets work unchanged):
- a folder of images, each with a caption file next to it (`a.png` + `a.txt`);
- or a folder of `N_name` subfolders: N is how many times each image is repeated per epoch, and
  `name` is the caption of images that have no caption file.
Every image is opened and fully decoded before training starts; all problems are reported at once.
Files of image types that are not read (`.heic`, `.psd`, ...) are named in a warning, never skipped
silently. Caption files are UTF-8 (a byte-order mark is accepted); one that is not is a problem
naming the file.

The batch order is a pure function of (seed, epoch), so the data position of a resumed run is
given by the step alone and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sabun.data.buckets import make_buckets, nearest_bucket, square_bucket
from sabun.data.images import (
    IMAGE_SUFFIXES,
    UNREAD_IMAGE_SUFFIXES,
    ImageProblem,
    inspect_image,
)
from sabun.data.limits import MAX_REPEATS
from sabun.errors import SabunError
from sabun.io import read_text

REPEATS_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class TrainImage:
    """One training image and how it is used."""

    path: Path
    caption: str
    folder: str  # the folder it came from (tag counts and ss_dataset_dirs are per folder)
    repeats: int  # times per epoch
    bucket: tuple[int, int]  # training size in pixels, (width, height)
    dataset: int  # index into the config's datasets (its caption and flip settings)


@dataclass(frozen=True)
class FoundImage:
    """A checked image before it is given a bucket (which needs the model's pixel stride)."""

    path: Path
    size: tuple[int, int]  # (width, height)
    caption: str
    folder: str
    repeats: int
    dataset: int


@dataclass
class ImageSet:
    images: list[FoundImage] = field(default_factory=list)
    problems: list[ImageProblem] = field(default_factory=list)
    missing_captions: int = 0


@dataclass(frozen=True)
class Subset:
    """A folder of images with one repeat count."""

    path: Path
    repeats: int
    class_caption: str  # `name` of an `N_name` folder: the caption of images without a caption file


def image_files(folder: Path) -> list[Path]:
    """The images of `folder`: regular files (or links to them) with an image suffix."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def not_an_image_file(path: Path) -> str | None:
    """Why the entry `path` (named like an image) is no image file, or None when it is a regular
    file (or a link to one) or a folder (a folder is never an image; subfolders are handled apart).
    It is never opened: opening a FIFO would wait forever for a writer."""
    if path.is_file() or path.is_dir():
        return None
    if path.is_symlink() and not path.exists():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"a symbolic link to {target}, which does not exist (or is a link loop); fix or remove the link"
    try:
        mode = path.stat().st_mode  # through a link: what it leads to
    except OSError as e:
        return f"cannot be read ({e.strerror or e}); check its permissions"
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")  # fmt: skip
    return f"{kind}, not an image file; remove it or replace it with the image"


def odd_image_entries(folder: Path) -> list[ImageProblem]:
    """Entries of `folder` named like images that are no image files (a dangling link, a FIFO, a
    device): each a problem, so that none is skipped silently."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            reason = not_an_image_file(p)
            if reason is not None:
                found.append(ImageProblem(p, reason))
    return found


def folder_repeats(folder: Path, repeats: int, where: str) -> int:
    """The repeats of `folder` (from its `N_name` name, or `repeats` from the config); 0 is an error."""
    match = REPEATS_FOLDER.match(folder.name)
    count = repeats or (int(match.group(1)) if match else 1)
    if count < 1:
        raise SabunError(
            f"{where}: {folder}: the folder name says 0 repeats, so its images would never be trained on; "
            f"rename it to 1_{match.group(2) if match else folder.name} (or more), or set repeats in the dataset's table"
        )
    if count > MAX_REPEATS:
        raise SabunError(
            f"{where}: {folder}: the folder name says {count} repeats; at most {MAX_REPEATS} (usual: 1-100); rename it"
        )
    return count


def unread_image_files(folder: Path) -> list[Path]:
    """Files in `folder` of image types sabun does not read (they would otherwise vanish silently)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in UNREAD_IMAGE_SUFFIXES)


def has_images(folder: Path) -> bool:
    """Whether `folder` holds images, or entries named like images that are not (reported as problems)."""
    return bool(image_files(folder) or odd_image_entries(folder))


def _names(paths: list[Path], limit: int = 10) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def find_subsets(path: Path, repeats: int | None, where: str) -> list[Subset]:
    """The image folders of one dataset entry: the folder itself and/or its `N_name` subfolders.

    `repeats` from the config, when given, overrides the counts in folder names.
    """
    if not path.is_dir():
        raise SabunError(f"{where}: {path}: no such folder; give a folder of images (or of N_name subfolders)")
    subsets = []
    match = REPEATS_FOLDER.match(path.name)
    if has_images(path):
        subsets.append(Subset(path, folder_repeats(path, repeats, where), match.group(2) if match else ""))
    ignored = []
    unread = unread_image_files(path)
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        sub_match = REPEATS_FOLDER.match(sub.name)
        if sub_match and has_images(sub):
            subsets.append(Subset(sub, folder_repeats(sub, repeats, where), sub_match.group(2)))
        elif has_images(sub):
            ignored.append(sub.name)
        if sub_match:
            unread += unread_image_files(sub)
    if ignored:
        warnings.warn(
            f"{path}: subfolders {', '.join(ignored)} are not named N_name (N = repeats) and are ignored", stacklevel=2
        )
    if not subsets:
        also = (
            f"; it holds {len(unread)} image(s) of types sabun does not read ({_names(unread)}): convert them to PNG"
            if unread
            else ""
        )
        raise SabunError(
            f"{where}: {path}: holds no images ({', '.join(IMAGE_SUFFIXES)}), directly or in N_name subfolders{also}"
        )
    if unread:
        warnings.warn(
            f"{where}: not training on {len(unread)} file(s) of image types sabun does not read: {_names(unread)}; "
            f"convert them to PNG to train on them ({', '.join(IMAGE_SUFFIXES)} are read)",
            stacklevel=2,
        )
    return subsets


def read_caption(image: Path, extension: str) -> str | None:
    """The caption of `image` (NAME + `extension`, whitespace collapsed), or None when there is none.

    Raises a SabunError naming the caption file when it is not UTF-8 text.
    """
    caption_file = image.with_suffix(extension)
    if not caption_file.is_file():
        return None
    return " ".join(read_text(caption_file, "caption file").split())


def check_caption_extension(extension: str, where: str) -> None:
    if not extension.startswith(".") or len(extension) < 2 or any(c in extension for c in "/\\\0"):
        raise SabunError(
            f"{where}: {extension!r} is not a file extension; give one that starts with a dot, e.g. '.txt'"
        )


def scan_images(datasets, data) -> ImageSet:
    """Find, open and check every image of every dataset (a list of `DatasetConfig`).

    Needs no model, so bad data is reported before a large model is loaded.
    Raises a SabunError listing every bad image (and every caption file that is not UTF-8) at once,
    unless `data.skip_bad_images`, which skips them (the image of a bad caption file too) with a warning.
    """
    result = ImageSet()
    for index, dataset in enumerate(datasets):
        min_size = data.min_image_size or max(1, (dataset.resolution or data.resolution) // 2)
        check_caption_extension(dataset.caption_extension, f"datasets[{index}].caption_extension")
        for subset in find_subsets(Path(dataset.path), dataset.repeats, f"datasets[{index}].path"):
            result.problems.extend(odd_image_entries(subset.path))
            for path in image_files(subset.path):
                size, problem = inspect_image(path, min_size)
                if problem is not None:
                    result.problems.append(problem)
                    continue
                try:
                    caption = read_caption(path, dataset.caption_extension)
                except SabunError as e:
                    caption_file = path.with_suffix(dataset.caption_extension)
                    result.problems.append(
                        ImageProblem(caption_file, str(e).removeprefix(f"{caption_file}: "), caption=True)
                    )
                    continue
                if caption is None:
                    result.missing_captions += 1
                    caption = dataset.default_caption if dataset.default_caption is not None else subset.class_caption
                result.images.append(FoundImage(path, size, caption, subset.path.name, subset.repeats, index))
    if result.problems:
        listing = "; ".join(str(p) for p in result.problems)
        captions = sum(p.caption for p in result.problems)
        images = len(result.problems) - captions
        what = " and ".join(
            part
            for part in (
                f"{images} bad training image(s)" if images else "",
                f"{captions} bad caption file(s)" if captions else "",
            )
            if part
        )
        if not data.skip_bad_images:
            raise SabunError(f"{what}: {listing}. Fix or remove them, or set data.skip_bad_images = true")
        warnings.warn(f"skipping {what}: {listing}", stacklevel=2)
    if not result.images:
        raise SabunError("no usable training images left; check the dataset folders")
    return result


def assign_buckets(found: list[FoundImage], datasets, data, pixel_stride: int) -> list[TrainImage]:
    """Give each image its training size: the nearest bucket of its dataset's resolution.

    Args:
        pixel_stride: the model's pixel granularity (VAE factor x U-Net downsampling).
    """
    sizes: dict[int, list[tuple[int, int]]] = {}
    images = []
    for image in found:
        resolution = datasets[image.dataset].resolution or data.resolution
        if resolution not in sizes:
            sizes[resolution] = bucket_sizes(resolution, data, pixel_stride)
        bucket = nearest_bucket(image.size, sizes[resolution])
        images.append(TrainImage(image.path, image.caption, image.folder, image.repeats, bucket, image.dataset))
    return images


def bucket_sizes(resolution: int, data, pixel_stride: int) -> list[tuple[int, int]]:
    """The training sizes for one resolution: all buckets, or the one square when buckets are off."""
    if not data.buckets:
        return [square_bucket(resolution, pixel_stride)]
    if data.bucket_step % pixel_stride:
        raise SabunError(
            f"data.bucket_step: {data.bucket_step} is not a multiple of the model's pixel stride {pixel_stride}; use a multiple of {pixel_stride}"
        )
    min_side = data.min_bucket or resolution // 2
    max_side = data.max_bucket or resolution * 2
    return make_buckets(resolution, min_side, max_side, data.bucket_step)


def split_validation(images: list[TrainImage], share: float, seed: int) -> tuple[list[TrainImage], list[TrainImage]]:
    """Hold out round(share * n) images (at least one when share > 0), chosen under `seed`."""
    if share <= 0:
        return images, []
    count = max(1, round(share * len(images)))
    if count >= len(images):
        raise SabunError(f"validation.split: {share} would hold out all {len(images)} images; lower it or add images")
    held = set(np.random.default_rng([seed, 1]).choice(len(images), size=count, replace=False).tolist())
    return [im for i, im in enumerate(images) if i not in held], [im for i, im in enumerate(images) if i in held]


class BatchPlan:
    """Which images each process sees at each step, as a function of (seed, epoch) only.

    Every image appears `repeats` times per epoch. Per epoch, each bucket's examples are shuffled
    and cut into global batches of `batch_size * world_size` (a batch never mixes sizes); the
    batches are then shuffled. A bucket's last, short batch is padded (by wrapping round) to a
    multiple of `world_size`, so that every process gets at least one image.
    """

    def __init__(self, images: list[TrainImage], batch_size: int, world_size: int, seed: int):
        self.batch_size, self.world_size, self.seed = batch_size, world_size, seed
        self.by_bucket: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            self.by_bucket[image.bucket].extend([i] * image.repeats)
        global_size = batch_size * world_size
        self.batches_per_epoch = sum(-(-len(v) // global_size) for v in self.by_bucket.values())
        self.examples_per_epoch = sum(len(v) for v in self.by_bucket.values())
        self._cached: tuple[int, list[list[int]]] | None = None

    def epoch(self, epoch: int) -> list[list[int]]:
        """The global batches of `epoch` (lists of image indices), in order."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed, epoch])
        global_size = self.batch_size * self.world_size
        batches = []
        for bucket in sorted(self.by_bucket):
            examples = [self.by_bucket[bucket][j] for j in rng.permutation(len(self.by_bucket[bucket]))]
            for start in range(0, len(examples), global_size):
                batch = examples[start : start + global_size]
                while len(batch) % self.world_size:
                    batch.append(examples[len(batch) % len(examples)])
                batches.append(batch)
        batches = [batches[j] for j in rng.permutation(len(batches))]
        self._cached = (epoch, batches)
        return batches

    def position(self, micro_step: int) -> tuple[int, int]:
        """(epoch, batch index in the epoch) of the `micro_step`-th batch (0-based)."""
        return divmod(micro_step, self.batches_per_epoch)

    def batch(self, micro_step: int, rank: int) -> list[int]:
        """This process's share of the `micro_step`-th global batch."""
        epoch, index = self.position(micro_step)
        return self.epoch(epoch)[index][rank :: self.world_size]
