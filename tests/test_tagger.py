"""The booru tagger as a reader and a captioner, on a tiny ONNX tagger with the real I/O signature.

The tiny model takes NHWC float BGR images (dynamic batch, 32 x 32 x 3), averages each channel
and maps the three means linearly to one sigmoid output per row of its selected_tags.csv, so which
tags fire follows from an image's colour: red fires `3d` and `blonde_hair`, blue `outdoors`, green
`realistic` and `arms_up`, white the render setup's tags (`white_background`, `from_behind`...).
"""

from __future__ import annotations

import csv
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sabun.captions_tagger import caption_folder_with_tagger, caption_tag, tag_caption
from sabun.errors import SabunError
from sabun.evaluate.tagged_character import TaggedCharacter, load_tagged_character
from sabun.evaluate.tagger import Tagger, TaggerReader, _providers, load_tag_map, normalise_tag

onnx = pytest.importorskip("onnx", reason="the tiny tagger is built with onnx (pip install onnx onnxruntime)")
pytest.importorskip("onnxruntime", reason="the tagger runs on onnxruntime (pip install onnxruntime)")
helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto

SIZE = 32
ALWAYS, NEVER = (0, 0, 0, 3), (0, 0, 0, -6)
RED, GREEN, BLUE = (-4, -4, 8, -4), (-4, 8, -4, -4), (8, -4, -4, -4)  # weights on the (b, g, r) means in 0..1, bias
WHITE = (4, 4, 4, -8)
# (name, category, (w_b, w_g, w_r, bias)) per CSV row: logit = w . mean(BGR / 255) + bias
ROWS = [
    ("general", 9, (0, 0, 0, 2)),
    ("sensitive", 9, (0, 0, 0, -4)),
    ("questionable", 9, NEVER),
    ("explicit", 9, NEVER),
    ("1girl", 0, ALWAYS),
    ("solo", 0, (0, 0, 0, 1)),
    ("3d", 0, RED),
    ("realistic", 0, GREEN),
    ("photorealistic", 0, NEVER),
    ("outdoors", 0, BLUE),
    ("indoors", 0, NEVER),
    ("blue_background", 0, BLUE),
    ("pink_background", 0, NEVER),
    ("white_background", 0, WHITE),
    ("simple_background", 0, WHITE),
    ("arms_up", 0, GREEN),
    ("hands_on_hips", 0, NEVER),
    ("arms_at_sides", 0, WHITE),
    ("from_behind", 0, WHITE),
    ("from_side", 0, NEVER),
    ("blonde_hair", 0, RED),
    ("twintails", 0, (0, 0, 0, 2)),
    ("hair_ribbon", 0, NEVER),
    ("blue_eyes", 0, BLUE),
    ("nude", 0, WHITE),
    ("completely_nude", 0, (4, 4, 4, -12)),  # p = 0.5 on white: seen at 0.35, not at 0.6
    ("portrait", 0, NEVER),
    ("upper_body", 0, (4, 4, 4, -9)),
    ("cowboy_shot", 0, RED),
    ("full_body", 0, WHITE),
    ("^_^", 0, WHITE),
    ("looking_at_viewer", 0, (0, 0, 0, 1)),
    ("hatsune_miku", 4, ALWAYS),
]
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def weights(rows=ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(W (3, tags) on the channel means of 0..255 BGR input, bias (tags,))."""
    table = np.array([spec for _, _, spec in rows], dtype=np.float32)
    return (table[:, :3].T / 255.0).astype(np.float32), table[:, 3].copy()


def write_model(path: Path, rows=ROWS, input_shape=("batch", SIZE, SIZE, 3), outputs: int | None = None) -> None:
    """The tiny tagger: NHWC input -> channel means -> linear -> sigmoid, as `predictions_sigmoid`."""
    w, b = weights(rows)
    width = outputs or len(rows)
    w, b = np.resize(w, (3, width)).astype(np.float32), np.resize(b, (width,)).astype(np.float32)
    nchw = input_shape[1] == 3
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input_1:0"], ["means"], axes=[2, 3] if nchw else [1, 2], keepdims=0),
            helper.make_node("MatMul", ["means", "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
        ],
        "tiny_tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [input_shape[0], width])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def write_csv(path: Path, rows=ROWS) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category, _) in enumerate(rows):
            out.writerow([1000 + i, name, category, 5000 - i])


def make_tagger(folder: Path, rows=ROWS, **model) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_model(folder / "model.onnx", rows, **model)
    write_csv(folder / "selected_tags.csv", rows)
    return folder


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory) -> Path:
    return make_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny-tagger")


@pytest.fixture(scope="module")
def tagger(tagger_dir) -> Tagger:
    return Tagger.load(tagger_dir, providers=["CPUExecutionProvider"])


def solid(colour: str, size=(SIZE, SIZE)) -> np.ndarray:
    return np.full((size[1], size[0], 3), COLOURS[colour], dtype=np.uint8)


def expected_probs(images_bgr: np.ndarray, rows=ROWS) -> np.ndarray:
    """The tiny model's forward pass in numpy, on preprocessed (N, H, W, 3) BGR floats."""
    w, b = weights(rows)
    return 1.0 / (1.0 + np.exp(-(images_bgr.mean(axis=(1, 2)) @ w + b)))


def prob(name: str, colour: str) -> float:
    return float(expected_probs(np.array([np.float32(solid(colour))[:, :, ::-1]]))[0, [r[0] for r in ROWS].index(name)])


# --- preprocessing ---------------------------------------------------------------------------------


def reference_preprocess(rgba: np.ndarray, size: int) -> np.ndarray:
    """Composite on white, pad to a square (centred), resize bicubic, flip to BGR: by numpy where it can."""
    alpha = rgba[:, :, 3:].astype(np.float64) / 255.0
    rgb = np.rint(rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    h, w = rgb.shape[:2]
    side = max(h, w)
    square = np.full((side, side, 3), 255, dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = rgb
    if side != size:
        square = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BICUBIC))
    bgr = square[:, :, [2, 1, 0]]
    return bgr.astype(np.float32)


def test_preprocess_matches_reference_on_a_non_square_rgba_image(tagger):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(12, 20, 4), dtype=np.uint8)
    rgba[:, :, 3] = np.where(rng.random((12, 20)) < 0.5, 0, 255)  # binary alpha: compositing is exact
    got = tagger.preprocess(Image.fromarray(rgba, "RGBA"))
    assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, reference_preprocess(rgba, SIZE))
    rgba[:, :, 3] = rng.integers(0, 256, size=(12, 20))  # partial alpha: PIL rounds its own way
    np.testing.assert_allclose(tagger.preprocess(rgba), reference_preprocess(rgba, SIZE), atol=1.0)


