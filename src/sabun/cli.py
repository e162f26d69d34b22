"""The `sabun` command line: parses arguments and calls one library function per command."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sabun.errors import SabunError

app = typer.Typer(
    name="sabun",
    help="Train LoRA adapters for Stable Diffusion by learning differences.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
Force = Annotated[bool, typer.Option("--force", help="Allow a LoRA multiplier beyond +-10.")]
AllowPickle = Annotated[
    bool,
    typer.Option("--allow-pickle", help="Allow .ckpt/.pt pickles (loaded weights-only). Only for files you trust."),
]

# --- toy world commands (sabun render toy, sabun caption) ---

render_app = typer.Typer(help="Render data sets.", no_args_is_help=True)
app.add_typer(render_app, name="render")


@render_app.command("toy")
def render_toy_cmd(
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: NAME.png, NAME.json (metadata), NAME.txt (full caption).")
    ],
    style: Annotated[str, typer.Option("--style", help="anime or 3d.")] = "anime",
    character: Annotated[
        str | None,
        typer.Option(
            "--character",
            help="A preset (target, red_long, green_medium, blue_short, white_ponytail, black_twintails) or a character .toml.",
        ),
    ] = None,
    random: Annotated[
        bool,
        typer.Option(
            "--random", help="A new random character per image (never with the signature ribbon); needs --count."
        ),
    ] = False,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="With --random: never draw this character's look (hair colour, hairstyle, eyes). Default: target.",
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            "--count", help="Number of images, shots drawn from the lists below; default: every combination once."
        ),
    ] = None,
    views: Annotated[
        list[str] | None,
        typer.Option("--views", help="front, side, behind or all; repeat or comma-separate. Default: front,behind."),
    ] = None,
    zooms: Annotated[
        list[str] | None,
        typer.Option("--zooms", help="portrait, upper-body, cowboy-shot, full-body or all. Default: all."),
    ] = None,
    poses: Annotated[
        list[str] | None,
        typer.Option(
            "--poses", help="arms-at-sides, arms-up, hands-on-hips, arms-behind-back or all. Default: arms-at-sides."
        ),
    ] = None,
    backgrounds: Annotated[
        list[str] | None,
        typer.Option(
            "--backgrounds", help="white, grey, blue, pink, yellow, green, outdoor, indoor or all. Default: white."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed: the same options always write the same files.")] = 0,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.")] = 64,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files.")] = False,
) -> None:
    """Render toy-world characters in the anime or 3d style, with metadata and captions."""
    from sabun.toyworld.commands import RenderToyConfig, expand_choices, render_toy
    from sabun.toyworld.geometry import POSES
    from sabun.toyworld.render import BACKGROUNDS, VIEWS, ZOOMS

    # lists left out keep RenderToyConfig's defaults (the method's stepping-stone shots)
    lists = {
        "views": (views, VIEWS),
        "zooms": (zooms, ZOOMS),
        "poses": (poses, POSES),
        "backgrounds": (backgrounds, BACKGROUNDS),
    }
    chosen = {key: expand_choices(values, valid, key) for key, (values, valid) in lists.items() if values}
    config = RenderToyConfig(
        out=out,
        style=style,
        character=character,
        random=random,
        exclude=tuple(exclude) if exclude else None,
        count=count,
        seed=seed,
        size=size,
        overwrite=overwrite,
        **chosen,
    )
    print(f"wrote {len(render_toy(config))} images (.png, .json, .txt) to {out}")


@render_app.command("model")
def render_model_cmd(
    models: Annotated[
        list[Path],
        typer.Argument(
            help='.vrm, .glb or .gltf files; each model\'s tags come from NAME.toml beside it (tags = "red hair, long hair").'
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder: NAME.png, NAME.json (metadata), NAME.txt (caption).")
    ] = None,
    list_only: Annotated[
        bool, typer.Option("--list", help="Print each model's meshes, materials, bones and licence; render nothing.")
    ] = False,
    views: Annotated[
        list[str] | None,
        typer.Option(
            "--views",
            help="front, left, right, behind, front-left, front-right, back-left, back-right or all; repeat or comma-separate. Default: front,behind.",
        ),
    ] = None,
    zooms: Annotated[
        list[str] | None,
        typer.Option("--zooms", help="portrait, upper-body, cowboy-shot, full-body or all. Default: all."),
    ] = None,
    poses: Annotated[
        list[str] | None,
        typer.Option(
            "--poses", help="arms-at-sides, rest, a-pose, arms-up, hands-on-hips or all. Default: arms-at-sides."
        ),
    ] = None,
    style: Annotated[
        str,
        typer.Option(
            "--style", help="toon (MToon shading and outlines), lit (smooth shading: a 3D-render look) or unlit."
        ),
    ] = "toon",
    size: Annotated[int, typer.Option("--size", help="Image side in pixels (512, 768 or 1024 for SD).")] = 768,
    background: Annotated[
        str, typer.Option("--background", help="white, grey, black, transparent or #RRGGBB.")
    ] = "white",
    hide: Annotated[
        list[str] | None,
        typer.Option("--hide", help="Leave out a mesh or node by name (clothes, props); see --list. Repeatable."),
    ] = None,
    tags: Annotated[
        str | None, typer.Option("--tags", help="The character's booru tags, for one model, instead of NAME.toml.")
    ] = None,
    policy: Annotated[
        str, typer.Option("--policy", help="Caption policy of the .txt files: full, stepping-stone or character.")
    ] = "full",
    supersample: Annotated[
        int, typer.Option("--supersample", help="Drawn at this many times the size (plus 4x MSAA), then averaged down.")
    ] = 2,
    author: Annotated[
        bool,
        typer.Option(
            "--author", help="State that you are the model's author (needed when its VRM meta allows only its author)."
        ),
    ] = False,
    sheet: Annotated[
        Path | None,
        typer.Option(
            "--sheet", help="Also write a contact sheet of the shots to this PNG (keep it outside the data set)."
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Render VRM / glTF characters into the method's captioned shots: one camera rule, light and pose for every model."""
    from tqdm import tqdm

    from sabun.avatar.camera import VIEWS, ZOOMS
    from sabun.avatar.commands import RenderModelConfig, contact_sheet, describe, render_models
    from sabun.avatar.gltf import load_avatar
    from sabun.avatar.pose import POSES
    from sabun.io import check_writable
    from sabun.toyworld.commands import expand_choices

    if list_only:
        for path in models:
            typer.echo(describe(load_avatar(path)))
        return
    if out is None:
        raise SabunError("give --out DIR for the renders (or --list to only inspect the models)")
    lists = {"views": (views, VIEWS), "zooms": (zooms, ZOOMS), "poses": (poses, POSES)}
    chosen = {key: expand_choices(values, valid, key) for key, (values, valid) in lists.items() if values}
    config = RenderModelConfig(
        models=tuple(models),
        out=out,
        style=style,
        size=size,
        background=background,
        supersample=supersample,
        hide=tuple(hide or ()),
        tags=tags,
        policy=policy,
        author=author,
        overwrite=overwrite,
        **chosen,
    )
    if sheet is not None:
        check_writable(sheet, overwrite)
    if out.exists() and not out.is_dir():
        raise SabunError(f"{out}: is a file; --out is the folder the renders go into")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # a read-only or full disk fails here, before any rendering
    note = lambda message: typer.echo(message, err=True)  # noqa: E731
    try:
        written = render_models(config, note=note, bar=lambda total: tqdm(total=total, desc="render", unit="img"))
    except BaseException:
        if created and not any(out.iterdir()):  # leave no empty folder behind
            out.rmdir()
        raise
    typer.echo(f"wrote {len(written)} images (.png, .json, .txt) to {out}")
    if sheet is not None:
        typer.echo(f"contact sheet: {contact_sheet(written, sheet, overwrite=overwrite)}")


