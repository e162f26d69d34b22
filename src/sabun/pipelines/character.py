"""`sabun character CONFIG.toml`: the stepping-stone method in one command.

Stages, each written under OUT and skipped on a re-run when its inputs have not changed
(`sabun.pipelines.stages`):

1. **data**: the stepping-stone characters and the target, rendered by sabun from toy-world presets
   (`3d` style, every view and zoom) or from 3D model files (`sabun render model` with the `[render]`
   settings, one stage per model keyed by the file's sha256, its tag file and the settings), or
   copied from the user's folders of captioned renders; captions are rewritten by policy where a
   render carries sabun's metadata (NAME.json);
   **coverage**: with 3D models on both sides, the target's hair colour (read from the hair
   materials' pixels of its renders) against each stepping-stone character's in CIE L*a*b*, and its
   hairstyle tags against theirs; a warning when nothing is near (OUT/coverage.json);
2. **stepping-stone LoRA** on the other characters (their features in the captions, so the LoRA holds
   the 3D look);
3. **merge**: the stepping-stone is merged into the model in fp32 by the trainer (`base_weights`),
   its hash recorded in the character LoRA's metadata; `save_merged = true` also writes the merged
   model;
4. **character LoRA** trained on the merged model;
5. **evaluation on the plain model**: on the toy model, the protocol's metrics at each weight beside
   the plain model's own (`metrics.json`, `report.html`); on any model, a sample grid (prompts x
   weights) and the LoRA's weight-change norms.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sabun.avatar.captions import read_tag_file, tags_beside
from sabun.avatar.coverage import Entry, coverage, hair_colour
from sabun.data.dataset import scan_images
from sabun.errors import SabunError
from sabun.evaluate.metrics import Protocol, read_prompts, weight_change_norms
from sabun.evaluate.report import evaluate_at_weights
from sabun.evaluate.tagged_character import TaggedCharacter, load_tagged_character, parse_tags
from sabun.evaluate.tagger import Tagger, TaggerReader, load_tag_map
from sabun.evaluate.toy_evaluator import ToyEvaluator
from sabun.generate import Sampler, applied, generate_images, grid_image
from sabun.io import atomic_output
from sabun.lora.commands import merge
from sabun.models.load import load_pipeline
from sabun.pipelines.data import CAPTION_POLICIES, ModelSource, RenderConfig, check_model_file, model_tags
from sabun.pipelines.recipe import deep_merge, lora_config, toy_recipe
from sabun.pipelines.stages import (  # Stages and lora_inputs: this pipeline's stage runner
    Stages,
    check_finite,
    check_model_path,
    check_multiplier,
    check_timesteps,
    file_hash,
    lora_inputs,  # noqa: F401
    model_key,
    run_stage,
    save_resolved_config,
)
from sabun.toyworld.character import STEPPING_STONE_PRESETS, load_character
from sabun.train.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    check,
    from_dict,
    local_path,
    model_path,
    one_of,
    read_config,
    to_dict,
)


@dataclass
class SteppingStoneConfig:
    """The other characters, in the 3D look, that the stepping-stone LoRA learns from."""

    presets: list[str] | None = (
        None  # toy-world characters rendered by sabun (toy model); default: the five when no folders or models are given
    )
    folders: list[str] = field(default_factory=list)  # your own captioned 3D renders, one folder per character
    models: list[ModelSource] = field(
        default_factory=list
    )  # 3D model files, each rendered by sabun: [{ path = "alice.vrm", tags = "red hair, long hair" }]
    caption_policy: str = (
        "stepping-stone"  # applied to sabun renders (NAME.json beside the image); `keep` leaves captions as they are
    )
    multiplier: float = 1.0  # weight at which it is merged under the character LoRA
    hair_distance: float = (
        15.0  # warn when no stepping-stone character's hair is within this CIEDE2000 of the target's (3D models only)
    )
    train: dict = field(default_factory=dict)  # `sabun train` tables overriding the defaults (e.g. training.max_steps)

    def __post_init__(self) -> None:
        if self.presets is None:
            self.presets = [] if (self.folders or self.models) else list(STEPPING_STONE_PRESETS)
        check(
            bool(self.presets or self.folders or self.models),
            "presets",
            "folders and models are all empty; give the stepping-stone characters",
        )
        one_of(self.caption_policy, "caption_policy", CAPTION_POLICIES)
        check(self.hair_distance > 0, "hair_distance", f"must be > 0, got {self.hair_distance}")


@dataclass
class TargetConfig:
    """The character the final LoRA draws: a toy preset or spec file, a folder of its 3D renders, or its 3D model."""

    preset: str | None = None  # toy-world preset name or character .toml, rendered by sabun (toy model)
    folder: str | None = None  # your own captioned 3D renders of the character
    model: str | None = None  # the character's 3D model file (.vrm, .glb, .gltf), rendered by sabun
    tags: str | None = (
        None  # with `model`: its identity tags (hairstyle...), for the coverage check only; default: NAME.toml beside it
    )
    caption_policy: str = "character"  # applied to sabun renders; `keep` leaves captions as they are
    train: dict = field(default_factory=dict)  # `sabun train` tables overriding the defaults

    def __post_init__(self) -> None:
        given = [k for k in ("preset", "folder", "model") if getattr(self, k) is not None]
        check(
            len(given) == 1,
            "preset",
            f"folder or model: give exactly one of them{f' (got {given[0]} and {given[1]})' if len(given) > 1 else ''}",
        )
        one_of(self.caption_policy, "caption_policy", CAPTION_POLICIES)


@dataclass
class EvaluationConfig:
    """How the character LoRA is judged, always on the plain model."""

    weights: list[float] = field(default_factory=lambda: [0.5, 1.0])  # LoRA weights compared with the plain model (0)
    seeds: int = 16  # images per prompt
    sample_steps: int = 20  # sampling steps
    guidance: float = 5.0  # classifier-free guidance scale
    character: str | None = None  # toy character the evaluator compares with; default: the target preset
    prompts: list[str] = field(
        default_factory=lambda: ["1girl", "1girl, outdoors, sky, grass", "1girl, cowboy shot, arms up"]
    )  # sample grid
    tagger: str | None = None  # a booru tagger folder (model.onnx, selected_tags.csv): the metrics on any model
    identity: str | None = (
        None  # with tagger: the character's identity tags, "tag, tag" or a .toml; default: character.tags / NAME.toml
    )
    tag_map: str | None = None  # with tagger: a TOML [tags] table extending the concept -> tag map
    threshold: float = 0.35  # with tagger: a tag is seen at this probability or above
    protocol_prompts: str | None = (
        None  # a prompt file for the metrics (see docs/evaluation.md); default: the protocol's own
    )

    def __post_init__(self) -> None:
        check(bool(self.weights), "weights", "is empty; give at least one weight, e.g. [1.0]")
        check(self.seeds >= 1, "seeds", f"must be >= 1, got {self.seeds}")
        check(self.sample_steps >= 1, "sample_steps", f"must be >= 1, got {self.sample_steps}")


@dataclass
class CharacterConfig:
    """Everything `sabun character` needs; sections map to TOML tables."""

    character: TargetConfig
    out: str = "sabun-character"  # folder for every stage's output
    model: ModelConfig = field(default_factory=lambda: ModelConfig(path="toy"))
    stepping_stone: SteppingStoneConfig = field(default_factory=SteppingStoneConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    save_merged: bool = False  # also write the model with the stepping-stone merged (OUT/merged.safetensors)

    def __post_init__(self) -> None:
        check(
            not self.model.base_weights,
            "model.base_weights",
            "is set by the pipeline (the stepping-stone); merge other LoRAs into the model first with `sabun merge`",
        )

    @property
    def is_toy(self) -> bool:
        """The toy world's model (or the tiny test model of the same image size)."""
        return self.model.path in ("toy", "tiny")


