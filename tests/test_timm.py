"""Any timm model as `timm/ARCH[.TAG]`: its recipe, its Hub weights (faked offline), its features, fine-tuning."""

import socket

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from extract.backbones import create_backbone
from extract.backbones.timm_models import PROXY_VARIABLES, _host_resolves, _timm_preprocess
from extract.errors import UsageError
from extract.layers import FeatureModel, feature_layers
from extract.paths import file_sha256
from pipelines.finetune.surgery import replace_classifier
from tests.conftest import QUICK, run

DINOV2 = "timm/vit_small_patch14_dinov2"  # built without a classifier (num_classes=0), for 518 px
RESNET18_TAG = timm.models.get_pretrained_cfg("resnet18").tag  # timm's default tag (a1_in1k in timm 1.0.31)


def test_a_timm_name_takes_the_default_tag_and_timms_own_recipe():
    backbone = create_backbone("timm/resnet18", weights="none")
    assert backbone.name == f"timm/resnet18.{RESNET18_TAG}" and backbone.weights == "none"
    config = timm.data.resolve_data_config(model=backbone.model)
    assert backbone.preprocess.crop_size == config["input_size"][-1] == 224
    assert backbone.preprocess.resize_size == int(224 / config["crop_pct"])  # 235, as timm's transform resizes
    assert (backbone.preprocess.mean, backbone.preprocess.std) == (config["mean"], config["std"])
    assert backbone.preprocess.interpolation == config["interpolation"] == "bicubic"
    assert create_backbone("timm/resnet18.tv_in1k", weights="none").preprocess.interpolation == "bilinear"


def test_a_squash_recipe_is_kept_and_recorded_and_earlier_records_stay_as_they_were():
    centred = create_backbone("timm/convnext_tiny.in12k_ft_in1k", weights="none").preprocess
    assert centred.crop_mode == "center"
    assert set(centred.to_dict()) == {"crop_size", "resize_size", "mean", "std", "interpolation"}  # as before
    squashed = create_backbone("timm/convnext_tiny.in12k_ft_in1k_384", weights="none").preprocess
    assert timm.models.get_pretrained_cfg("convnext_tiny.in12k_ft_in1k_384").crop_mode == "squash"
    assert squashed.crop_mode == "squash" and squashed.to_dict()["crop_mode"] == "squash"
    assert squashed.crop_size == squashed.resize_size == 384


def test_a_border_recipe_is_kept_and_recorded():
    """DeepSeek's ViT (the 6 tags of timm 1.0.31 that pad instead of cropping); its config alone, the model is 412M."""
    recipe = timm.models.get_pretrained_cfg("deepseek_vit_412m.deepseek_v4_1_flash").to_dict()
    assert recipe["crop_mode"] == "border"
    preprocess = _timm_preprocess(recipe)
    assert preprocess.crop_mode == "border" and preprocess.to_dict()["crop_mode"] == "border"
    assert preprocess.crop_size == preprocess.resize_size == 546


def test_unknown_timm_models_and_tags_are_refused_with_the_choices():
    with pytest.raises(UsageError, match="timm has no model 'resnet181'.*did you mean"):
        create_backbone("timm/resnet181", weights="none")
    with pytest.raises(UsageError, match="no pretrained tag 'bogus'; choose one of a1_in1k, .*tv_in1k"):
        create_backbone("timm/resnet18.bogus", weights="none")


def _fake_resolver(monkeypatch, resolves: bool) -> None:
    """Host names resolve (the network is there), or not (offline), whatever the machine running the tests has."""
    def getaddrinfo(host, port, *args, **kwargs):
        if not resolves:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for proxy in PROXY_VARIABLES:
        monkeypatch.delenv(proxy, raising=False)


def _fake_hub(monkeypatch, files: dict[str, str]) -> list[tuple[str, str, bool]]:
    """hf_hub_download answered from `files` (the Hub cache); anything else is as offline. Returns the calls."""
    calls = []

    def download(repo_id, filename, local_files_only=False, **kwargs):
        calls.append((repo_id, filename, local_files_only))
        if filename in files:
            return files[filename]
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