@app.command("caption")
def caption_cmd(
    folder: Annotated[
        Path,
        typer.Argument(
            help="A folder written by `sabun render toy` / `sabun render model`, or (with --tagger) any folder of images."
        ),
    ],
    policy: Annotated[
        str,
        typer.Option(
            "--policy", help="full, stepping-stone or character (see docs/toyworld.md, docs/render.md, docs/tagger.md)."
        ),
    ] = "full",
    tagger: Annotated[
        Path | None,
        typer.Option(
            "--tagger",
            help="Tag images without render metadata (screenshots) with this booru tagger: a folder with model.onnx and selected_tags.csv.",
        ),
    ] = None,
    tag_map: Annotated[
        Path | None,
        typer.Option("--tag-map", help="With --tagger: a TOML \\[tags] table extending the concept -> tag map."),
    ] = None,
    threshold: Annotated[float, typer.Option(help="With --tagger: keep tags at this probability or above.")] = 0.35,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="With --tagger: replace existing NAME.txt captions.")
    ] = False,
) -> None:
    """Write NAME.txt captions under a caption policy: from NAME.json render metadata, or with --tagger from a booru tagger."""
    if tagger is None:
        from sabun.captions import caption_folder

        print(f"wrote {len(caption_folder(folder, policy))} {policy} captions in {folder}")
        return
    from sabun.captions_tagger import caption_folder_with_tagger
    from sabun.evaluate.tagger import load_tag_map

    written = caption_folder_with_tagger(folder, tagger, policy, threshold, overwrite, tag_map=load_tag_map(tag_map))
    print(f"wrote {len(written)} {policy} captions in {folder} (tagged by {tagger})")