def test_preprocess_pads_with_white_centred_and_flips_to_bgr_without_resizing(tagger):
    rgb = np.zeros((20, SIZE, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red in RGB
    got = tagger.preprocess(rgb)
    assert (got[:6] == 255).all() and (got[26:] == 255).all()  # (32 - 20) // 2 = 6 white rows above, 6 below
    np.testing.assert_array_equal(got[6:26, :, 2], 200)  # red is the last channel in BGR
    np.testing.assert_array_equal(got[6:26, :, :2], 0)


def test_predict_follows_the_model_batched(tagger):
    images = np.stack([solid(c) for c in ("red", "green", "blue", "white", "red")])
    probs = tagger.predict(images, batch=2)
    assert probs.shape == (5, len(ROWS))
    np.testing.assert_allclose(probs, tagger.predict(list(images), batch=16), atol=1e-6)
    np.testing.assert_allclose(probs, expected_probs(np.float32(images)[..., ::-1]), atol=1e-5)
    names = tagger.names
    assert (
        probs[0, names.index("blonde_hair")] > 0.9 and probs[2, names.index("blonde_hair")] < 0.1
    )  # BGR: red is read as red


def test_a_fixed_batch_model_is_run_in_its_batch_size(tmp_path):
    tagger = Tagger.load(make_tagger(tmp_path / "fixed", input_shape=(2, SIZE, SIZE, 3)))
    assert tagger.batch == 2
    probs = tagger.predict(np.stack([solid("red"), solid("blue"), solid("white")]))
    assert probs.shape == (3, len(ROWS))
    np.testing.assert_allclose(probs[2], tagger.predict([solid("white")])[0], atol=1e-6)


def test_cuda_first_when_onnxruntime_lists_it():
    fake = types.SimpleNamespace(get_available_providers=lambda: ["CPUExecutionProvider", "CUDAExecutionProvider"])
    assert _providers(fake) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    fake = types.SimpleNamespace(get_available_providers=lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    assert _providers(fake) == ["CPUExecutionProvider"]


# --- bad tagger folders -----------------------------------------------------------------------------


def test_missing_folder_and_model_are_named(tmp_path):
    with pytest.raises(SabunError, match="no such folder"):
        Tagger.load(tmp_path / "nowhere")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "wd-v3.onnx").write_bytes(b"x")
    with pytest.raises(SabunError, match=r"model\.onnx: no such file \(it holds wd-v3\.onnx"):
        Tagger.load(tmp_path / "t")


def test_a_broken_model_is_named(tmp_path):
    folder = make_tagger(tmp_path / "t")
    (folder / "model.onnx").write_bytes(b"this is not an onnx model")
    with pytest.raises(SabunError) as e:
        Tagger.load(folder)
    assert (
        str(folder / "model.onnx") in str(e.value)
        and "could not be loaded" in str(e.value)
        and "\n" not in str(e.value)
    )
    (folder / "model.onnx").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 467000000\n")
    with pytest.raises(SabunError, match=r"model\.onnx: is a Git LFS pointer"):
        Tagger.load(folder)


def test_an_nchw_model_is_refused(tmp_path):
    with pytest.raises(
        SabunError, match=r"model\.onnx: takes tensor\(float\) \['batch', 3, 32, 32\], not one square NHWC"
    ):
        Tagger.load(make_tagger(tmp_path / "t", input_shape=("batch", 3, SIZE, SIZE)))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is not a tagger's tag list"),
        ("id,tag\n1,cat\n", "is not a tagger's tag list"),
        (
            "tag_id,name,category,count\n1,1girl,general,5\n",
            r"selected_tags\.csv:2: a row needs a tag name and a numeric category",
        ),
        ("tag_id,name,category,count\n1,,0,5\n", r"selected_tags\.csv:2: a row needs"),
    ],
)
def test_a_malformed_csv_is_named(tmp_path, text, message):
    folder = make_tagger(tmp_path / "t")
    (folder / "selected_tags.csv").write_text(text, encoding="utf-8")
    with pytest.raises(SabunError, match=message):
        Tagger.load(folder)


