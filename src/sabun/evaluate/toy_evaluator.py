"""The toy evaluator: reads what is in a toy-world image, as a booru tagger does for anime models.

A small CNN with one head per attribute:
- categorical: style (anime / 3d), hairstyle, eye colour, background, pose, view, zoom, ribbon;
- regression: the hair's base colour in CIE L*a*b* (the colour the character was made with, not
  the shaded pixels), from which the hair-colour tag is the nearest named colour.

An attribute the shot hides is not asked: eyes need >= 10 visible iris pixels, the ribbon >= 3
visible ribbon pixels, the pose must be in frame. At prediction time every head answers; the
metrics decide which answers count (`labels` says which are defined for a known image).

Trained on renders of both styles, half of them passed through the toy model's VAE (encode, decode)
so that it reads generated images as well as clean renders.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from sabun.config import check, number
from sabun.errors import SabunError
from sabun.evaluate.readings import Attribute, Readings
from sabun.io import atomic_output
from sabun.toyworld.character import HAIRSTYLES, THING_COLOURS, random_character
from sabun.toyworld.colours import EYE_COLOURS, HAIR_COLOURS, ciede2000, srgb_to_lab
from sabun.toyworld.geometry import POSES
from sabun.toyworld.model import VAE_CONFIG
from sabun.toyworld.render import BACKGROUNDS, STYLES, VIEWS, ZOOMS, Shot, render_with_coverage

CLASSES: dict[str, tuple[str, ...]] = {
    "style": STYLES,
    "hairstyle": HAIRSTYLES,
    "eyes": tuple(EYE_COLOURS),
    "background": BACKGROUNDS,
    "pose": POSES,
    "view": VIEWS,
    "zoom": ZOOMS,
    "ribbon": ("no", "yes"),
}
MIN_IRIS_PIXELS = 10.0
MIN_RIBBON_PIXELS = 3.0
_LAB_SCALE = np.array([100.0, 128.0, 128.0], dtype=np.float32)


def labels(spec, shot: Shot, style: str, coverage: dict[str, float]) -> dict[str, int]:
    """Class index per attribute, -1 where the shot does not show it."""
    pose_visible = shot.zoom != "portrait" or shot.pose == "arms-up"
    ribbon = 0 if not spec.ribbon else (1 if coverage.get("ribbon", 0.0) >= MIN_RIBBON_PIXELS else -1)
    return {
        "style": STYLES.index(style),
        "hairstyle": HAIRSTYLES.index(spec.hairstyle),
        "eyes": list(EYE_COLOURS).index(spec.eye_colour_name) if coverage.get("iris", 0.0) >= MIN_IRIS_PIXELS else -1,
        "background": BACKGROUNDS.index(shot.background),
        "pose": POSES.index(shot.pose) if pose_visible else -1,
        "view": VIEWS.index(shot.view),
        "zoom": ZOOMS.index(shot.zoom),
        "ribbon": ribbon,
    }


class EvaluatorNet(nn.Module):
    """64x64 RGB -> logits per attribute and the hair colour (L*a*b*, scaled)."""

    def __init__(self, width: int = 48):
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())

        self.features = nn.Sequential(
            block(3, 32, 1),  # 64: thin features (eyes, bows, outlines) are read at full resolution
            block(32, w, 2),
            block(w, w, 1),  # 32
            block(w, 2 * w, 2),
            block(2 * w, 2 * w, 1),  # 16
            block(2 * w, 128, 2),  # 8
            block(128, 128, 2),  # 4
        )
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(128 * 16, 256), nn.SiLU(), nn.Dropout(0.1))
        self.heads = nn.ModuleDict({name: nn.Linear(256, len(classes)) for name, classes in CLASSES.items()})
        self.hair = nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(self.features(x))
        out = {name: head(h) for name, head in self.heads.items()}
        out["hair_lab"] = self.hair(h)
        return out


@dataclass
class Predictions:
    """What the evaluator reads from N images."""

    probs: dict[str, np.ndarray]  # attribute -> (N, classes)
    hair_lab: np.ndarray  # (N, 3)

    def label(self, attribute: str) -> list[str]:
        return [CLASSES[attribute][i] for i in self.probs[attribute].argmax(axis=1)]

    @property
    def p_3d(self) -> np.ndarray:
        return self.probs["style"][:, STYLES.index("3d")]

    @property
    def hair_colour_name(self) -> list[str]:
        names = list(HAIR_COLOURS)
        anchors = srgb_to_lab(np.array(list(HAIR_COLOURS.values())))
        distances = np.linalg.norm(self.hair_lab[:, None, :] - anchors[None], axis=-1)
        return [names[i] for i in distances.argmin(axis=1)]

    def hair_colour_error(self, rgb: tuple[int, int, int]) -> np.ndarray:
        """CIEDE2000 between the read hair colour and `rgb`, per image."""
        return ciede2000(self.hair_lab, srgb_to_lab(rgb)[None])


class ToyEvaluator:
    """The toy world's reader (`sabun.evaluate.readings.Reader`): a small CNN trained on toy renders
    with known labels, which reads style, hairstyle, ribbon, background, pose and the hair's L*a*b*."""

    name = "toy evaluator"
    measures_colour = True

    def __init__(self, net: EvaluatorNet):
        self.net = net.eval()

    def attributes(self, target) -> list[Attribute]:
        """The target's hairstyle, hair-colour name and ribbon (seeing a ribbon is wrong for a
        character without one)."""
        ribbon = (
            Attribute("ribbon", "ribbon seen (1girl)")
            if target.ribbon
            else Attribute("ribbon", "ribbon seen (1girl; the character has none)", "lower")
        )
        return [
            Attribute("hairstyle", "target hairstyle (1girl)"),
            Attribute("hair_colour_name", "target hair-colour name (1girl)"),
            ribbon,
        ]

    def read(self, images: np.ndarray, target) -> Readings:
        read = self.predict(images)
        names = read.hair_colour_name
        return Readings(
            p_3d=read.p_3d,
            identity={
                "hairstyle": np.array([h == target.hairstyle for h in read.label("hairstyle")]),
                "hair_colour_name": np.array([n == target.hair_colour_name for n in names]),
                "ribbon": np.array([r == "yes" for r in read.label("ribbon")]),
            },
            backgrounds=[frozenset([b]) for b in read.label("background")],
            poses=[frozenset([p]) for p in read.label("pose")],
            hair_lab=read.hair_lab,
        )

    @staticmethod
    def hair_colour_error(hair_lab: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
        """CIEDE2000 between read hair colours (N, 3) and `rgb`."""
        return ciede2000(hair_lab, srgb_to_lab(rgb)[None])

    @classmethod
    def load(cls, path: Path | None = None) -> ToyEvaluator:
        """The shipped evaluator, or one saved by `train_evaluator` at `path`."""
        path = Path(path) if path is not None else shipped_evaluator_path()
        if not path.exists():
            raise SabunError(
                f"{path}: no toy evaluator there; train one with `sabun toyworld train-evaluator --out {path.parent}`"
            )
        config = (
            json.loads((path.parent / "evaluator_config.json").read_text())
            if (path.parent / "evaluator_config.json").exists()
            else {}
        )
        net = EvaluatorNet(width=config.get("width", 48))
        net.load_state_dict(load_file(path))
        return cls(net)

    @torch.no_grad()
    def predict(self, images: np.ndarray | list, batch: int = 256) -> Predictions:
        """Read uint8 images (N, 64, 64, 3) (or a list of PIL images / arrays)."""
        array = (
            np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
            if isinstance(images, list)
            else images
        )
        if array.ndim != 4 or array.shape[1:] != (64, 64, 3):
            raise SabunError(f"the toy evaluator reads 64x64 RGB images; got an array of shape {array.shape}")
        probs: dict[str, list] = {name: [] for name in CLASSES}
        hair = []
        for i in range(0, len(array), batch):
            out = self.net(to_input(array[i : i + batch]))
            for name in CLASSES:
                probs[name].append(out[name].softmax(dim=1).numpy())
            hair.append(out["hair_lab"].numpy() * _LAB_SCALE)
        return Predictions({k: np.concatenate(v) for k, v in probs.items()}, np.concatenate(hair).astype(np.float64))


def to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def shipped_evaluator_path() -> Path:
    return Path(str(resources.files("sabun") / "assets" / "toy_evaluator" / "evaluator.safetensors"))


# --- training -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluatorConfig:
    """`sabun toyworld train-evaluator`'s settings: its training renders and its training."""

    images: int = 12000  # training renders
    holdout: int = 2000  # held-out renders (other seeds) for the validation figures
    roundtrip_share: float = 0.5  # share passed through the toy VAE
    ribbon_share: float = 0.4  # share of characters with the signature ribbon
    three_d_share: float = 0.5  # share of renders in the `3d` style
    steps: int = 4000  # optimiser steps
    batch: int = 32  # batch size
    lr: float = 2e-3  # peak learning rate (AdamW, one cycle: warm-up, then cosine)
    width: int = 48  # channels of the middle conv layers (doubled at 16 px)
    seed: int = 1234  # seed of the renders, initial weights and training order

    def __post_init__(self) -> None:
        """Every setting checked before anything is rendered; an error names the option (or the field)."""
        for name, value in (("--images", self.images), ("holdout", self.holdout), ("--steps", self.steps), ("--batch", self.batch), ("width", self.width)):  # fmt: skip
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, f"must be a whole number >= 1, got {value!r}")  # fmt: skip
        for name, value in (("roundtrip_share", self.roundtrip_share), ("ribbon_share", self.ribbon_share), ("three_d_share", self.three_d_share)):  # fmt: skip
            number(value, name, 0.0, 1.0)
        number(self.lr, "lr", 0.0, above=True)
        number(self.seed, "seed", 0, 2**32 - 1)