toyworld_app = typer.Typer(help="The embedded toy model: pretraining.", no_args_is_help=True)
app.add_typer(toyworld_app, name="toyworld")


@toyworld_app.command("pretrain")
def toyworld_pretrain_cmd(
    out: Annotated[
        Path, typer.Option("--out", help="Run folder; re-running with the same settings resumes where it stopped.")
    ],
    images: Annotated[int, typer.Option(help="Rendered training images.")] = 16000,
    vae_steps: Annotated[int, typer.Option(help="VAE optimiser steps.")] = 1500,
    steps: Annotated[int, typer.Option(help="U-Net + text encoder optimiser steps.")] = 7000,
    batch: Annotated[int, typer.Option(help="Diffusion batch size.")] = 32,
    three_d_share: Annotated[float, typer.Option(help="Share of 3d-style renders, tagged `3d`.")] = 0.08,
    seed: Annotated[int, typer.Option(help="Seed for data, initial weights and training order.")] = 0,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any other setting: FIELD=VALUE, e.g. lr=3e-4 (see docs/commands.md); repeatable."),
    ] = None,
) -> None:
    """Pretrain the toy model from scratch on rendered toy-world images (see docs/toy_model.md)."""
    from sabun.config import settings
    from sabun.toyworld.pretrain import PretrainConfig, pretrain

    flags = {"images": images, "vae_steps": vae_steps, "steps": steps, "batch": batch}
    config = settings(PretrainConfig, flags | {"three_d_share": three_d_share, "seed": seed}, overrides or ())
    model_dir = pretrain(out, config)
    typer.echo(f"toy model written to {model_dir}")


@toyworld_app.command("check")
def toyworld_check_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for check.json and a labelled sheet of generations.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="The toy model: `toy` or a pretraining run's model folder.")
    ] = "toy",
    count: Annotated[int, typer.Option(help="Generations from prompts with known attributes.")] = 240,
    three_d_count: Annotated[int, typer.Option(help="Generations with the `3d` tag added.")] = 64,
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 25,
    guidance: Annotated[float, typer.Option(help="Guidance scale.")] = 5.0,
    overwrite: Overwrite = False,
) -> None:
    """Measure how often the toy model draws what it is prompted, read by the toy evaluator."""
    import json

    from sabun.evaluate.toy_check import check_model
    from sabun.generate import Sampler

    results = check_model(
        model, out, count, three_d_count, Sampler(steps=steps, guidance=guidance), overwrite=overwrite
    )
    typer.echo(json.dumps(results, indent=2))


@toyworld_app.command("check-vrm")
def toyworld_check_vrm_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for check_vrm.json and renders.png.")],
    count: Annotated[int, typer.Option(help="Random characters besides the six presets.")] = 24,
    seed: Annotated[int, typer.Option(help="Seed of the random characters.")] = 0,
    styles: Annotated[
        str, typer.Option(help="Render styles of the exported models, comma-separated: toon, lit, unlit.")
    ] = "lit,toon",
    overwrite: Overwrite = False,
) -> None:
    """Export toy characters to VRM, render them as `sabun render model` does, and measure how well the toy evaluator reads them."""
    from sabun.avatar.raster import STYLES
    from sabun.evaluate.vrm_check import check_exported, table

    chosen = tuple(s.strip() for s in styles.split(",") if s.strip())
    bad = [s for s in chosen if s not in STYLES]
    if bad or not chosen:
        raise SabunError(f"--styles {styles!r}: choose from {', '.join(STYLES)}")
    results = check_exported(out, count=count, seed=seed, styles=chosen, overwrite=overwrite)
    typer.echo(table(results))
    typer.echo(f"wrote {out / 'check_vrm.json'} and {results['sheet']}")


@toyworld_app.command("export")
def toyworld_export_cmd(
    character: Annotated[
        str,
        typer.Option(
            "--character",
            help="A preset (target, red_long, green_medium, blue_short, white_ponytail, black_twintails) or a character .toml.",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="The model, NAME.vrm (VRM 1.0); its tag file NAME.toml is written beside it.")
    ],
    segments: Annotated[
        int, typer.Option("--segments", help="Tessellation: sectors around a limb (10 -> about 6k triangles).")
    ] = 10,
    overwrite: Overwrite = False,
) -> None:
    """Export a toy-world character as a VRM 1.0 model with its tag file, ready for `sabun render model`."""
    from sabun.avatar.gltf import load_avatar
    from sabun.toyworld.character import load_character
    from sabun.toyworld.export import export_character

    model, tag_file = export_character(load_character(character), out, overwrite=overwrite, segments=segments)
    typer.echo(f"wrote {model} ({load_avatar(model).triangle_count()} triangles) and its tag file {tag_file}")