def load_character_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> CharacterConfig:
    """Read and check a `sabun character` TOML after the `--set KEY=VALUE` overrides; relative
    paths are taken from the file's folder."""
    config = read_config(
        path, CharacterConfig, overrides, example="examples/character_pipeline.toml", build=config_from_dict
    )
    return resolve(config, Path(path).parent)


def config_from_dict(raw: dict) -> CharacterConfig:
    if isinstance(raw.get("model"), dict) and "path" not in raw["model"]:
        raise ConfigError("model.path", "is required: `toy` or the path of your checkpoint")
    config = from_dict(CharacterConfig, raw)
    for where, section in (("stepping_stone", config.stepping_stone), ("character", config.character)):
        train_config(
            config, section.train, [Path("check")], Path("check"), "check", where=f"{where}.train"
        )  # fail at load, not after an hour
    check_numbers(config)
    return config


def resolve(config: CharacterConfig, root: Path) -> CharacterConfig:
    def local(p: str | None) -> str | None:
        return local_path(p, root)

    def maybe_file(p: str | None) -> str | None:  # a preset name stays a name; a .toml is a path
        return local(p) if p and p.endswith(".toml") else p

    model = dataclasses.replace(config.model, path=model_path(config.model.path, root))
    return dataclasses.replace(
        config,
        out=local(config.out),
        model=model,
        stepping_stone=dataclasses.replace(
            config.stepping_stone,
            presets=[maybe_file(p) for p in config.stepping_stone.presets],
            folders=[local(f) for f in config.stepping_stone.folders],
            models=[dataclasses.replace(m, path=local(m.path)) for m in config.stepping_stone.models],
        ),
        character=dataclasses.replace(
            config.character,
            preset=maybe_file(config.character.preset),
            folder=local(config.character.folder),
            model=local(config.character.model),
        ),
        evaluation=dataclasses.replace(
            config.evaluation,
            character=maybe_file(config.evaluation.character),
            tagger=local(config.evaluation.tagger),
            identity=maybe_file(config.evaluation.identity),
            tag_map=local(config.evaluation.tag_map),
            protocol_prompts=local(config.evaluation.protocol_prompts),
        ),
    )


