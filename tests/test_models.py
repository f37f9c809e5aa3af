import pytest
import torch
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