def test_a_csv_of_another_model_is_named(tmp_path):
    folder = make_tagger(tmp_path / "t")
    write_csv(folder / "selected_tags.csv", ROWS[:-1])
    with pytest.raises(
        SabunError, match=rf"selected_tags\.csv: lists {len(ROWS) - 1} tags, and .*model\.onnx gives {len(ROWS)}"
    ):
        Tagger.load(folder)
    (folder / "selected_tags.csv").unlink()
    with pytest.raises(SabunError, match=r"selected_tags\.csv: no such file"):
        Tagger.load(folder)


# --- tag map and character spec ---------------------------------------------------------------------


def test_tags_compare_in_underscore_form(tagger):
    assert normalise_tag(" Blonde hair ") == "blonde_hair" == normalise_tag("blonde_hair")
    assert normalise_tag("miku \\(vocaloid\\)") == "miku_(vocaloid)"
    assert tagger.index("blonde hair") == tagger.index("blonde_hair")


def test_tag_map_file_merges_over_the_defaults(tmp_path):
    path = tmp_path / "tags.toml"
    path.write_text(
        '[tags]\noutdoor = ["outdoors", "blue sky"]\n3d = "3d"\nbackground.beach = ["beach"]\n\n[tags.pose]\nsitting = ["sitting"]\n'
    )
    tag_map = load_tag_map(path)
    assert tag_map.backgrounds["outdoor"] == ("outdoors", "blue_sky")
    assert tag_map.backgrounds["indoor"] == ("indoors",)  # untouched defaults stay
    assert tag_map.backgrounds["beach"] == ("beach",) and tag_map.poses["sitting"] == ("sitting",)
    assert tag_map.look == ("3d",)
    assert load_tag_map(None).look == ("3d", "realistic", "photorealistic")