def train_config(
    config: CharacterConfig,
    overrides: dict,
    datasets: list[Path],
    out: Path,
    name: str,
    base_weights: list[Path] = (),
    where: str = "train",
    character: bool = False,
) -> TrainConfig:
    """The `sabun train` config of one LoRA: the toy recipe on the toy model (with the character
    LoRA's own), then the section's `train` table; model, datasets and output are the pipeline's."""
    tables = deep_merge(toy_recipe(character) if config.is_toy else {}, overrides)
    weights = [(p, config.stepping_stone.multiplier) for p in base_weights]
    return lora_config(tables, to_dict(config.model), datasets, out, name, weights, where=where)


# --- the pipeline -------------------------------------------------------------------------------


def run_character(config: CharacterConfig, log: Callable[[str], None] = print, evaluator=None) -> dict:
    """Run every stage (skipping those up to date); returns the report also written to OUT/metrics.json."""
    started = time.time()
    out = Path(config.out)
    stages = Stages(out, log)
    stone, target = config.stepping_stone, config.character
    if (stone.presets or target.preset) and not config.is_toy:
        log(
            "note: toy-world presets are rendered in the toy world's 64 px style; on a real model use folders of your own renders"
        )
    names = stage_names(config)
    tagged = preflight(config)  # every input checked before the first stage runs; the tagger, if any, loaded once
    pipe = load_model(config)
    save_resolved_config(out, "character", config)

    stone_data, stone_models, character_data = data_stages(config, stages, names)
    coverage = check_coverage(config, character_data, stone_models, out, log) if target.model and stone.models else None
    stone_config = train_config(config, stone.train, stone_data, out, "stepping_stone", where="stepping_stone.train")
    stepping_stone = stages.lora("stepping_stone", stone_config, pipe)
    if config.save_merged:
        merged_inputs = {
            "model": to_dict(config.model) | {"path": model_key(config.model.path)},
            "stone": file_hash(stepping_stone),
            "multiplier": stone.multiplier,
        }
        run_stage(out, "merged.safetensors", merged_inputs, lambda p: save_merged(config, stepping_stone, p), log)
    character_config = train_config(config, target.train, [character_data], out, "character", [stepping_stone], where="character.train", character=True)  # fmt: skip
    character = stages.lora("character", character_config, pipe)

    report = evaluate_character(config, pipe, character, out, log, evaluator, tagged)
    if coverage is not None:
        report["coverage"] = coverage
    report["loras"] = {"stepping_stone": str(stepping_stone), "character": str(character)}
    report["seconds"] = time.time() - started
    with atomic_output(out / "metrics.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return report


def load_model(config: CharacterConfig):
    """The model, and both LoRAs' timestep ranges checked against its training timesteps."""
    model = config.model
    pipe = load_pipeline(model.path, allow_pickle=model.allow_pickle, prediction_type=model.prediction_type)
    sections = (("stepping_stone.train", config.stepping_stone.train, False), ("character.train", config.character.train, True))  # fmt: skip
    for where, section, character in sections:
        check = train_config(config, section, [Path("check")], Path(config.out), "check", where=where, character=character)  # fmt: skip
        check_timesteps(check, pipe, where)
    return pipe


def data_stages(config: CharacterConfig, stages: Stages, names: list[str]) -> tuple[list[Path], list[Path], Path]:
    """Every data set: the stepping-stone characters' (presets, folders, then 3D models: all of them,
    and the models' alone) and the target's."""
    stone, target = config.stepping_stone, config.character
    size = config.render.size or (64 if config.is_toy else 768)
    names = list(names)
    stone_data = [stages.toy_data(names.pop(0), p, stone.caption_policy) for p in stone.presets]
    stone_data += [stages.user_data(names.pop(0), f, stone.caption_policy) for f in stone.folders]
    stone_models = [stages.model_data(names.pop(0), m, stone.caption_policy, config.render, size) for m in stone.models]
    if target.preset:
        character_data = stages.toy_data("character", target.preset, target.caption_policy)
    elif target.folder:
        character_data = stages.user_data("character", target.folder, target.caption_policy)
    else:
        source = ModelSource(target.model, target.tags)
        character_data = stages.model_data("character", source, target.caption_policy, config.render, size)
    return stone_data + stone_models, stone_models, character_data


def check_numbers(config: CharacterConfig) -> None:
    """Every number of the config finite and in range (at load, and again before a run)."""
    evaluation = config.evaluation
    check_finite(config, "")
    check_multiplier(config.stepping_stone.multiplier, "stepping_stone.multiplier")
    check(
        0 <= evaluation.threshold <= 1,
        "evaluation.threshold",
        f"must be in [0, 1] (a tag probability), got {evaluation.threshold}",
    )
    check(
        1 <= evaluation.sample_steps <= 1000,
        "evaluation.sample_steps",
        f"must be 1 to 1000 sampling steps, got {evaluation.sample_steps}",
    )
    check(
        0 <= evaluation.guidance <= 100,
        "evaluation.guidance",
        f"must be a guidance scale from 0 to 100 (5-8 is usual), got {evaluation.guidance}",
    )
    check(bool(evaluation.prompts), "evaluation.prompts", 'is empty; give the sample grid\'s prompts, e.g. ["1girl"]')
    for where, section, character in (
        ("stepping_stone.train", config.stepping_stone.train, False),
        ("character.train", config.character.train, True),
    ):
        check_finite(
            train_config(config, section, [Path("check")], Path("check"), "check", where=where, character=character),
            where,
        )


def preflight(config: CharacterConfig) -> tuple | None:
    """Every input of a run checked before its first stage, so a bad one costs no rendering, copying
    or training: every number finite and in range, every path there (the model, the character
    specs, the user's folders, the 3D model files, the evaluation's files), the images of the user's
    folders read by the trainer's own data set check, and the evaluation's tagger and its tags.
    Errors name the config field and the file. Returns the tagger's (reader, character), if any."""
    stone, target, evaluation = config.stepping_stone, config.character, config.evaluation
    check_numbers(config)
    out = Path(config.out)
    check(
        not out.exists() or out.is_dir(),
        "out",
        f"{out}: is a file, and the pipeline writes a folder there; choose another out",
    )
    check_model_path(config.model.path, "model.path", config.model.allow_pickle)
    for i, preset in enumerate(stone.presets):
        check_character_spec(preset, f"stepping_stone.presets[{i}]")
    if target.preset:
        check_character_spec(target.preset, "character.preset")
    if evaluation.character:
        check_character_spec(evaluation.character, "evaluation.character")
    for i, folder in enumerate(stone.folders):
        check_user_folder(config, folder, f"stepping_stone.folders[{i}]", stone.train, False)
    if target.folder:
        check_user_folder(config, target.folder, "character.folder", target.train, True)
    for i, source in enumerate(stone.models):
        check_model_file(source.path, f"stepping_stone.models[{i}].path")
        if stone.caption_policy == "stepping-stone" and not model_tags(source).strip():
            raise ConfigError(
                f"stepping_stone.models[{i}].tags",
                f'{source.path}: has no tags, and the stepping-stone captions name each character\'s features; give tags = "red hair, long hair, ..."',
            )
    if target.model:
        check_model_file(target.model, "character.model")
    return check_evaluation(config)


def check_character_spec(spec: str, where: str) -> None:
    try:
        load_character(spec)
    except SabunError as e:
        raise ConfigError(where, str(e)) from None


def check_user_folder(config: CharacterConfig, folder: str, where: str, section: dict, character: bool) -> None:
    """A folder of the user's, its images and captions read as the trainer will read them."""
    path = Path(folder)
    check(
        path.is_dir(),
        where,
        f"{path}: {'is a file' if path.exists() else 'no such folder'}; give a folder of images with .txt captions",
    )
    table = where.split(".")[0] + ".train"
    train = train_config(config, section, [path], Path(config.out), "check", where=table, character=character)
    try:
        scan_images(train.datasets, train.data)
    except SabunError as e:
        message = str(e).removeprefix("datasets[0].path: ").removeprefix(f"{path}: ")
        message = message.replace("set data.skip_bad_images", f"set {table}.data.skip_bad_images")
        raise ConfigError(where, message if str(path) in message else f"{path}: {message}") from None


def check_evaluation(config: CharacterConfig) -> tuple | None:
    """The evaluation's files: its prompt file, and its tagger with its tags (loaded once, kept for
    the evaluation stage) or, without a tagger, the files given for one."""
    evaluation = config.evaluation
    custom = None
    if evaluation.protocol_prompts:
        try:
            custom = read_prompts(evaluation.protocol_prompts)
        except SabunError as e:
            raise ConfigError("evaluation.protocol_prompts", str(e)) from None
    if evaluation.tagger:
        return tagger_and_identity(config, Protocol(custom=custom))
    for name in ("tag_map", "identity"):
        value = getattr(evaluation, name)
        if value and (name == "tag_map" or value.endswith(".toml")):
            check(
                Path(value).is_file(),
                f"evaluation.{name}",
                f"{value}: no such file; give a .toml file (it is used with evaluation.tagger)",
            )
    return None


def stage_names(config: CharacterConfig) -> list[str]:
    """The data stage of each stepping-stone source, in order: presets, folders, models (one name each)."""
    stone = config.stepping_stone
    stems = (
        [Path(p).stem for p in stone.presets]
        + [Path(f).name for f in stone.folders]
        + [Path(m.path).stem for m in stone.models]
    )
    names = [f"stepping_stone_{stem}" for stem in stems]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            "stepping_stone",
            f"two sources are both named {repeated[0].removeprefix('stepping_stone_')!r}; their renders would share a folder: rename one",
        )
    return names


