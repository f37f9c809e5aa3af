import io
import json
import tarfile

import pytest
import torch
import typer
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from typer.testing import CliRunner

from curate.errors import CurateError
from curate.evaluate import (
    EvalConfig,
    EvalSet,
    class_embeddings,
    evaluate,
    read_eval_set,
    retrieval_metrics,
    run_eval,
    write_eval_set,
    zeroshot_metrics,
)
from curate.models import ImageTextModel, load_model, save_checkpoint
from curate.shards.writer import add_tar_member
from curate_cli.evaluate import evaluate_command

# ------------------------------------------------------------------------------ a model with known answers

COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 160, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 128),
    "orange": (255, 140, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
NAMES = list(COLOURS)


class ColourTowers(torch.nn.Module):
    """Two towers with known embeddings: an image is the one-hot of its nearest palette colour, a text the
    count of each colour word among its tokens, with the text axes permuted by `text_axes`."""

    def __init__(self, text_axes: list[int]):
        super().__init__()
        tokenizer = SimpleTokenizer()
        self.register_buffer("palette", torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255)
        self.register_buffer("words", torch.tensor([tokenizer.encoder[f"{name}</w>"] for name in NAMES]))
        self.register_buffer("text_axes", torch.tensor(text_axes))
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))
        self.visual = torch.nn.Module()
        self.visual.image_size = 8

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        distance = torch.cdist(images.float().mean((2, 3)), self.palette)
        return torch.nn.functional.one_hot(distance.argmin(1), len(NAMES)).float()

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        counts = (tokens[:, :, None] == self.words).sum(1).float()
        return counts[:, self.text_axes]


def colour_model(text_axes: list[int] | None = None) -> ImageTextModel:
    return ImageTextModel(
        module=ColourTowers(text_axes if text_axes is not None else list(range(len(NAMES)))).eval(),
        preprocess=lambda image: pil_to_tensor(image.resize((8, 8))).float() / 255,
        tokenizer=SimpleTokenizer(),
        name="colour-towers",
        pretrained="",
        open_clip_name="",
        config={"embed_dim": len(NAMES)},
    )


def png(rgb: tuple[int, int, int], size: int = 8, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format=fmt)
    return buffer.getvalue()


def shade(rgb, delta):
    return tuple(max(0, min(255, c + delta)) for c in rgb)


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory) -> str:
    """Two shades of each colour; both images of a colour share the caption "a red thing" (duplicates)."""
    folder = str(tmp_path_factory.mktemp("colours") / "eval")
    images, labels, captions = [], [], []
    for label, (name, rgb) in enumerate(COLOURS.items()):
        for delta in (0, -20):
            images.append(png(shade(rgb, delta)))
            labels.append(label)
            captions.append(f"a {name} thing")
    write_eval_set(folder, images, labels, captions, NAMES, ["a photo of a {c}.", "a {c} {c} object."])
    return folder


def test_matching_towers_score_everything_right(colour_set):
    metrics = evaluate(colour_model(), colour_set, batch_size=5)
    for key in ("zeroshot_top1", "zeroshot_top5", "zeroshot_mean_per_class_recall"):
        assert metrics[key] == 1.0, key
    # Both images of a colour have the same caption: R@1 = 1 only because identical captions are one
    # candidate, positive for both images (ranking by copies would leave ties to chance).
    for key in ("image_to_text_r1", "image_to_text_r5", "text_to_image_r1", "text_to_image_r5"):
        assert metrics[key] == 1.0, key
    assert (metrics["images"], metrics["classes"], metrics["templates"]) == (16, 8, 2)
    assert (metrics["captions"], metrics["distinct_captions"]) == (16, 8)


def test_swapping_two_text_axes_costs_exactly_those_classes(colour_set):
    swapped = [1, 0, *range(2, len(NAMES))]  # "red" texts land on green images and vice versa
    metrics = evaluate(colour_model(swapped), colour_set, batch_size=5)
    assert metrics["zeroshot_top1"] == 12 / 16
    assert metrics["zeroshot_mean_per_class_recall"] == 6 / 8
    assert metrics["image_to_text_r1"] == 12 / 16
    assert metrics["text_to_image_r1"] == 12 / 16
    reversed_axes = list(reversed(range(len(NAMES))))  # no colour keeps its own axis
    assert evaluate(colour_model(reversed_axes), colour_set)["zeroshot_top1"] == 0.0


def counting(preprocess, calls: list):
    def counted(image):
        calls.append(image.mode)
        return preprocess(image)

    return counted