@pytest.mark.parametrize(
    "text, message",
    [
        ('[tags]\nbeach = ["beach"]\n', r"tags\.beach: unknown concept; .*background\.beach"),
        ("[tags]\noutdoor = []\n", r"tags\.outdoor must be a list of tags"),
        ("[tags]\noutdoor = [1]\n", r"tags\.outdoor must be a list of tags"),
        ("[other]\nx = 1\n", r"a tag map holds one \[tags\] table"),
        ("[tags\n", r"is not a readable TOML tag map"),
        ('[tags]\npose.outdoor = ["x"]\n', r"'outdoor' is already a background"),
    ],
)
def test_bad_tag_map_files_are_named(tmp_path, text, message):
    path = tmp_path / "tags.toml"
    path.write_text(text)
    with pytest.raises(SabunError, match=message) as e:
        load_tag_map(path)
    assert str(path) in str(e.value)


def test_a_map_tag_missing_from_the_csv_is_named(tmp_path):
    rows = [r for r in ROWS if r[0] != "photorealistic"]
    tagger = Tagger.load(make_tagger(tmp_path / "t", rows))
    with pytest.raises(SabunError) as e:
        TaggerReader(tagger)
    assert "'photorealistic'" in str(e.value) and str(tmp_path / "t" / "selected_tags.csv") in str(e.value)
    path = tmp_path / "tags.toml"
    path.write_text('[tags]\n3d = ["3d", "realistic"]\n')
    TaggerReader(tagger, tag_map=load_tag_map(path))  # mapped away: fine


def test_character_spec(tmp_path):
    path = tmp_path / "mychar.toml"
    path.write_text(
        'name = "mychar"\ntags = "blonde hair, twintails, hair ribbon, blue eyes, Blonde_hair"\nhair_colour = "#e8b860"\n'
    )
    character = load_tagged_character(path)
    assert character == TaggedCharacter(
        "mychar", ("blonde_hair", "twintails", "hair_ribbon", "blue_eyes"), (0xE8, 0xB8, 0x60)
    )
    assert character.to_dict() == {
        "name": "mychar",
        "tags": ["blonde_hair", "twintails", "hair_ribbon", "blue_eyes"],
        "hair_colour": "#e8b860",
    }
    path.write_text('tags = ["blonde hair"]\n')
    assert load_tagged_character(path) == TaggedCharacter("mychar", ("blonde_hair",), None)


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "no such character file"),
        ("tags = [", "is not a readable TOML file"),
        ('name = "x"\n', "has no tags"),
        ('tags = " , "\n', "tags is empty"),
        ("tags = 3\n", "tags must be a string"),
        ('tags = "a"\nhair_colour = "#12345"\n', "hair_colour = '#12345' is not a colour"),
        ('tags = "a"\nhairstyle = "long"\n', "unknown key 'hairstyle'"),
        ('name = "my char"\ntags = "a"\n', "is not file-safe"),
    ],
)
def test_bad_character_specs_are_named(tmp_path, text, message):
    path = tmp_path / "c.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SabunError, match=message) as e:
        load_tagged_character(path)
    assert str(path) in str(e.value)


# --- the reader --------------------------------------------------------------------------------------

TARGET = TaggedCharacter("mychar", ("blonde_hair", "twintails", "hair_ribbon"))