def check_coverage(config: CharacterConfig, character_data: Path, stone_data: list[Path], out: Path, log) -> dict:
    """The target's hair colour and hairstyle against the stepping-stone characters' (from their
    renders and tags): the table, printed with its warnings, and written to OUT/coverage.json."""
    stone = config.stepping_stone
    target = Entry(
        Path(config.character.model).stem,
        hair_colour(character_data),
        model_tags(ModelSource(config.character.model, config.character.tags)),
    )
    stones = [Entry(Path(m.path).stem, hair_colour(d), model_tags(m)) for m, d in zip(stone.models, stone_data)]
    result = coverage(target, stones, max_distance=stone.hair_distance)
    log("stepping-stone coverage (hair colour in CIE L*a*b*, CIEDE2000 to the target):")
    log(result.table())
    for warning in result.warnings:
        log(f"warning: {warning}")
    record = result.to_dict() | {"table": result.table()}
    with atomic_output(out / "coverage.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return record


def save_merged(config: CharacterConfig, stepping_stone: Path, out: Path) -> None:
    merge(
        config.model.path,
        [f"{stepping_stone}:{config.stepping_stone.multiplier}"],
        out,
        allow_pickle=config.model.allow_pickle,
        prediction_type=config.model.prediction_type,
    )


def tagger_and_identity(config: CharacterConfig, protocol):
    """The booru tagger of `evaluation.tagger` and the character it judges: `evaluation.identity`
    (tags or a .toml), else the target's tags (`character.tags`, or `tags` in NAME.toml beside its model)."""
    evaluation, target = config.evaluation, config.character
    name = Path(target.model or target.folder or target.preset or "character").stem
    if evaluation.identity and evaluation.identity.endswith(".toml"):
        character = load_tagged_character(evaluation.identity)
    else:
        text = evaluation.identity or target.tags
        if text is None and target.model and tags_beside(Path(target.model)).is_file():
            text = read_tag_file(tags_beside(Path(target.model))).get("tags")
        if not text:
            raise SabunError(
                'evaluation.tagger: the tagger needs the character\'s identity tags; set evaluation.identity = "blonde hair, twintails, ..." (or a .toml)'
            )
        character = TaggedCharacter(re.sub(r"[^\w-]", "_", name), parse_tags(text, "evaluation.identity"))
    reader = TaggerReader(
        Tagger.load(evaluation.tagger), threshold=evaluation.threshold, tag_map=load_tag_map(evaluation.tag_map)
    )
    reader.check(character, protocol.prompt_list())
    return reader, character


def evaluate_character(config: CharacterConfig, pipe, lora: Path, out: Path, log, evaluator=None, tagged=None) -> dict:
    """The character LoRA on the plain model at each weight: a sample grid always; the protocol's
    metrics (read by the toy evaluator) on the toy model."""

    evaluation = config.evaluation
    weights = [0.0, *evaluation.weights]
    sampler = Sampler(steps=evaluation.sample_steps, guidance=evaluation.guidance, batch=16)
    report: dict = {
        "model": config.model.path,
        "weights": weights,
        "weight_change_norms": {"character": weight_change_norms(lora)},
    }
    seeds = list(range(1000, 1000 + min(evaluation.seeds, 4)))
    columns = []
    with applied(pipe, [(lora, 1.0)]) as (network,):
        for weight in weights:
            network.multiplier = weight
            log(f"sampling at weight {weight:g}")
            columns.append(
                generate_images(
                    pipe, [p for p in evaluation.prompts for _ in seeds], seeds * len(evaluation.prompts), sampler
                )
            )
    cells = np.stack(columns, axis=1).reshape(len(evaluation.prompts), len(seeds), len(weights), *columns[0].shape[1:])
    cells = cells.transpose(0, 2, 1, 3, 4, 5).reshape(
        len(evaluation.prompts), len(weights) * len(seeds), *columns[0].shape[1:]
    )
    labels = [f"x{w:g}" if s == 0 else "" for w in weights for s in range(len(seeds))]
    with atomic_output(out / "samples.png", overwrite=True) as tmp:
        grid_image(cells, evaluation.prompts, labels).save(tmp, format="PNG")
    report["samples"] = str(out / "samples.png")

    custom = read_prompts(evaluation.protocol_prompts) if evaluation.protocol_prompts else None
    protocol = Protocol(
        seeds=evaluation.seeds,
        sampler=Sampler(steps=evaluation.sample_steps, guidance=evaluation.guidance, batch=32),
        custom=custom,
    )
    if evaluation.tagger:
        reader, target = tagged or tagger_and_identity(config, protocol)
    else:
        toy_character = evaluation.character or config.character.preset
        if not (config.is_toy and toy_character):
            log(
                "no toy character to compare with and no evaluation.tagger: wrote the sample grid and weight-change norms only"
            )
            return report
        reader, target = evaluator or ToyEvaluator.load(), load_character(toy_character)
    conditions = {
        ("plain model" if w == 0.0 else f"character LoRA x{w:g}"): ([(lora, w)] if w else []) for w in weights
    }
    report["character"] = target.to_dict()
    # metrics.json is written by run_character, with the whole report
    evaluate_at_weights(out, pipe, reader, target, protocol, conditions, report, log, metrics_json=False)
    report["report"] = str(out / "report.html")
    return report