def test_a_set_loaded_with_a_preprocess_decodes_once_and_one_without_streams(colour_set):
    calls: list[str] = []
    model = colour_model()
    bound = EvalSet.load(colour_set, preprocess=counting(model.preprocess, calls))
    assert len(calls) == 16 and set(calls) == {"RGB"} and bound.decoded.shape == (16, 3, 8, 8)
    first, second = evaluate(model, bound), evaluate(model, bound)
    assert len(calls) == 16 and first == second and first["zeroshot_top1"] == 1.0

    streamed = EvalSet.load(colour_set)
    assert streamed.decoded is None
    counted = colour_model()
    counted.preprocess = counting(counted.preprocess, calls)
    assert evaluate(counted, streamed) == evaluate(counted, streamed) == first
    assert len(calls) == 16 + 2 * 16 and streamed.decoded is None  # decoded by each evaluation, not kept

    calls.clear()
    too_big = EvalSet.load(colour_set, preprocess=counting(model.preprocess, calls), cache_bytes=1)
    assert too_big.decoded is None and len(calls) == 16  # still decoded at load: a broken set fails there
    assert evaluate(model, too_big) == first and len(calls) == 32  # again, with the preprocess it was given


# ------------------------------------------------------------------------------ clip_benchmark layouts


def write_tar(path, samples: list[dict[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for index, members in enumerate(samples):
            for ext, data in members.items():
                add_tar_member(tar, f"s{index:07d}.{ext}", data)


def test_clip_benchmark_classification_set_with_several_tars_and_formats(tmp_path):
    root = tmp_path / "wds_colours"
    tars = {"0.tar": ("red", "green"), "1.tar": ("blue", "yellow"), "2.tar": ("purple", "orange")}
    for (name, colours), fmt in zip(tars.items(), ("WEBP", "JPEG", "PNG"), strict=True):
        ext = {"WEBP": "webp", "JPEG": "jpg", "PNG": "png"}[fmt]
        write_tar(
            root / "test" / name,
            [{ext: png(COLOURS[c], fmt=fmt), "cls": str(NAMES.index(c)).encode()} for c in colours],
        )
    (root / "test/nshards.txt").write_text("3\n")
    (root / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n\na {c} picture.\n")
    metrics = evaluate(colour_model(), str(root))
    assert (metrics["zeroshot_top1"], metrics["images"], metrics["templates"]) == (1.0, 6, 2)
    assert "image_to_text_r1" not in metrics and "captions" not in metrics  # no .txt: no retrieval

    (root / "test/nshards.txt").write_text("4\n")
    with pytest.raises(CurateError, match="3.tar"):
        read_eval_set(str(root))


def test_clip_benchmark_retrieval_set_with_several_captions_per_image(tmp_path):
    root = tmp_path / "wds_retrieval"
    colours = NAMES[:6]
    samples = [
        {"jpg": png(COLOURS[c], fmt="JPEG"), "txt": f"a {c} thing\nthe {c} one\n".encode()} for c in colours
    ]
    write_tar(root / "test/0.tar", samples[:4])
    write_tar(root / "test/1.tar", samples[4:])
    (root / "dataset_type.txt").write_text("retrieval\n")
    metrics = evaluate(colour_model(), str(root))
    assert not any(key.startswith("zeroshot") for key in metrics)
    assert metrics["image_to_text_r1"] == metrics["text_to_image_r1"] == 1.0
    assert (metrics["images"], metrics["captions"]) == (6, 12)
    swapped = evaluate(colour_model([1, 0, *range(2, len(NAMES))]), str(root))
    assert swapped["image_to_text_r1"] == 4 / 6  # red and green images find the other's captions first
    assert swapped["text_to_image_r1"] == 8 / 12  # 4 of the 12 captions find the wrong image


def test_tars_are_read_in_natural_order_and_bad_samples_are_counted(tmp_path):
    root = tmp_path / "eval"
    write_tar(root / "test/10.tar", [{"png": png(COLOURS["blue"]), "cls": b"2"}])
    write_tar(
        root / "test/2.tar", [{"png": png(COLOURS["red"]), "cls": b"0"}, {"png": b"not a png", "cls": b"1"}]
    )
    write_tar(
        root / "test/3.tar", [{"png": png(COLOURS["green"])}, {"png": png(COLOURS["green"]), "cls": b"x"}]
    )
    (root / "classnames.txt").write_text("\n".join(NAMES))
    (root / "zeroshot_classification_templates.txt").write_text("{c}")
    raw = read_eval_set(str(root))
    assert [s.label for s in raw.samples] == [0, 2]  # 2.tar before 10.tar
    assert raw.skipped == {"undecodable_image": 1, "missing_label": 1, "bad_label": 1}


# ------------------------------------------------------------------------ fast paths and their slow twins


def naive_recall(image_emb, text_emb, captions, k):
    """Flattened captions, one query per caption; a hit is any text with a matching string in the top k
    of the distinct strings, ranked by similarity."""
    strings = list(dict.fromkeys(c for caps in captions for c in caps))
    i2t = 0
    for i, caps in enumerate(captions):
        order = sorted(range(len(strings)), key=lambda t: -float(image_emb[i] @ text_emb[t]))
        i2t += any(strings[t] in caps for t in order[:k])
    t2i, total = 0, 0
    for caps in captions:
        for caption in caps:
            t = strings.index(caption)
            order = sorted(range(len(captions)), key=lambda i: -float(text_emb[t] @ image_emb[i]))
            t2i += any(caption in captions[i] for i in order[:k])
            total += 1
    return i2t / len(captions), t2i / total


def test_chunked_retrieval_matches_the_naive_definition():
    generator = torch.Generator().manual_seed(0)
    pool = [f"caption {i}" for i in range(9)]
    captions = [
        tuple(dict.fromkeys(pool[int(j)] for j in torch.randint(0, 9, (1 + i % 3,), generator=generator)))
        for i in range(23)
    ]
    strings = list(dict.fromkeys(c for caps in captions for c in caps))
    image_emb = torch.nn.functional.normalize(torch.randn(23, 6, generator=generator), dim=-1)
    text_emb = torch.nn.functional.normalize(torch.randn(len(strings), 6, generator=generator), dim=-1)
    pairs = torch.tensor(sorted({(i, strings.index(c)) for i, caps in enumerate(captions) for c in caps}))
    weights = torch.tensor([sum(caps.count(s) for caps in captions) for s in strings], dtype=torch.float32)
    metrics = retrieval_metrics(image_emb, text_emb, pairs, weights, ks=(1, 3, 5), chunk=4)
    for k in (1, 3, 5):
        i2t, t2i = naive_recall(image_emb, text_emb, captions, k)
        assert metrics[f"image_to_text_r{k}"] == pytest.approx(i2t)
        assert metrics[f"text_to_image_r{k}"] == pytest.approx(t2i)
    assert metrics["image_to_text_r5"] > metrics["image_to_text_r1"]  # the test is not vacuous


def test_chunked_zeroshot_matches_the_naive_definition():
    generator = torch.Generator().manual_seed(1)
    image_emb = torch.nn.functional.normalize(torch.randn(37, 8, generator=generator), dim=-1)
    class_emb = torch.nn.functional.normalize(torch.randn(7, 8, generator=generator), dim=-1)
    labels = torch.randint(0, 7, (37,), generator=generator)
    metrics = zeroshot_metrics(image_emb, class_emb, labels, ks=(1, 5), chunk=5)
    rows = [image_emb[i] @ class_emb.T for i in range(37)]
    ranks = [(row > row[label]).sum() for row, label in zip(rows, labels, strict=True)]  # classes ahead
    assert metrics["zeroshot_top1"] == pytest.approx(sum(int(r) < 1 for r in ranks) / 37)
    assert metrics["zeroshot_top5"] == pytest.approx(sum(int(r) < 5 for r in ranks) / 37)
    right = [int(r) == 0 for r in ranks]
    recalls = [
        sum(right[i] for i in range(37) if labels[i] == c) / int((labels == c).sum())
        for c in range(7)
        if (labels == c).any()
    ]
    assert metrics["zeroshot_mean_per_class_recall"] == pytest.approx(sum(recalls) / len(recalls))
    assert "zeroshot_top5" not in zeroshot_metrics(image_emb, class_emb[:4], labels % 4)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model("siglip-tiny", allow_random_init=True)


def test_class_embeddings_are_the_renormalised_mean_of_normalised_prompts(tiny):
    names, templates = ["red circle", "blue star", "green ring"], ["a {c}.", "a photo of a {c}.", "{c}!"]
    with torch.no_grad():
        expected = torch.stack(
            [
                torch.nn.functional.normalize(
                    torch.cat(
                        [tiny.encode_texts(tiny.tokenizer([t.replace("{c}", n)])) for t in templates]
                    ).mean(0),
                    dim=-1,
                )
                for n in names
            ]
        )
        for batch_size in (1, 4, 256):  # one class per pass, a ragged last pass, everything at once
            got = class_embeddings(tiny, names, templates, batch_size, torch.device("cpu"), "fp32")
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ a real model on the synthetic set


def test_random_tiny_model_on_the_synthetic_eval_set_is_near_chance(small_synth, tiny):
    evalset = EvalSet.load(f"{small_synth}/eval", preprocess=tiny.preprocess)
    tiny.module.train()
    first = evaluate(tiny, evalset, batch_size=50)
    assert tiny.module.training  # handed back as it came
    second = evaluate(tiny, evalset, batch_size=64)  # from the decoded cache; eval mode both times
    assert first == pytest.approx(second)
    assert (first["images"], first["classes"], first["templates"]) == (128, 64, 5)
    assert first["captions"] == 128
    for key in ("zeroshot_top1", "zeroshot_top5", "image_to_text_r1", "image_to_text_r5", "text_to_image_r1"):
        assert 0.0 <= first[key] <= 1.0
    assert first["zeroshot_top5"] >= first["zeroshot_top1"]
    assert first["image_to_text_r5"] >= first["image_to_text_r1"]
    assert first["zeroshot_top1"] <= 0.25  # chance is 1/64; a random model has no business near 1
    tiny.module.eval()


# ------------------------------------------------------------------------------ the command


def cli_app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("eval")(evaluate_command)
    app.command("other")(lambda: None)  # two commands, so "eval" is a subcommand as in cli/main.py
    return app


def test_eval_command_on_a_checkpoint_prints_json_and_a_table(tmp_path, small_synth, colour_set, tiny):
    checkpoint = tmp_path / "latest.pt"
    save_checkpoint(checkpoint, tiny.open_clip_name, tiny.config, tiny.module.state_dict(), step=3)
    evalset = f"{small_synth}/eval"
    result = CliRunner().invoke(cli_app(), ["eval", str(checkpoint), evalset, "--json", "--batch-size", "64"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["model"], report["evalset"], report["device"]) == (str(checkpoint), evalset, "cpu fp32")
    assert report["images"] == 128 and report["skipped"] == {}
    library = evaluate(tiny, evalset, batch_size=64)
    for key, value in library.items():
        assert report[key] == pytest.approx(value, abs=1e-6), key

    # The table, on the small colour set (16 images, 8 classes × 2 templates, 16 captions): quicker.
    table = CliRunner().invoke(cli_app(), ["eval", str(checkpoint), colour_set, "--device", "cpu"])
    assert table.exit_code == 0, table.output
    lines = table.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["zero-shot", "image", "text"]
    expected = evaluate(tiny, colour_set)
    assert float(lines[1].split()[1]) == round(expected["zeroshot_top1"], 4)
    assert float(lines[3].split()[-1]) == round(expected["text_to_image_r5"], 4)
    assert lines[-1].startswith(f"evaluated {checkpoint} on {colour_set}: 16 images, 8 classes × 2 templates")


def test_model_names_need_weights_or_allow_random_init(small_synth):
    with pytest.raises(CurateError, match="allow-random-init"):
        run_eval(f"{small_synth}/eval", EvalConfig(model="siglip-tiny"))


def one_line_error(call) -> str:
    with pytest.raises(CurateError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_eval_sets_are_one_line_errors(tmp_path, colour_set):
    assert "no such eval set folder" in one_line_error(lambda: read_eval_set(str(tmp_path / "nowhere")))
    assert "no test/ folder" in one_line_error(lambda: read_eval_set(str(tmp_path)))

    def fresh(name, samples, classnames=NAMES, templates=("a {c}.",)):
        root = tmp_path / name
        write_tar(root / "test/0.tar", samples)
        if classnames is not None:
            (root / "classnames.txt").write_text("\n".join(classnames))
        if templates is not None:
            (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates))
        return str(root)

    good = [{"png": png(COLOURS["red"]), "cls": b"0"}]
    assert "classnames.txt is missing" in one_line_error(
        lambda: read_eval_set(fresh("a", good, classnames=None))
    )
    missing = one_line_error(lambda: read_eval_set(fresh("b", good, templates=None)))
    assert "zeroshot_classification_templates.txt is missing" in missing
    assert "has no {c}" in one_line_error(lambda: read_eval_set(fresh("c", good, templates=["a photo"])))
    assert "no usable samples" in one_line_error(lambda: read_eval_set(fresh("d", [])))
    out_of_range = [{"png": png(COLOURS["red"]), "cls": b"8"}]
    assert "label 8" in one_line_error(lambda: read_eval_set(fresh("e", out_of_range)))
    assert "--batch-size" in one_line_error(lambda: evaluate(colour_model(), colour_set, batch_size=0))

    result = CliRunner().invoke(
        cli_app(), ["eval", "siglip-tiny", str(tmp_path / "nowhere"), "--allow-random-init"]
    )
    assert isinstance(result.exception, CurateError) and "no such eval set folder" in str(result.exception)
