import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from curate.errors import CurateError
from curate.models import BUILTINS, load_model, save_checkpoint


def test_builtins_are_siglip_models_with_the_offline_tokenizer():
    for name in BUILTINS:
        model = load_model(name, allow_random_init=True)
        assert (model.logit_scale, model.logit_bias) == pytest.approx((10.0, -10.0))
        tokens = model.tokenizer(["a red circle", "a blue star"])
        assert tokens.shape == (2, 32) and tokens.dtype == torch.long
        size = model.image_size
        with torch.no_grad():
            images, texts = model.encode(torch.randn(2, 3, size, size), tokens)
        assert images.shape == texts.shape == (2, model.embed_dim)
        assert torch.allclose(images.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_a_model_without_weights_is_refused_unless_asked_for():
    with pytest.raises(CurateError, match="has no weights"):
        load_model("siglip-tiny")
    with pytest.raises(CurateError, match="has no weights"):
        load_model("ViT-B-32")


def test_checkpoint_round_trip_and_weights_file(tmp_path):
    model = load_model("siglip-tiny", allow_random_init=True)
    with torch.no_grad():
        for parameter in model.module.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model.open_clip_name, model.config, model.module.state_dict(), step=7)
    loaded = load_model(str(path))
    tokens = model.tokenizer(["a small green hexagon"])
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for ours, theirs in zip(model.encode(images, tokens), loaded.encode(images, tokens), strict=True):
            assert torch.equal(ours, theirs)
    assert loaded.metadata()["curate.model"] == str(path)

    weights = tmp_path / "open_clip_weights.pt"  # a bare state dict, as open_clip's --pretrained FILE takes
    torch.save(model.module.state_dict(), weights)
    from_file = load_model("siglip-tiny", pretrained=str(weights))
    with torch.no_grad():
        assert torch.equal(from_file.encode_texts(tokens), model.encode_texts(tokens))
    with pytest.raises(CurateError, match="without an architecture"):
        load_model(str(weights))


def test_bad_names_tags_and_files_give_clear_errors(tmp_path):
    with pytest.raises(CurateError, match="did you mean siglip-tiny"):
        load_model("siglip-tny")
    with pytest.raises(CurateError, match="not a file, nor a tag"):
        load_model("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(CurateError, match="no such checkpoint"):
        load_model(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CurateError, match="cannot read checkpoint"):
        load_model(str(tmp_path / "junk.pt"))


def test_pretrained_weights_that_cannot_be_fetched_give_one_line(tmp_path, small_synth):
    # Tests run with HF_HUB_OFFLINE=1 (conftest), so the fetch fails at once, as on a machine offline.
    with pytest.raises(CurateError, match="could not fetch the pretrained weights 'laion2b_s34b_b79k'"):
        load_model("ViT-B-32", pretrained="laion2b_s34b_b79k")
    args = ["--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"]
    result = run_cli("score", f"{small_synth}/web", "-o", str(tmp_path / "s"), *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "could not fetch the pretrained weights" in result.stderr
    assert "--pretrained /path/to/" in result.stderr


def test_models_command_lists_the_builtins():
    result = run_cli("models")
    assert result.returncode == 0
    assert (
        "siglip-tiny" in result.stdout and "siglip-small" in result.stdout and "--pretrained" in result.stdout
    )


# ---------------------------------------------------------------------------------- low resolution


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_low_resolution_encodes_fewer_tokens_and_full_resolution_is_open_clips_forward(name):
    model = load_model(name, allow_random_init=True)
    size, patch = model.image_size, model.module.visual.patch_size[0]
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        full = model.encode_images(images, size)
        assert torch.equal(full, F.normalize(model.module.encode_image(images).float(), dim=-1))
        low = model.encode_images(images, size // 2)
    assert low.shape == full.shape and torch.allclose(low.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(low, full, atol=1e-3)
    # A quarter of the image tokens: the image tower costs about a quarter (the text tower is unchanged).
    assert model.forward_flops(size // 2) < model.forward_flops()
    tokens = []
    hook = model.module.visual.transformer.register_forward_hook(lambda m, i, o: tokens.append(o.shape[1]))
    with torch.no_grad():
        model.encode_images(images, size // 2)
    hook.remove()
    assert tokens == [(size // 2 // patch) ** 2 + 1]


def test_a_stock_open_clip_vit_encodes_at_low_resolution_and_caches_its_grid():
    model = load_model("ViT-B-32", allow_random_init=True)  # built from open_clip's config, no weights
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        low = model.encode_images(images, 128)  # a 4×4 grid instead of 7×7
        cache = model._low_resolution._cache
        (key,) = cache
        grid = cache[key][1]
        again = model.encode_images(images, 128)
        assert cache[key][1] is grid  # the interpolated grid is made once
    assert low.shape == (2, 512) and torch.equal(low, again)
    table = model.module.visual.positional_embedding
    assert grid.shape == (17, table.shape[1]) and torch.equal(grid[0], table[0])  # the class token's own
    with torch.no_grad():
        table.add_(1.0)  # what an optimizer step does: the cache follows the weights
        model.encode_images(images, 128)
    assert cache[key][1] is not grid
    assert isinstance(model.module.visual._parameters["positional_embedding"], torch.nn.Parameter)


def test_low_resolution_trains_the_full_grid():
    model = load_model("siglip-tiny", allow_random_init=True)
    model.module.train()
    model.encode_images(torch.randn(2, 3, 32, 32), 16).sum().backward()
    assert model.module.visual.positional_embedding.grad.abs().sum() > 0


def test_a_tower_that_cannot_change_resolution_says_so_in_one_line():
    tiny = load_model("siglip-tiny", allow_random_init=True)
    with pytest.raises(CurateError, match="multiple of its patch size 4 between 4 and its image size 32"):
        tiny.check_resolution(18)
    with pytest.raises(CurateError, match="image size 32"):
        tiny.check_resolution(64)
    resnet = load_model("RN50", allow_random_init=True)
    with pytest.raises(CurateError, match="RN50: its image tower is not an open_clip ViT"):
        resnet.encode_images(torch.randn(1, 3, 224, 224), 112)