@toyworld_app.command("train-evaluator")
def toyworld_train_evaluator_cmd(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for evaluator.safetensors, its config and its validation.")
    ],
    vae: Annotated[
        Path | None,
        typer.Option(
            "--vae", help="The toy model's VAE for round-trips: a pretraining run's vae.pt or a diffusers vae folder."
        ),
    ] = None,
    images: Annotated[int, typer.Option(help="Training renders.")] = 12000,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 4000,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 32,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any other setting: FIELD=VALUE, e.g. width=64 (see docs/commands.md); repeatable."),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Train the toy evaluator on renders of both styles and their VAE round-trips."""
    import json

    from sabun.config import settings
    from sabun.evaluate.toy_evaluator import EvaluatorConfig, load_vae, train_evaluator

    config = settings(EvaluatorConfig, {"images": images, "steps": steps, "batch": batch}, overrides or ())
    report = train_evaluator(out, load_vae(vae) if vae else None, config, overwrite=overwrite)
    typer.echo(json.dumps(report, indent=2))


# --- end toy world commands ---

# --- train command (sabun train) ---


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Argument(help="Training config (TOML); see docs/training.md.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: KEY=VALUE, e.g. network.rank=8; repeatable."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Continue from a checkpoint folder, or `latest` (a bare --resume means latest)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output and drop an earlier run's checkpoints.")
    ] = False,
) -> None:
    """Train one LoRA (stepping-stone base_weights are merged into the model first)."""
    from sabun.train import load_config, train

    try:
        result = train(load_config(config, set_ or []), resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    if result.interrupted:
        again = " ".join(
            shlex.quote(part)
            for part in ["sabun", "train", str(config), *[f"--set={item}" for item in set_ or []], "--resume", "latest"]
        )
        print(
            f"stopped at step {result.step}; checkpoint: {result.checkpoint}\ncontinue with: {again}", file=sys.stderr
        )
        raise typer.Exit(130)
    print(
        f"wrote {result.lora_path} ({result.step} steps, final loss {result.losses[-1] if result.losses else float('nan'):.4f}); config: {result.config_path}"
    )


# --- end train command ---

# --- generate command (sabun generate) ---


@app.command("generate")
def generate_cmd(
    model: Annotated[
        str, typer.Option("--model", "-m", help="`toy`, a single-file SD checkpoint, or a diffusers folder.")
    ],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt; repeat for more rows.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output image (.png): one image, or a grid when there are several.")
    ],
    lora: Annotated[list[str] | None, typer.Option("--lora", "-l", help="PATH[:WEIGHT], repeatable.")] = None,
    grid_weights: Annotated[
        str | None,
        typer.Option(
            "--grid-weights", help="Columns of LoRA weights, e.g. 0,0.5,1 (each scales every --lora's weight)."
        ),
    ] = None,
    count: Annotated[int, typer.Option("--count", "-n", help="Images per prompt (seeds SEED, SEED+1, ...).")] = 1,
    seed: Annotated[int, typer.Option(help="First seed.")] = 0,
    steps: Annotated[int, typer.Option(help="Sampling steps (DDIM).")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 5.0,
    negative: Annotated[str, typer.Option(help="Negative prompt.")] = "",
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Generate images, optionally with LoRAs at several weights side by side."""
    from tqdm import tqdm

    from sabun.generate import Sampler, generate_command
    from sabun.lora.commands import parse_multipliers, parse_weighted

    weights = parse_multipliers(grid_weights, "--grid-weights") if grid_weights is not None else None
    loras = [parse_weighted(spec) for spec in lora or []]
    total = len(prompt) * count * len(weights or [1])
    with tqdm(total=total, desc="generate", unit="img", disable=total < 8) as bar:
        path = generate_command(
            model,
            prompt,
            out,
            loras,
            weights,
            count,
            seed,
            Sampler(steps=steps, guidance=guidance, negative=negative),
            overwrite,
            allow_pickle,
            progress=bar.update,
        )
    typer.echo(f"wrote {path}")


# --- end generate command ---

# --- demo and evaluate commands (sabun demo, sabun evaluate) ---


@app.command("demo")
def demo_cmd(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for data, LoRAs, metrics.json and report.html (default sabun-demo, or sabun-demo-vrm with --from-vrm); a re-run skips finished stages.",
        ),
    ] = None,
    character: Annotated[
        list[str] | None,
        typer.Option(
            "--character",
            help="Target: a preset name or a character .toml; repeat for several targets (the stepping-stone is shared).",
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps of each LoRA.")] = 300,
    character_min_timestep: Annotated[
        int,
        typer.Option(help="Character LoRAs train on timesteps >= this (0: all); the stepping-stones always on all."),
    ] = 500,
    seeds: Annotated[int, typer.Option(help="Images per evaluation prompt.")] = 16,
    full: Annotated[
        bool,
        typer.Option("--full", help="Add the ablations: 1-character stone, uncaptioned stone, regularisation images."),
    ] = False,
    from_vrm: Annotated[
        bool,
        typer.Option(
            "--from-vrm",
            help="Export the characters to VRM and train on their `sabun render model` renders (lit style) instead of the toy renderer's.",
        ),
    ] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any other setting: FIELD=VALUE, e.g. rank=16 (see docs/commands.md); repeatable."),
    ] = None,
) -> None:
    """The original article's experiment on the toy model: no plan vs a `3d` tag vs the stepping-stone, measured."""
    from sabun.config import settings
    from sabun.pipelines.demo import DemoConfig, run_demo

    console = Console()
    flags = {"steps": steps, "character_min_timestep": character_min_timestep, "seeds": seeds, "full": full}
    flags |= {"characters": tuple(character or ("target",)), "from_vrm": from_vrm}
    config = settings(DemoConfig, flags, overrides or ())
    out = out or Path("sabun-demo-vrm" if from_vrm else "sabun-demo")
    summary = run_demo(out, config, log=lambda m: console.print(f"[dim]{m}[/dim]"))
    for name, report in summary["targets"].items():
        print_metrics(console, f"sabun demo: {name} (each LoRA alone on the plain toy model)", report)
        console.print(f"report: {out / name / 'report.html'}")
    console.print(f"metrics: {out / 'metrics.json'}   ({summary['seconds']:.0f} s)")


@app.command("character")
def character_cmd(
    config: Annotated[Path, typer.Argument(help="The pipeline's .toml (see examples/character_pipeline.toml).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for every stage's output; default: the config's `out`.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE overriding the config, e.g. character.preset=red_long; repeatable."),
    ] = None,
) -> None:
    """The stepping-stone method in one command: stepping-stone LoRA -> merge -> character LoRA -> evaluation on the plain model."""
    from sabun.pipelines.character import load_character_config, run_character

    console = Console()
    settings = load_character_config(config, [*(set_ or []), *([f"out={out.resolve()}"] if out else [])])
    report = run_character(
        settings, log=lambda m: console.print(m, style="dim", markup=False, highlight=False, soft_wrap=True)
    )
    if "conditions" in report:
        print_metrics(
            console, f"sabun character: {report['character']['name']} (character LoRA on the plain model)", report
        )
    norms = ", ".join(f"{part} {norm:.3f}" for part, norm in report["weight_change_norms"]["character"].items())
    console.print(f"character LoRA: {report['loras']['character']}   weight change ||dW||: {norms}")
    if "coverage" in report:
        console.print("stepping-stone coverage (hair colour in CIE L*a*b*, CIEDE2000 to the target):")
        console.print(report["coverage"]["table"], markup=False, highlight=False, soft_wrap=True)
        for warning in report["coverage"]["warnings"]:
            console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(
        f"samples: {report['samples']}   metrics: {Path(settings.out) / 'metrics.json'}   ({report['seconds']:.0f} s)"
    )


def print_metrics(console, title: str, report: dict) -> None:
    """The metrics table, every condition a column, each figure with its 95 % interval: wider than
    the terminal, it is printed at its own width (lines run on) rather than dropping columns."""
    from rich.measure import Measurement

    from sabun.evaluate.report import rows_of, with_interval

    table = Table(title=title, caption="[95 % interval]: Wilson for rates, bootstrap over images for means and medians")
    table.add_column("metric", min_width=24)
    for condition in report["conditions"]:
        table.add_column(condition, justify="right", no_wrap=True)
    for key, name, better in rows_of(report):
        table.add_row(
            f"{name} {'(lower: better)' if better == 'lower' else '(higher: better)'}",
            *(with_interval(m, key) for m in report["conditions"].values()),
        )
    needed = Measurement.get(console, console.options.update(width=10_000), table).maximum
    width = console.width
    console.width = max(width, min(needed, 400))  # rich caps a print's width at the console's
    try:
        console.print(table, crop=False)
    finally:
        console.width = width
    for claim in report.get("claims", []):
        colour = {"holds": "green", "fails": "red"}.get(claim["verdict"], "yellow")
        console.print(
            f"  [{colour}]{claim['verdict']}[/{colour}]: {claim['claim']} ({claim['figures']})",
            highlight=False,
            soft_wrap=True,
        )


@app.command("evaluate")
def evaluate_cmd(
    lora: Annotated[
        list[str], typer.Option("--lora", "-l", help="PATH[:WEIGHT], repeatable; all are applied together.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.json and report.html.")],
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="`toy`, or with --tagger any model: a checkpoint file or diffusers folder."),
    ] = "toy",
    character: Annotated[
        str,
        typer.Option(
            "--character",
            help="The character the LoRA should draw: a toy preset or character .toml; with --tagger a .toml of its identity tags.",
        ),
    ] = "target",
    weights: Annotated[
        str, typer.Option("--weights", help="Multipliers of the LoRAs to measure at, e.g. 0.5,1.")
    ] = "0.5,1",
    seeds: Annotated[int, typer.Option(help="Images per prompt.")] = 16,
    seed_start: Annotated[int, typer.Option(help="The first seed (images of a prompt use seeds S .. S+N-1).")] = 1000,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help="Prompt file, one per line; \\[bare], \\[background:NAME], \\[pose:NAME] labels say what a line tests (see docs/evaluation.md).",
        ),
    ] = None,
    tagger: Annotated[
        Path | None,
        typer.Option(
            "--tagger", help="Read the images with a booru tagger: a folder with model.onnx and selected_tags.csv."
        ),
    ] = None,
    tag_map: Annotated[
        Path | None,
        typer.Option("--tag-map", help="With --tagger: a TOML \\[tags] table extending the concept -> tag map."),
    ] = None,
    threshold: Annotated[float, typer.Option(help="With --tagger: a tag is seen at this probability or above.")] = 0.35,
    overwrite: Overwrite = False,
) -> None:
    """Measure what LoRAs do: 3D leakage, identity, flexibility, beside the plain model, with 95 % intervals."""
    from sabun.evaluate.commands import evaluate_loras
    from sabun.lora.commands import parse_multipliers, parse_weighted

    scales = parse_multipliers(weights, "--weights")
    report = evaluate_loras(model, [parse_weighted(spec) for spec in lora], scales, character, out, seeds, overwrite,
                            prompts=prompts, seed_start=seed_start, tagger=tagger, tag_map=tag_map, threshold=threshold)  # fmt: skip
    print_metrics(Console(), f"sabun evaluate: {report['character']['name']} (read by the {report['reader']})", report)
    typer.echo(f"report: {out / 'report.html'}   metrics: {out / 'metrics.json'}")


