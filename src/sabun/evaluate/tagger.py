"""A booru tagger as the reader of real models' images: WD14-style ONNX taggers, read from a folder.

The taggers the kohya_ss GUI, OneTrainer and the A1111 tagger extension use (SmilingWolf's
`wd-*-tagger` models) are a folder with `model.onnx` (NHWC float input, BGR, 0..255; one sigmoid
output per tag) and `selected_tags.csv` (`tag_id,name,category,count`; category 9 = rating, 0 =
general, 4 = character). sabun reads such a folder the user already has; nothing is downloaded.

The evaluation protocol's concepts (the `3d` look, prompted backgrounds and poses, views) are read
through a tag map (`DEFAULT_TAG_MAP`, extended by a TOML file: `load_tag_map`), and the character's
identity through its own tags (`sabun.evaluate.tagged_character`). A tagger reads names of things,
not colours: the `TaggerReader` gives no hair colour (docs/tagger.md).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sabun.data.images import open_rgb, to_rgb
from sabun.errors import SabunError
from sabun.evaluate.readings import Attribute, Readings
from sabun.io import read_toml

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING, GENERAL, CHARACTER = 9, 0, 4  # selected_tags.csv categories
DEFAULT_THRESHOLD = 0.35  # the threshold the WD14 taggers' own demos and kohya's script default to


def normalise_tag(text: str) -> str:
    """A tag in the CSV's form: lower case, underscores (`Blonde hair` -> `blonde_hair`); a prompt's
    escaped brackets (`\\(genshin impact\\)`) unescaped."""
    text = text.strip().lower().replace("\\(", "(").replace("\\)", ")")
    return re.sub(r"\s+", "_", text)


# --- the tag map ---------------------------------------------------------------------------------

LOOK = "3d"  # the concept whose tags give P(3d look): the highest of their probabilities
KINDS = ("background", "pose", "view")

# The protocol's concepts -> booru tags. Backgrounds and poses are the names `Readings` reports
# (sabun.evaluate.readings.BACKGROUNDS / POSES, and `white`, the renders' own); views are used by the
# caption policies. A front view has no booru tag of its own: it is "none of the views".
DEFAULT_TAG_MAP: dict[str, dict[str, tuple[str, ...]]] = {
    "look": {LOOK: ("3d", "realistic", "photorealistic")},
    "background": {
        "outdoor": ("outdoors",),
        "indoor": ("indoors",),
        "blue": ("blue_background",),
        "pink": ("pink_background",),
        "white": ("white_background",),
    },
    "pose": {"arms-up": ("arms_up",), "hands-on-hips": ("hands_on_hips",)},
    "view": {"behind": ("from_behind",), "side": ("from_side",)},
}
_CONCEPT_NAME = re.compile(r"^[\w-]+$")  # what a prompt file's [background:NAME] label can name


@dataclass(frozen=True)
class TagMap:
    """Booru tags per concept, in underscore form. A concept is seen when any of its tags is."""

    look: tuple[str, ...]  # P(3d look) = max of these tags' probabilities
    backgrounds: dict[str, tuple[str, ...]]
    poses: dict[str, tuple[str, ...]]
    views: dict[str, tuple[str, ...]]
    source: str = "the default tag map"  # where it came from, for errors

    def all_tags(self) -> list[str]:
        tags = list(self.look)
        for table in (self.backgrounds, self.poses, self.views):
            for values in table.values():
                tags += values
        return list(dict.fromkeys(tags))


def default_tag_map() -> TagMap:
    return TagMap(
        look=DEFAULT_TAG_MAP["look"][LOOK],
        backgrounds=dict(DEFAULT_TAG_MAP["background"]),
        poses=dict(DEFAULT_TAG_MAP["pose"]),
        views=dict(DEFAULT_TAG_MAP["view"]),
    )


def _tag_list(value: object, where: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise SabunError(f'{where} must be a list of tags, e.g. ["outdoors", "sky"]')
    return tuple(dict.fromkeys(normalise_tag(v) for v in values))


def load_tag_map(path: str | os.PathLike | None = None) -> TagMap:
    """The default tag map, or a TOML file's `[tags]` table merged over it.

    A known concept (`3d`, `outdoor`, `arms-up`, `behind`...) given in the file replaces that
    concept's tags; a new background, pose or view is given under its kind, which lets a prompt file
    test it (`[background:beach]`):

        [tags]
        outdoor = ["outdoors", "sky"]
        background.beach = ["beach"]
    """
    tag_map = default_tag_map()
    if path is None:
        return tag_map
    path = Path(path)
    if not path.exists():
        raise SabunError(f"{path}: no such tag-map file; check the path, or leave out --tag-map for the default map")
    data = read_toml(path, "TOML tag map", 'it should hold a [tags] table, e.g. outdoor = ["outdoors"]')
    if set(data) != {"tags"} or not isinstance(data["tags"], dict):
        raise SabunError(
            f'{path}: a tag map holds one [tags] table (e.g. outdoor = ["outdoors"]); found: {", ".join(sorted(data)) or "nothing"}'
        )
    tables = {
        "look": {LOOK: tag_map.look},
        "background": dict(tag_map.backgrounds),
        "pose": dict(tag_map.poses),
        "view": dict(tag_map.views),
    }
    kind_of = {name: kind for kind, table in tables.items() for name in table}
    for key, value in data["tags"].items():
        if isinstance(value, dict) and key in KINDS:
            for name, tags in value.items():
                if not _CONCEPT_NAME.match(name):
                    raise SabunError(f"{path}: tags.{key}.{name}: a name may hold letters, digits, '_' and '-'")
                if kind_of.get(name, key) != key:
                    raise SabunError(
                        f"{path}: tags.{key}.{name}: {name!r} is already a {kind_of[name]}; choose another name"
                    )
                tables[key][name] = _tag_list(tags, f"{path}: tags.{key}.{name}")
                kind_of[name] = key
        elif key in kind_of:
            tables[kind_of[key]][key] = _tag_list(value, f"{path}: tags.{key}")
        else:
            known = ", ".join(kind_of)
            raise SabunError(
                f'{path}: tags.{key}: unknown concept; known: {known}; a new one goes under its kind, e.g. background.{key} = ["..."]'
            )
    return TagMap(tables["look"][LOOK], tables["background"], tables["pose"], tables["view"], source=str(path))


# --- the tagger ----------------------------------------------------------------------------------


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_selected_tags(path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """(tag names in underscore form, categories) of a `selected_tags.csv`, row by row."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise SabunError(
            f"{path}: no such file; a tagger folder holds {MODEL_FILE} and {TAGS_FILE} (the tag list that came with the model)"
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SabunError(
            f"{path}: is not a readable CSV file ({_first_line(e)}); copy {TAGS_FILE} from the model's source again"
        ) from None
    if not rows or "name" not in header or "category" not in header:
        raise SabunError(
            f"{path}: is not a tagger's tag list: it needs a header tag_id,name,category,count and one row per tag; copy {TAGS_FILE} again"
        )
    names, categories = [], []
    for number, row in enumerate(rows, 2):
        name, category = (row.get("name") or "").strip(), (row.get("category") or "").strip()
        if not name or not category.lstrip("-").isdigit():
            raise SabunError(
                f"{path}:{number}: a row needs a tag name and a numeric category (9 rating, 0 general, 4 character); copy {TAGS_FILE} again"
            )
        names.append(normalise_tag(name))
        categories.append(int(category))
    return tuple(names), np.array(categories, dtype=np.int64)