def test_default_weights_are_read_from_the_hub_cache_and_fingerprinted(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    state = timm.create_model("resnet18").state_dict()
    state["fc.bias"] = torch.arange(1000, dtype=torch.float32)
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    calls = _fake_hub(monkeypatch, {"model.safetensors": str(path)})
    backbone = create_backbone("timm/resnet18")
    assert calls == [(f"timm/resnet18.{RESNET18_TAG}", "model.safetensors", True)]  # the cache first: no network
    assert backbone.weights == f"timm:{RESNET18_TAG}" and backbone.weights_sha256 == file_sha256(path)
    assert torch.equal(backbone.model.fc.bias, state["fc.bias"])
    assert len(backbone.categories) == 1000 and backbone.categories[285] == "Egyptian cat"
    again = create_backbone(backbone.name, backbone.weights)  # what `predict` does with a recorded label
    assert again.weights_sha256 == backbone.weights_sha256


def test_weights_may_name_a_tag_as_torchvision_weights_name_an_enum(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet18").state_dict(), tmp_path / "model.safetensors")
    calls = _fake_hub(monkeypatch, {"model.safetensors": str(tmp_path / "model.safetensors")})
    backbone = create_backbone("timm/resnet18", weights="tv_in1k")
    assert backbone.name == "timm/resnet18.tv_in1k" and backbone.weights == "timm:tv_in1k"
    assert calls[0][0] == "timm/resnet18.tv_in1k" and backbone.preprocess.interpolation == "bilinear"
    with pytest.raises(UsageError, match=r"'none', a state-dict path or one of its tags \(a1_in1k, .*\), not 'bogus'"):
        create_backbone("timm/resnet18", weights="bogus")


@pytest.mark.parametrize("resolves, tries", [
    (False, [True, True]),         # offline: the host has no address, so no download is tried (23 s of retries)
    (True, [True, True, False]),   # the host resolves but the Hub cannot be reached: huggingface_hub says so
])
def test_offline_without_the_weights_says_where_they_go(monkeypatch, resolves, tries):
    _fake_resolver(monkeypatch, resolves)
    calls = _fake_hub(monkeypatch, {})
    with pytest.raises(UsageError, match=rf"cannot download timm/resnet18\.{RESNET18_TAG} weights: the Hugging Face "
                                         r"Hub .* cannot be reached.*--weights PATH"):
        create_backbone("timm/resnet18")
    assert [local for _, _, local in calls] == tries  # both file names in the cache first


def test_a_configured_proxy_is_left_to_resolve_the_hub(monkeypatch):
    _fake_resolver(monkeypatch, resolves=False)
    assert not _host_resolves("https://huggingface.co")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert _host_resolves("https://huggingface.co")


def test_weights_published_by_url_alone_go_through_the_torch_hub_cache(monkeypatch, tmp_path):
    """19 of timm's tags are not on the Hub (legacy SE-ResNets, GC ViT, ...): placed by hand as for torchvision."""
    import urllib.error

    def offline(url, destination, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    url = timm.models.get_pretrained_cfg("legacy_seresnet18").url
    target = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    with pytest.raises(UsageError, match=f"offline, place that file at {target}"):
        create_backbone("timm/legacy_seresnet18")
    torch.save(timm.create_model("legacy_seresnet18").state_dict(), target)
    backbone = create_backbone("timm/legacy_seresnet18")
    assert backbone.weights == "timm:in1k" and backbone.weights_sha256 == file_sha256(target)


def test_a_refused_download_is_one_line(monkeypatch):
    _fake_resolver(monkeypatch, resolves=True)

    def refused(repo_id, filename, local_files_only=False, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        raise PermissionError("401 Client Error: access to this repository is restricted\nmore detail")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refused)
    with pytest.raises(UsageError, match=r"from the Hugging Face Hub \(timm/resnet18\.\w+\): 401 Client Error: access "
                                         r"to this repository is restricted; or pass --weights PATH"):
        create_backbone("timm/resnet18")


@pytest.mark.parametrize("name, size, dim, spatial", [
    ("timm/resnet18", 64, 512, True),                     # pools, then the classifier: the pool's input, pooled
    ("timm/convnext_atto", 64, 320, False),               # a norm between pool and classifier: its input
    ("timm/mobilenetv3_small_050", 64, 1024, False),      # a 1x1 convolution after the pool
    ("timm/deit_tiny_patch16_224", 224, 192, False),      # the class token, after the norm
    (DINOV2, 56, 384, False),                             # no classifier at all: the Identity's input
])
def test_penultimate_features_are_timms_pre_logits(name, size, dim, spatial):
    model = create_backbone(name, weights="none", image_size=size).model
    assert feature_layers(model)["penultimate"].spatial == spatial  # --pool max only where the map is there
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(images), pre_logits=True)
        features = FeatureModel(model)(images)
    assert features.shape == (2, dim)
    torch.testing.assert_close(features, expected)


def test_a_timm_model_built_for_one_size_is_built_for_the_asked_one_or_refused():
    levit = create_backbone("timm/levit_128s", weights="none", image_size=112)  # attention biases for 7x7 tokens
    assert FeatureModel(levit.model)(torch.zeros(1, 3, 112, 112)).shape == (1, 384)
    with pytest.raises(UsageError, match=r"maxvit_tiny_tf_224\.in1k does not take 112 px input .* its own 224"):
        create_backbone("timm/maxvit_tiny_tf_224", weights="none", image_size=112)


def test_an_attention_pooling_head_is_refused():
    with pytest.raises(UsageError, match=r"gives its classifier a \(50, 2048\) sequence"):
        FeatureModel(create_backbone("timm/resnet50_clip.openai", weights="none").model)


def test_a_model_without_classifier_gives_no_logits_and_gets_one_for_fine_tuning():
    model = create_backbone(DINOV2, weights="none", image_size=56).model
    assert list(feature_layers(model)) == ["penultimate"]
    with pytest.raises(UsageError, match="without a classifier .* no logits"):
        FeatureModel(model, "avg", "logits")
    head = replace_classifier(model, 5)
    assert head == "head" and model.get_submodule(head).in_features == 384
    assert model(torch.zeros(1, 3, 56, 56)).shape == (1, 5)


def test_a_state_dict_for_another_input_size_is_fitted_by_timms_filter(tmp_path):
    """DINOv2 weights are for 518 px; at 56 px timm's own checkpoint filter resizes the position embeddings."""
    native = timm.create_model(DINOV2.removeprefix("timm/"))
    path = tmp_path / "dinov2.pth"
    torch.save(native.state_dict(), path)
    backbone = create_backbone(DINOV2, weights=str(path), image_size=56)
    assert native.pos_embed.shape[1] == 1 + 37 * 37 and backbone.model.pos_embed.shape[1] == 1 + 4 * 4
    assert torch.equal(backbone.model.cls_token, native.cls_token)
    assert backbone.weights == str(path.resolve()) and backbone.weights_sha256 == file_sha256(path)
    with pytest.raises(UsageError, match="does not fit timm/resnet18"):
        create_backbone("timm/resnet18", weights=str(path))


def test_extract_classify_and_predict_with_a_timm_backbone(sample_dir, tmp_path, capsys):
    from classify.__main__ import main as classify
    from extract.__main__ import main as extract

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), weights)
    cache = tmp_path / "cache"
    code, _, err = run(extract, ["timm/resnet18", str(sample_dir), "--weights", str(weights),
                                 "--cache-dir", str(cache), *QUICK], capsys)
    assert code == 0, err
    (entry,) = cache.glob("*.h5")
    assert entry.name.startswith(f"cifar10-mini__timm-resnet18.{RESNET18_TAG}__resnet18__penultimate-avg__96px__")
    code, out, err = run(classify, ["logreg", str(entry), "--cv", "2"], capsys)
    assert code == 0, err
    images = sorted((sample_dir / "test" / "cat").glob("*.jpg"))[:3]
    code, out, err = run(classify, ["predict", f"{entry.with_suffix('')}.logreg.joblib", *map(str, images)], capsys)
    assert code == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert [path for path, *_ in lines] == list(map(str, images))
    assert np.all([label in {p.name for p in (sample_dir / "train").iterdir()} for _, label, _ in lines])
    assert all(0 < float(probability) <= 1 for *_, probability in lines)