# --- end demo and evaluate commands ---

# --- copy-machine command (sabun copy-machine) ---


@app.command("copy-machine")
def copy_machine_cmd(
    config: Annotated[Path, typer.Argument(help="Pipeline config (TOML); see examples/copy_machine.toml.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: KEY=VALUE, e.g. copy.max_rounds=4; repeatable."),
    ] = None,
) -> None:
    """The copy machine: a copy LoRA on image A, then an edit LoRA on B (the edited A) on top; the edit works on the plain model."""
    from sabun.pipelines.copy_machine import load_copy_machine_config, run_copy_machine, summary

    console = Console()
    report = run_copy_machine(
        load_copy_machine_config(config, set_ or []),
        log=lambda m: console.print(m, style="dim", markup=False, highlight=False),
    )
    title, headers, rows, notes = summary(report)
    if rows:
        table = Table(title=title)
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for note in notes:
        console.print(note, markup=False, highlight=False)


# --- end copy-machine command ---

# --- LoRA core commands (sabun merge, sabun lora ...) ---

lora_app = typer.Typer(help="LoRA arithmetic: combine, extract, resize, inspect.", no_args_is_help=True)
app.add_typer(lora_app, name="lora")
console = Console()

PredictionType = Annotated[
    str | None,
    typer.Option(
        "--prediction-type",
        help="epsilon or v_prediction. Default: what the model states (a v_pred key, metadata, a diffusers scheduler); "
        "SD 2.x files that do not say are tested with one U-Net call; otherwise epsilon.",
    ),
]