def _providers(onnxruntime) -> list[str]:
    """CUDA first when this onnxruntime build has it (onnxruntime-gpu), then the CPU."""
    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or ["CPUExecutionProvider"]


@dataclass
class Tagger:
    """A WD14-style tagger: an ONNX session and its tag list. `Tagger.load(folder)` builds one."""

    folder: Path
    session: object  # onnxruntime.InferenceSession
    names: tuple[str, ...]  # tag names, underscore form, in output order
    categories: np.ndarray  # (tags,) selected_tags.csv categories
    size: int  # the model's square input size (448 for the WD14 v2 / v3 models)
    batch: int | None = None  # the model's fixed batch size; None when the batch dimension is dynamic
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {}
        for i, name in enumerate(self.names):
            self._index.setdefault(name, i)

    @property
    def csv_path(self) -> Path:
        return self.folder / TAGS_FILE

    @property
    def name(self) -> str:
        """The folder's name; for a Hugging Face cache snapshot (`models--SmilingWolf--wd-vit-tagger-v3/
        snapshots/<hash>`), the model's (`wd-vit-tagger-v3`)."""
        folder = self.folder.resolve()
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            return folder.parent.parent.name.split("--")[-1]
        return folder.name

    @classmethod
    def load(cls, folder: str | os.PathLike, providers: Sequence[str] | None = None) -> Tagger:
        """Read a tagger folder (`model.onnx`, `selected_tags.csv`); a problem with either is found here."""
        folder = Path(folder)
        if not folder.is_dir():
            what = "is a file" if folder.exists() else "no such folder"
            raise SabunError(
                f"{folder}: {what}; give the tagger's folder, the one holding {MODEL_FILE} and {TAGS_FILE}"
            )
        model = folder / MODEL_FILE
        if not model.is_file():
            onnx = sorted(p.name for p in folder.glob("*.onnx"))
            hint = f" (it holds {', '.join(onnx)}: rename the model to {MODEL_FILE})" if onnx else ""
            raise SabunError(f"{model}: no such file{hint}; a tagger folder holds {MODEL_FILE} and {TAGS_FILE}")
        names, categories = read_selected_tags(folder / TAGS_FILE)
        try:
            import onnxruntime
        except ImportError:
            raise SabunError(
                "reading images with a tagger needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu for CUDA)"
            ) from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: the CUDA provider's warnings are not the user's business
        try:
            session = onnxruntime.InferenceSession(
                str(model), sess_options=options, providers=list(providers or _providers(onnxruntime))
            )
        except Exception as e:  # noqa: BLE001 - onnxruntime reports a bad file as InvalidProtobuf, Fail, InvalidGraph, RuntimeException...
            with open(model, "rb") as f:
                if f.read(40).startswith(b"version https://git-lfs"):
                    raise SabunError(
                        f"{model}: is a Git LFS pointer, not the model; fetch the file itself (git lfs pull) or download it again"
                    ) from None
            raise SabunError(
                f"{model}: could not be loaded by onnxruntime ({_first_line(e)}); it may be truncated or not an ONNX model: copy it again"
            ) from None
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = list(inputs[0].shape) if len(inputs) == 1 else []
        if (
            len(shape) != 4
            or shape[3] != 3
            or not isinstance(shape[1], int)
            or shape[1] != shape[2]
            or inputs[0].type not in ("tensor(float)", "tensor(float16)")
        ):
            found = f"{len(inputs)} inputs" if len(inputs) != 1 else f"{inputs[0].type} {shape}"
            raise SabunError(
                f"{model}: takes {found}, not one square NHWC 3-channel float image ([batch, size, size, 3]) as WD14-style taggers do; "
                "use a WD14-style tagger (SmilingWolf's wd-*-tagger models)"
            )
        if not outputs or len(outputs[0].shape) != 2:
            raise SabunError(
                f"{model}: its first output is not [batch, tags] as a WD14-style tagger's is; use a WD14-style tagger"
            )
        width = outputs[0].shape[1]  # an int, or a name when the model leaves it open (checked on the first images)
        if isinstance(width, int) and width != len(names):
            raise SabunError(
                f"{folder / TAGS_FILE}: lists {len(names)} tags, and {model} gives {width}: the two do not belong together; "
                f"put the {TAGS_FILE} that came with this model beside it"
            )
        batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        return cls(folder, session, names, categories, size=int(shape[1]), batch=batch)

    # --- tags ---

    def index(self, tag: str, what: str = "tag") -> int:
        """The output column of `tag` (any spelling: `blonde hair`, `blonde_hair`)."""
        name = normalise_tag(tag)
        if name not in self._index:
            raise SabunError(
                f"{self.csv_path}: has no tag {name!r} ({what}); this tagger cannot see it: check the spelling against the "
                "CSV's name column, or change the tag"
            )
        return self._index[name]

    def require(self, tags: Iterable[str], what: str = "tag") -> list[int]:
        """The columns of `tags`; the first tag missing from the CSV is an error naming it."""
        return [self.index(t, what) for t in tags]

    # --- images ---

    def preprocess(self, image) -> np.ndarray:
        """One image as the model takes it: (size, size, 3) float32 BGR in 0..255.

        As SmilingWolf's reference code for these models (the `wd-tagger` Space's `prepare_image`)
        prepares an image: transparency composited onto white; padded to a square with white, the
        image centred (an odd pixel of padding going right / bottom); resized with PIL's bicubic
        filter when the square is not the input size; channels reordered RGB -> BGR. (The A1111
        extension's older code pads the same way and resizes with OpenCV's area filter; the tags
        differ little.)
        """
        rgb = _as_rgb(image)
        side = max(rgb.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        if side != self.size:
            square = square.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1]

    def predict(self, images, batch: int = 16) -> np.ndarray:
        """Tag probabilities (N, tags) of N images: uint8 arrays (N, H, W, 3) or a list of PIL images,
        arrays or image paths. Run `batch` images at a time (the model's own batch size if fixed)."""
        items = list(images)
        step = self.batch or max(1, batch)
        input_type = self.session.get_inputs()[0]
        dtype = np.float16 if input_type.type == "tensor(float16)" else np.float32
        out = []
        for start in range(0, len(items), step):
            chunk = np.stack([self.preprocess(im) for im in items[start : start + step]])  # (B, size, size, 3)
            count = len(chunk)
            if self.batch and count < self.batch:  # a fixed-batch model: pad with the last image
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - count, axis=0)])
            try:
                probs = self.session.run(None, {input_type.name: chunk.astype(dtype)})[0]
            except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
                raise SabunError(
                    f"{self.folder / MODEL_FILE}: failed on an image ({_first_line(e)}); check that it is a WD14-style tagger"
                ) from None
            out.append(np.asarray(probs, dtype=np.float32)[:count])
        if not out:
            return np.zeros((0, len(self.names)), dtype=np.float32)
        probs = np.concatenate(out)
        if probs.shape[1] != len(self.names):
            raise SabunError(
                f"{self.csv_path}: lists {len(self.names)} tags, and {self.folder / MODEL_FILE} gives {probs.shape[1]}; put the CSV that came with this model beside it"
            )
        if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
            raise SabunError(
                f"{self.folder / MODEL_FILE}: gives values outside 0..1, not probabilities; a WD14-style tagger ends in a sigmoid: use one"
            )
        return probs