def test_reader_readings(tagger):
    reader = TaggerReader(tagger)
    assert reader.name == "tagger wd-tiny-tagger" and reader.measures_colour is False
    assert [(a.key, a.title) for a in reader.attributes(TARGET)] == [
        ("tag:blonde_hair", '"blonde_hair" seen (1girl)'),
        ("tag:twintails", '"twintails" seen (1girl)'),
        ("tag:hair_ribbon", '"hair_ribbon" seen (1girl)'),
    ]
    readings = reader.read(np.stack([solid(c) for c in ("red", "green", "blue", "white")]), TARGET)
    assert len(readings) == 4 and readings.hair_lab is None
    look = ("3d", "realistic", "photorealistic")
    np.testing.assert_allclose(
        readings.p_3d, [max(prob(t, c) for t in look) for c in ("red", "green", "blue", "white")], atol=1e-6
    )
    assert readings.p_3d[0] == pytest.approx(prob("3d", "red"), abs=1e-6) and readings.p_3d[1] == pytest.approx(
        prob("realistic", "green"), abs=1e-6
    )
    assert readings.identity["tag:blonde_hair"].tolist() == [True, False, False, False]
    assert readings.identity["tag:twintails"].tolist() == [True] * 4
    assert readings.identity["tag:hair_ribbon"].tolist() == [False] * 4
    assert readings.backgrounds == [frozenset(), frozenset(), frozenset({"outdoor", "blue"}), frozenset({"white"})]
    assert readings.poses == [frozenset(), frozenset({"arms-up"}), frozenset(), frozenset()]


def test_reader_threshold(tagger):
    probs = tagger.predict([solid("white")])
    at = {
        t: TaggerReader(tagger, threshold=t).readings(probs, TaggedCharacter("c", ("completely_nude",)))
        for t in (0.35, 0.6)
    }
    assert at[0.35].identity["tag:completely_nude"].tolist() == [True]  # p = 0.5
    assert at[0.6].identity["tag:completely_nude"].tolist() == [False]
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(SabunError, match="--threshold"):
            TaggerReader(tagger, threshold=bad)


def test_an_identity_tag_missing_from_the_csv_is_named(tagger):
    with pytest.raises(SabunError, match=r"selected_tags\.csv: has no tag 'cat_ears' \(an identity tag of c\)"):
        TaggerReader(tagger).check(TaggedCharacter("c", ("blonde_hair", "cat_ears")))


def test_a_prompt_for_an_unmapped_background_is_named(tagger):
    from sabun.evaluate.metrics import Prompt

    reader = TaggerReader(tagger)
    reader.check(TARGET, [Prompt("background", "outdoor", "1girl, outdoors"), Prompt("free", "", "1girl, smile")])
    with pytest.raises(
        SabunError,
        match=r"\[background:beach\] 1girl, beach: the tag map .* names no background 'beach'.*background\.beach = ",
    ):
        reader.check(TARGET, [Prompt("background", "beach", "1girl, beach")])


def test_a_hugging_face_snapshot_is_named_by_its_model(tmp_path):
    folder = make_tagger(tmp_path / "hub" / "models--SmilingWolf--wd-vit-tagger-v3" / "snapshots" / "0123abcd")
    assert TaggerReader(Tagger.load(folder)).name == "tagger wd-vit-tagger-v3"


def test_the_protocol_scores_tagger_readings(tagger):
    from sabun.evaluate.metrics import Prompt, score

    reader = TaggerReader(tagger)
    prompts = [
        Prompt("bare", "", "1girl"),
        Prompt("bare", "", "1girl"),
        Prompt("background", "outdoor", "1girl, outdoors"),
        Prompt("pose", "arms-up", "1girl, arms up"),
    ]
    readings = reader.read(np.stack([solid(c) for c in ("red", "white", "blue", "green")]), TARGET)
    metrics = score(readings, prompts, reader, TARGET)
    assert metrics["tag:blonde_hair"] == 0.5 and metrics["tag:twintails"] == 1.0 and metrics["tag:hair_ribbon"] == 0.0
    assert metrics["background_obeyed"] == 1.0 and metrics["pose_obeyed"] == 1.0
    assert "hair_ciede2000" not in metrics