def show_model_log() -> None:
    """Print what the model loaders detect (family, prediction type) on stderr, as `sabun: ...` lines."""
    import logging

    logger = logging.getLogger("sabun.models")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("sabun: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def print_approximation(report, title: str) -> None:
    table = Table(title=title, show_lines=False)
    table.add_column("layer")
    table.add_column("rank", justify="right")
    table.add_column("rel. error", justify="right")
    for name, err in report.per_layer.items():
        table.add_row(name, str(report.ranks[name]), f"{err:.2e}")
    console.print(table)
    console.print(
        f"overall relative error ||dW - dW_k|| / ||dW||: {report.overall:.3e} over {len(report.per_layer)} layers"
    )


@app.command("merge")
def merge_cmd(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="`tiny`, a single-file SD 1.x/2.x/SDXL .safetensors checkpoint, or a diffusers folder.",
        ),
    ],
    lora: Annotated[
        list[str], typer.Option("--lora", "-l", help="PATH[:MULTIPLIER], repeatable; multiplier defaults to 1.0.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output: NAME.safetensors for one file in the original layout (as A1111/ComfyUI use), else a diffusers folder.",
        ),
    ],
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
    prediction_type: PredictionType = None,
    force: Force = False,
) -> None:
    """Merge LoRAs into a model's weights (fp32, W += m * up@down * alpha/rank) and save the model."""
    from sabun.lora.commands import merge

    show_model_log()
    changed = merge(
        model, lora, out, overwrite=overwrite, allow_pickle=allow_pickle, prediction_type=prediction_type, force=force
    )
    console.print(f"merged {len(lora)} LoRA(s) into {changed} layers -> {out}")