def test_the_advisor_refuses_class_scores_other_than_imagenet_1k(monkeypatch, sample_dir, tmp_path):
    """Its confidence threshold was calibrated on 1,000 ImageNet classes; an ImageNet-21k head would mislead it."""
    from safetensors.torch import save_file

    from pipelines.advise import advise

    path = tmp_path / "model.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224.augreg_in21k").state_dict(), path)
    _fake_hub(monkeypatch, {"model.safetensors": str(path)})
    with pytest.raises(UsageError, match="ImageNet-1k class scores, and .* classifier has 21843 classes"):
        advise(str(sample_dir), "timm/vit_tiny_patch16_224.augreg_in21k", probe_per_class=2,
               cache_dir=str(tmp_path / "cache"), log=lambda message: None)


@pytest.mark.parametrize("name", ["timm/resnet18", "timm/resnet18.tv_in1k", "timm/convnext_tiny.in12k_ft_in1k_384"])
def test_a_photo_is_preprocessed_as_timms_own_eval_transform_does(name):
    """Bicubic at crop_pct 0.95, bilinear at 0.875, a squash at 1.0: the same pixels as timm's transform."""
    from PIL import Image
    from skimage import data

    from extract.preprocess import resize_and_crop

    photo = Image.fromarray(data.chelsea())  # 451 x 300
    backbone = create_backbone(name, weights="none")
    config = timm.data.resolve_data_config(model=backbone.model)
    transform = timm.data.create_transform(**{**config, "mean": (0, 0, 0), "std": (1, 1, 1)})
    expected = (transform(photo) * 255).round().to(torch.uint8)
    ours = resize_and_crop(photo, backbone.preprocess)
    assert ours.shape == expected.shape
    assert torch.equal(ours, expected)


def test_the_advisor_says_why_a_backbone_without_a_classifier_cannot_advise(monkeypatch, sample_dir, tmp_path):
    from safetensors.torch import save_file

    from pipelines.advise import advise

    path = tmp_path / "model.safetensors"
    save_file(timm.create_model("vit_small_patch14_dinov2", img_size=56).state_dict(), path)
    _fake_hub(monkeypatch, {"model.safetensors": str(path)})
    with pytest.raises(UsageError, match="reads ImageNet-1k class scores, and timm/vit_small_patch14_dinov2 was built "
                                         "without a classifier; advise with an ImageNet-1k backbone"):
        advise(str(sample_dir), DINOV2, probe_per_class=2, image_size=56, cache_dir=str(tmp_path / "cache"),
               log=lambda message: None)