# --- captions ----------------------------------------------------------------------------------------


def test_caption_policies_on_tag_probabilities(tagger):
    white, red = tagger.predict([solid("white"), solid("red")])
    full = tag_caption(white, tagger, "full")
    # most probable first (p 0.982 in CSV order, then 0.953, ...); no rating, no character tag
    assert full == (
        "white background, simple background, arms at sides, from behind, nude, full body, ^_^, 1girl, upper body, "
        "twintails, solo, looking at viewer, completely nude"
    )
    assert (
        tag_caption(white, tagger, "stepping-stone")
        == "from behind, nude, full body, ^_^, 1girl, upper body, twintails, solo, looking at viewer, completely nude"
    )
    assert (
        tag_caption(white, tagger, "character")
        == "nude, completely nude, arms at sides, full body, from behind, white background"
    )
    assert (
        tag_caption(white, tagger, "character", threshold=0.6)
        == "nude, arms at sides, full body, from behind, white background"
    )
    assert tag_caption(red, tagger, "full") == "3d, blonde hair, cowboy shot, 1girl, twintails, solo, looking at viewer"
    assert "3d" not in tag_caption(red, tagger, "stepping-stone").split(", ")
    assert tag_caption(red, tagger, "character") == "cowboy shot"
    assert caption_tag("^_^") == "^_^" and caption_tag("hands_on_hips") == "hands on hips"


def write_images(folder: Path) -> None:
    folder.mkdir()
    Image.fromarray(solid("white", (40, 40))).save(folder / "a_white.png")
    Image.fromarray(solid("red", (48, 48))).save(folder / "b_red.jpg", quality=100)
    rgba = np.zeros((30, 30, 4), dtype=np.uint8)  # fully transparent: white once composited
    Image.fromarray(rgba, "RGBA").save(folder / "c_clear.png")
    Image.fromarray(solid("blue")).save(folder / "d_render.png")
    (folder / "d_render.json").write_text("{}")
    (folder / "notes.md").write_text("not an image")


def test_caption_folder_by_each_policy(tmp_path, tagger_dir):
    folder = tmp_path / "shots"
    write_images(folder)
    logged = []
    written = caption_folder_with_tagger(folder, tagger_dir, "character", log=logged.append)
    assert [p.name for p in written] == ["a_white.txt", "b_red.txt", "c_clear.txt"]
    assert not (folder / "d_render.txt").exists() and "skipped 1 images with render metadata" in logged[0]
    character = "nude, completely nude, arms at sides, full body, from behind, white background\n"
    assert (folder / "a_white.txt").read_text() == character == (folder / "c_clear.txt").read_text()
    assert (folder / "b_red.txt").read_text() == "cowboy shot\n"
    for policy in ("full", "stepping-stone"):
        caption_folder_with_tagger(folder, tagger_dir, policy, overwrite=True, log=None)
        white = (folder / "a_white.txt").read_text().strip().split(", ")
        assert (
            ("white background" in white) == (policy == "full")
            and "from behind" in white
            and "hatsune miku" not in white
        )
        red = (folder / "b_red.txt").read_text().strip().split(", ")
        assert ("3d" in red) == (policy == "full") and "blonde hair" in red


def test_caption_folder_never_overwrites_without_the_flag(tmp_path, tagger_dir):
    folder = tmp_path / "shots"
    write_images(folder)
    (folder / "b_red.txt").write_text("my own caption\n")
    with pytest.raises(SabunError, match=r"b_red\.txt: already exists; pass --overwrite"):
        caption_folder_with_tagger(folder, tagger_dir, "full", log=None)
    assert not (folder / "a_white.txt").exists() and (folder / "b_red.txt").read_text() == "my own caption\n"
    caption_folder_with_tagger(folder, tagger_dir, "full", overwrite=True, log=None)
    assert (folder / "b_red.txt").read_text().startswith("3d, blonde hair, cowboy shot, 1girl")


