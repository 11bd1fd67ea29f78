"""AST lobe: features as ASTFeatureExtractor, adapted position embeddings,
token mask, pooling."""

import pytest
import torch
import torch.nn.functional as F

from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.lobes.base import masked_mean
from synthetic.models import make_tiny_ast


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_ast(str(tmp_path_factory.mktemp("tiny_ast")))


def _grid(folder):
    """The pretrained position embeddings as [freq, time, d] (prefix apart)."""
    from transformers import ASTModel

    pos = ASTModel.from_pretrained(folder).embeddings.position_embeddings.detach()
    return pos[0, :2], pos[0, 2:].reshape(12, 9, -1)


@pytest.mark.parametrize("seconds", [1.0, 0.37])
def test_features_match_feature_extractor(folder, seconds):
    from transformers import ASTFeatureExtractor

    torch.manual_seed(0)
    wav = torch.randn(int(16000 * seconds)) * 0.1
    ref = ASTFeatureExtractor(max_length=100)(
        wav.numpy(), sampling_rate=16000, return_tensors="pt"
    ).input_values
    feats, frames = AST(folder, max_frames=100).features(wav.unsqueeze(0))
    torch.testing.assert_close(feats, ref, atol=1e-4, rtol=1e-4)
    assert frames.tolist() == [min(100, (len(wav) - 400) // 160 + 1)]


def test_features_of_a_padded_clip_match_the_clip_alone(folder):
    torch.manual_seed(0)
    ast = AST(folder, max_frames=100)
    wav = torch.randn(1, 8000)
    batch = torch.cat([wav, torch.randn(1, 8000)], 1).repeat(2, 1)
    batch[0, 8000:] = 0
    alone, _ = ast.features(wav)
    padded, frames = ast.features(batch, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(padded[0], alone[0])
    assert frames.tolist() == [48, 98]


def test_position_embeddings_centre_cropped(folder):
    prefix, grid = _grid(folder)
    ast = AST(folder, max_frames=60)  # 5 time patches out of 9
    pos = ast.model.embeddings.position_embeddings.detach()[0]
    assert pos.shape[0] == 2 + 12 * 5
    torch.testing.assert_close(pos[:2], prefix)
    torch.testing.assert_close(pos[2:].reshape(12, 5, -1), grid[:, 2:7])
    assert pos.abs().sum() > 0
    assert ast.model.embeddings.position_embeddings.requires_grad


def test_position_embeddings_interpolated(folder):
    prefix, grid = _grid(folder)
    ast = AST(folder, max_frames=150)  # 14 time patches
    pos = ast.model.embeddings.position_embeddings.detach()[0]
    expected = F.interpolate(
        grid.permute(2, 0, 1).unsqueeze(0), size=(12, 14), mode="bilinear"
    )[0].permute(1, 2, 0)
    torch.testing.assert_close(pos[:2], prefix)
    torch.testing.assert_close(pos[2:].reshape(12, 14, -1), expected)
    assert pos.abs().sum() > 0


def test_same_length_keeps_embeddings(folder):
    prefix, grid = _grid(folder)
    pos = AST(folder, max_frames=100).model.embeddings.position_embeddings.detach()[0]
    torch.testing.assert_close(pos[2:].reshape(12, 9, -1), grid)


def test_mask_and_mean_pooling(folder):
    torch.manual_seed(0)
    ast = AST(folder, max_frames=100).eval()
    wavs = torch.randn(2, 16000)
    lens = torch.tensor([1.0, 0.5])
    with torch.no_grad():
        hidden, mask = ast.encode(wavs, lens)
        pooled = ast(wavs, lens)
    assert hidden.shape == (2, 110, 32)
    assert mask[:, :2].all() and mask[0].all()
    # 48 real frames -> columns starting on a real frame: 0, 10, .., 40 = 5
    grid = mask[1, 2:].reshape(12, 9)
    assert grid[:, :5].all() and not grid[:, 5:].any()
    torch.testing.assert_close(pooled, masked_mean(hidden, mask))


def test_cls_pooling(folder):
    ast = AST(folder, max_frames=100, pooling="cls").eval()
    wavs = torch.randn(2, 16000)
    with torch.no_grad():
        hidden, _ = ast.encode(wavs)
        torch.testing.assert_close(ast(wavs), hidden[:, :2].mean(1))


def test_errors(folder):
    with pytest.raises(ValueError, match="sample_rate: 16000"):
        AST(folder, sample_rate=8000)
    with pytest.raises(ValueError, match="max_frames"):
        AST(folder, max_frames=8)