@lora_app.command("combine")
def combine_cmd(
    loras: Annotated[list[str], typer.Argument(help="PATH[:MULTIPLIER] ... e.g. a.safetensors:1 b.safetensors:-1")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output LoRA (.safetensors).")],
    rank: Annotated[
        int | None, typer.Option(help="Rank per layer after SVD (default: exact, the sum of ranks).")
    ] = None,
    conv_rank: Annotated[int | None, typer.Option(help="Rank for 3x3 conv layers (default: --rank).")] = None,
    energy: Annotated[
        float | None, typer.Option(help="Instead of --rank: keep this share of the spectrum's energy, e.g. 0.99.")
    ] = None,
    concat: Annotated[
        bool, typer.Option("--concat", help="Stack along the rank instead of SVD: exact, ranks add up.")
    ] = False,
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
    force: Force = False,
) -> None:
    """Weighted sum of LoRAs' weight changes, exact (--concat or no rank) or compressed by SVD."""
    from sabun.lora.commands import combine

    report = combine(loras, out, rank, conv_rank, energy, concat, overwrite, allow_pickle, force)
    if report is not None:
        print_approximation(report, "combine: SVD truncation error per layer")
    console.print(f"wrote {out}")


@lora_app.command("extract")
def extract_cmd(
    original: Annotated[
        str,
        typer.Option(
            "--original", help="The model before tuning (`tiny`, a .safetensors checkpoint or a diffusers folder)."
        ),
    ],
    tuned: Annotated[str, typer.Option("--tuned", help="The tuned model, same architecture.")],
    rank: Annotated[int, typer.Option(help="Rank for Linear and 1x1 layers.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output LoRA (.safetensors).")],
    conv_rank: Annotated[
        int | None, typer.Option(help="Rank for 3x3 conv layers (default: leave them out, reported).")
    ] = None,
    unet_only: Annotated[
        bool, typer.Option("--unet-only", help="Leave the text encoder out (its difference is still reported).")
    ] = False,
    method: Annotated[str, typer.Option(help="SVD: `full` (exact) or `randomized` (faster on large layers).")] = "full",
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
    prediction_type: PredictionType = None,
) -> None:
    """Extract a LoRA from the difference of two models (tuned - original) by per-layer SVD."""
    from sabun.lora.commands import extract, extract_notes

    show_model_log()
    report = extract(original, tuned, out, rank, conv_rank, unet_only, method, overwrite, allow_pickle, prediction_type)
    print_approximation(report, "extract: per-layer error")
    for line in extract_notes(report):
        console.print(line)
    console.print(f"wrote {out}")


@lora_app.command("resize")
def resize_cmd(
    lora: Annotated[str, typer.Argument(help="LoRA file to resize.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output LoRA (.safetensors).")],
    rank: Annotated[int | None, typer.Option(help="New rank per layer (never higher than the current one).")] = None,
    energy: Annotated[
        float | None, typer.Option(help="Instead of --rank: keep this share of each layer's energy, e.g. 0.99.")
    ] = None,
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Lower a LoRA's rank by SVD (the best approximation at that rank) and report the error."""
    from sabun.lora.commands import resize

    report = resize(lora, out, rank, energy, overwrite, allow_pickle)
    print_approximation(report, "resize: per-layer error")
    console.print(f"wrote {out}")


@lora_app.command("info")
def info_cmd(
    lora: Annotated[str, typer.Argument(help="LoRA file.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Check that every layer fits this model.")] = None,
    allow_pickle: AllowPickle = False,
) -> None:
    """Layers, ranks, alphas and weight-change norms per block, metadata, and fit to a model."""
    from sabun.lora.commands import info

    show_model_log()
    blocks, metadata, fit = info(lora, model, allow_pickle)
    table = Table(title=f"{lora}")
    for col in ("block", "layers", "rank", "alpha", "||dW||"):
        table.add_column(col, justify="left" if col == "block" else "right")
    fmt = lambda values: ",".join(f"{v:g}" for v in sorted(values))  # noqa: E731
    for b in blocks:
        table.add_row(b.block, str(b.layers), fmt(b.ranks), fmt(b.alphas), f"{b.delta_norm:.4g}")
    console.print(table)
    console.print(f"{sum(b.layers for b in blocks)} layers")
    for key in sorted(metadata):
        value = metadata[key] if len(metadata[key]) <= 120 else metadata[key][:117] + "..."
        console.print(f"  {key} = {value}", markup=False, highlight=False)
    if fit is not None:
        status = "fits" if fit.ok else "does NOT fit"
        console.print(
            f"model {model}: {status}: {len(fit.matched)} layers match, {len(fit.not_in_model)} not in the model, "
            f"{len(fit.shape_mismatch)} shape mismatches, {fit.targets_without_lora} model layers without LoRA"
        )
        for name in fit.not_in_model[:10]:
            console.print(f"  not in model: {name}", markup=False)
        for name, model_shape, lora_shape in fit.shape_mismatch[:10]:
            console.print(f"  shape mismatch: {name}: model {model_shape}, LoRA {lora_shape}", markup=False)
        if not fit.ok:
            raise typer.Exit(1)


# --- end LoRA core commands ---


# --- web app (sabun ui) ---


@app.command("ui")
def ui_cmd(
    host: Annotated[
        str, typer.Option("--host", help="Address to serve on; any but this machine's (127.0.0.1) needs --auth.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = 7860,
    root: Annotated[
        Path,
        typer.Option(
            "--root", help="The only folder the web app reads, writes and serves files in; runs go to ROOT/runs/ui."
        ),
    ] = Path("."),
    auth: Annotated[str | None, typer.Option("--auth", help="USER:PASS: a login for the page.")] = None,
    auth_file: Annotated[
        Path | None,
        typer.Option("--auth-file", help="A file whose first line is USER:PASS (kept off the command line)."),
    ] = None,
) -> None:
    """A local web app (Gradio) over the same functions: a character run, watching runs, results, LoRA tools."""
    from sabun.ui.safety import serve_options

    options = serve_options(host, port, root, auth, auth_file)  # checked before Gradio loads
    try:
        from sabun.ui.app import serve
    except ModuleNotFoundError as e:
        if e.name not in ("gradio", "pandas"):
            raise
        raise SabunError(f'sabun ui needs {e.name}: pip install -e ".[ui]"') from None
    serve(options)


# --- end web app ---


def bare_resume(argv: list[str]) -> list[str]:
    """`sabun train CFG --resume` (no value, as the interrupted run prints it) means `--resume latest`;
    typer's options take a value, so the bare flag is completed here."""
    if len(argv) < 2 or argv[1] != "train":
        return argv
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("latest")
    return out


def main() -> None:
    """Entry point: run the app; input errors become one line on stderr and exit status 2."""
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors
    UsageError, NoArgsIsHelpError = click_errors.UsageError, getattr(click_errors, "NoArgsIsHelpError", ())
    try:
        code = app(args=bare_resume(sys.argv)[1:], prog_name="sabun", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except NoArgsIsHelpError:  # the help was shown
        sys.exit(2)
    except UsageError as e:  # a bad option or argument: one line, with where to look
        where = f"; see `{e.ctx.command_path} --help`" if e.ctx is not None else ""
        print(f"error: {' '.join(e.format_message().split()).rstrip('.')}{where}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except SabunError as e:
        close_progress_bars()
        print(f"error: {destination(str(e))}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # read-only, full disk, permissions, a file where a folder should be: not sabun's bug
        from sabun.errors import os_error_message

        close_progress_bars()
        print(f"error: {destination(os_error_message(e))}", file=sys.stderr)
        sys.exit(2)


def close_progress_bars() -> None:
    """End any progress bar a failed command left open, so the error starts its own line."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


def destination(message: str) -> str:
    """Name the output a failed write was for, not its temporary (`.NAME.tmp-PID-xxxx` -> `NAME`)."""
    import re

    return re.sub(r"\.([^/\\]+?)\.tmp-\d+-[A-Za-z0-9_]+", r"\1", message)