def evaluator_dataset(
    count: int, config: EvaluatorConfig, seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Renders of random characters (any look, the target's included), their labels and hair L*a*b*."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 64, 64, 3), dtype=np.uint8)
    label_lists: dict[str, list[int]] = {name: [] for name in CLASSES}
    hair = np.empty((count, 3), dtype=np.float32)
    for i in tqdm(range(count), desc="render", unit="img", leave=False):
        spec = random_character(rng, name="e")
        if rng.random() < config.ribbon_share:
            colour = THING_COLOURS[str(rng.choice(list(THING_COLOURS)))]
            spec = replace(spec, ribbon=True, ribbon_colour=colour)
        shot = Shot(
            view=str(rng.choice(VIEWS)),
            zoom=str(rng.choice(ZOOMS)),
            pose=str(rng.choice(POSES)),
            background=str(rng.choice(BACKGROUNDS)),
        )
        style = "3d" if rng.random() < config.three_d_share else "anime"
        images[i], coverage = render_with_coverage(spec, shot, style, size=64, seed=int(rng.integers(2**31)))
        for name, value in labels(spec, shot, style, coverage).items():
            label_lists[name].append(value)
        hair[i] = srgb_to_lab(spec.hair_colour)
    return images, {k: np.array(v) for k, v in label_lists.items()}, hair


@torch.no_grad()
def vae_roundtrip(vae, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """Encode and decode through the VAE (posterior mean), as generated images pass through it."""
    out = []
    for i in range(0, len(images), batch):
        x = to_input(images[i : i + batch])
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def _with_roundtrips(images: np.ndarray, vae, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    chosen = np.random.default_rng(seed).random(len(images)) < share
    images = images.copy()
    if vae is not None and chosen.any():
        images[chosen] = vae_roundtrip(vae, images[chosen])
    return images, chosen


def accuracy_report(pred: Predictions, label_arrays: dict[str, np.ndarray], hair: np.ndarray) -> dict[str, float]:
    """Accuracy per attribute over the images where it is defined, and the hair-colour error."""
    report = {}
    for name in CLASSES:
        defined = label_arrays[name] >= 0
        report[f"{name}_accuracy"] = float(
            (pred.probs[name].argmax(axis=1)[defined] == label_arrays[name][defined]).mean()
        )
    errors = ciede2000(pred.hair_lab, hair.astype(np.float64))
    report["hair_ciede2000_median"] = float(np.median(errors))
    report["hair_ciede2000_p90"] = float(np.percentile(errors, 90))
    true_names = Predictions({}, hair.astype(np.float64)).hair_colour_name
    report["hair_name_accuracy"] = float(np.mean([a == b for a, b in zip(pred.hair_colour_name, true_names)]))
    return report


OUTPUTS = ("evaluator.safetensors", "evaluator_config.json", "evaluator_validation.json")


def train_evaluator(out: Path, vae=None, config: EvaluatorConfig = EvaluatorConfig(), overwrite: bool = False) -> dict:
    """Render data, train the evaluator, validate on held-out renders (clean and VAE round-trips).
    An earlier evaluator in `out` is refused before any work unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise SabunError(f"{out}: is a file, and the evaluator is written into a folder; choose another --out")
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise SabunError(
            f"{out / existing[0]}: already exists; pass --overwrite to replace it, or choose another --out"
        )
    start = time.time()
    torch.manual_seed(config.seed)
    images, label_arrays, hair = evaluator_dataset(config.images, config, config.seed)
    images, _ = _with_roundtrips(images, vae, config.roundtrip_share, config.seed + 1)
    held_images, held_labels, held_hair = evaluator_dataset(config.holdout, config, config.seed + 100)
    net = EvaluatorNet(width=config.width)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=config.steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(config.seed)
    targets = {k: torch.from_numpy(v) for k, v in label_arrays.items()}
    hair_target = torch.from_numpy(hair / _LAB_SCALE)
    net.train()
    bar = tqdm(range(config.steps), desc="evaluator", unit="step")
    for _ in bar:
        idx = torch.randint(len(images), (config.batch,), generator=generator)
        x = to_input(images[idx.numpy()])
        x = x + 0.03 * torch.randn(x.shape, generator=generator)  # generated images are never clean
        outputs = net(x)
        loss = 20.0 * F.smooth_l1_loss(outputs["hair_lab"], hair_target[idx], beta=0.01)
        for name in CLASSES:
            loss = loss + F.cross_entropy(outputs[name], targets[name][idx], ignore_index=-1)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    evaluator = ToyEvaluator(net)
    report = {"renders": accuracy_report(evaluator.predict(held_images), held_labels, held_hair)}
    if vae is not None:
        round_tripped = vae_roundtrip(vae, held_images)
        report["vae_roundtrips"] = accuracy_report(evaluator.predict(round_tripped), held_labels, held_hair)
    report["seconds"] = time.time() - start
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "evaluator.safetensors", overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    for name, record in (("evaluator_config.json", asdict(config)), ("evaluator_validation.json", report)):
        with atomic_output(out / name, overwrite=True) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
    return report


def load_vae(path: Path):
    """The toy VAE from a pretraining run's `vae.pt` or a diffusers `vae` folder."""
    if Path(path).suffix == ".pt":
        vae = AutoencoderKL(**VAE_CONFIG)
        vae.load_state_dict(torch.load(path, weights_only=True))
        return vae.eval()
    return AutoencoderKL.from_pretrained(path).eval()