def _as_rgb(image) -> Image.Image:
    """A PIL image, uint8 array (H, W, 3 or 4) or image path as RGB, transparency on white."""
    if isinstance(image, (str, os.PathLike)):
        return open_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise SabunError(
                f"a tagger reads uint8 images (H, W, 3) or (H, W, 4); got an array {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image, "RGB" if image.shape[2] == 3 else "RGBA")
    try:
        return to_rgb(image)
    except Exception as e:  # noqa: BLE001 - to_rgb's reasons for pixels with no 8-bit reading
        raise SabunError(f"an image could not be read as RGB: {e}") from None


# --- the reader ----------------------------------------------------------------------------------


def check_threshold(threshold: float) -> float:
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
        raise SabunError(
            f"--threshold {threshold}: give a probability between 0 and 1 (exclusive), e.g. {DEFAULT_THRESHOLD}"
        )
    return float(threshold)


class TaggerReader:
    """The protocol's reader (`sabun.evaluate.readings.Reader`) for real models: a booru tagger.

    A tag is seen when its probability is at least `threshold`. Identity: one attribute per
    identity tag of the target; backgrounds and poses: the tag map's names whose tags are seen;
    P(3d): the highest probability of the tag map's look tags. No hair colour: a tagger names
    colours, it does not measure them.
    """

    measures_colour = False

    def __init__(self, tagger: Tagger, threshold: float = DEFAULT_THRESHOLD, tag_map: TagMap | None = None):
        self.tagger = tagger
        self.threshold = check_threshold(threshold)
        self.tag_map = tag_map or default_tag_map()
        self.name = f"tagger {tagger.name}"
        self.tagger.require(self.tag_map.all_tags(), f"from {self.tag_map.source}")

    def check(self, target, prompts: Iterable = ()) -> None:
        """Raise before any image is generated if the tagger's CSV lacks one of the target's tags, or
        if one of `prompts` (`sabun.evaluate.metrics.Prompt`) asks for a background or pose that the
        tag map does not name."""
        self.tagger.require(target.tags, f"an identity tag of {target.name}")
        tables = {"background": self.tag_map.backgrounds, "pose": self.tag_map.poses}
        for prompt in prompts:
            table = tables.get(prompt.group)
            if table is not None and prompt.expected not in table:
                raise SabunError(
                    f"[{prompt.group}:{prompt.expected}] {prompt.text}: the tag map ({self.tag_map.source}) names no {prompt.group} "
                    f'{prompt.expected!r} (it has: {", ".join(table)}); add {prompt.group}.{prompt.expected} = ["a_booru_tag"] to the [tags] of a --tag-map file'
                )

    def attributes(self, target) -> list[Attribute]:
        return [Attribute(f"tag:{t}", f'"{t}" seen (1girl)') for t in target.tags]

    def read(self, images: np.ndarray, target) -> Readings:
        """Read uint8 RGB images (N, H, W, 3) against `target` (a `TaggedCharacter`)."""
        return self.readings(self.tagger.predict(images), target)

    def readings(self, probs: np.ndarray, target) -> Readings:
        """Readings from tag probabilities (N, tags), as `Tagger.predict` gives them."""
        seen = probs >= self.threshold

        def names_seen(table: dict[str, tuple[str, ...]]) -> list[frozenset[str]]:
            columns = {name: self.tagger.require(tags) for name, tags in table.items()}
            return [frozenset(n for n, c in columns.items() if row[c].any()) for row in seen]

        return Readings(
            p_3d=probs[:, self.tagger.require(self.tag_map.look)].max(axis=1).astype(np.float64),
            identity={f"tag:{t}": seen[:, self.tagger.index(t)] for t in target.tags},
            backgrounds=names_seen(self.tag_map.backgrounds),
            poses=names_seen(self.tag_map.poses),
            hair_lab=None,
        )