def test_caption_folder_errors(tmp_path, tagger_dir):
    folder = tmp_path / "shots"
    write_images(folder)
    with pytest.raises(SabunError, match="--policy 'nice' is not valid"):
        caption_folder_with_tagger(folder, tagger_dir, "nice")
    with pytest.raises(SabunError, match="no such folder"):
        caption_folder_with_tagger(tmp_path / "none", tagger_dir, "full")
    (folder / "e_broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(SabunError, match=r"e_broken\.png: unreadable"):
        caption_folder_with_tagger(folder, tagger_dir, "full", log=None)
    assert not list(folder.glob("*.txt"))  # nothing written before every image was read
    rendered = tmp_path / "renders"
    rendered.mkdir()
    Image.fromarray(solid("red")).save(rendered / "r.png")
    (rendered / "r.json").write_text("{}")
    with pytest.raises(SabunError, match=r"its 1 images have render metadata: caption them with `sabun caption"):
        caption_folder_with_tagger(rendered, tagger_dir, "full")


# --- the commands -----------------------------------------------------------------------------------


def test_evaluate_with_a_tagger_on_the_tiny_pipeline_writes_metrics_with_intervals(tiny_pipe, tagger_dir, tmp_path):
    import json

    from conftest import random_lora

    from sabun.evaluate.commands import evaluate_loras
    from sabun.lora.file import save_lora

    lora = save_lora(random_lora(tiny_pipe, rank=2, seed=4), tmp_path / "l.safetensors")
    spec = tmp_path / "mychar.toml"
    spec.write_text('name = "mychar"\ntags = "blonde hair, twintails"\n', encoding="utf-8")
    prompts = tmp_path / "prompts.txt"  # two prompts, two seeds: the tiny pipeline draws 256 px images slowly
    prompts.write_text("[bare] 1girl\n[pose:arms-up] 1girl, arms up\n", encoding="utf-8")
    report = evaluate_loras(
        "tiny", [(str(lora), 1.0)], [1.0], str(spec), tmp_path / "eval", seeds=2, tagger=tagger_dir, prompts=prompts
    )
    written = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert written["reader"].startswith("tagger")
    keys = [row[0] for row in written["metrics"]]
    assert keys == ["3d_leakage", "tag:blonde_hair", "tag:twintails", "pose_obeyed"]  # no CIEDE2000 from a tagger
    for metrics in report["conditions"].values():
        for key in keys:
            low, high = metrics["intervals"][key]
            assert 0.0 <= low <= metrics[key] <= high <= 1.0, key
        assert metrics["tag:twintails"] == 1.0  # the tiny tagger always sees twintails (logit 2 > threshold)
    assert "tagger" in (tmp_path / "eval/report.html").read_text()


def test_evaluate_names_a_prompt_the_tag_map_cannot_read(tiny_pipe, tagger_dir, tmp_path):
    from sabun.evaluate.commands import evaluate_loras

    spec = tmp_path / "mychar.toml"
    spec.write_text('tags = "blonde hair"\n', encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("[background:beach] 1girl, beach\n", encoding="utf-8")
    with pytest.raises(SabunError, match="beach"):
        evaluate_loras(
            "tiny",
            [("x.safetensors", 1.0)],
            [1.0],
            str(spec),
            tmp_path / "eval",
            seeds=1,
            tagger=tagger_dir,
            prompts=prompts,
        )
    assert not (tmp_path / "eval").exists()


def test_caption_command_with_a_tagger(tagger_dir, tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "shots"
    folder.mkdir()
    Image.fromarray(solid("white")).save(folder / "a.png")
    Image.fromarray(solid("red")).save(folder / "b.png")
    run = subprocess.run([sys.executable, "-m", "sabun", "caption", str(folder), "--tagger", str(tagger_dir), "--policy", "character"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "wrote 2 character captions" in run.stdout
    assert "white background" in (folder / "a.txt").read_text()
    again = subprocess.run(
        [sys.executable, "-m", "sabun", "caption", str(folder), "--tagger", str(tagger_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "a.txt" in again.stderr, again.stderr
