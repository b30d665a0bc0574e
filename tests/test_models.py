import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.config import compose, conf_dir
from cnnlab.errors import UserError
from cnnlab.models import Network, build_model, check_input_shape
from cnnlab.models.summary import summary_table
from cnnlab.stages import summary

MODELS = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
OFFLINE = [m for m in MODELS if m not in ("torchvision", "timm")]  # these two download weights when online
BUILDER = "cnnlab.models.builder.CNN"


def model_cfg(name: str, *overrides: str):
    plus = "" if "model" in compose([]) else "+"  # until conf/config.yaml lists a model default
    return compose([f"{plus}model={name}", *overrides])


def net(**options):
    return OmegaConf.create({"_target_": BUILDER, **options})


@pytest.mark.parametrize("name, total", [("seed_mlp", "669,706"), ("seed_mnist_cnn", "220,234"),
                                         ("seed_cifar_cnn", "541,094"),
                                         ("seed_cifar_cnn_k2", "528,054")])
def test_seed_param_counts_match_keras(name, total, capsys):
    result = summary.run(model_cfg(name))
    out = capsys.readouterr().out
    assert f"Total params: {total}\n" in out and "Non-trainable params: 0" in out
    n = int(total.replace(",", ""))
    assert result == {"total_params": n, "trainable_params": n}


def test_summary_table_rows_and_shapes():
    cfg = OmegaConf.load(conf_dir() / "model" / "seed_mnist_cnn.yaml")
    table = summary_table(build_model(cfg.net, cfg.input_shape, 10), cfg.input_shape)
    assert "Layer (type)" in table and "Output Shape" in table and "Param #" in table
    assert "(None, 32, 28, 28)" in table and "(None, 64, 7, 7)" in table and "(None, 10)" in table
    assert "200,768" in table  # Dense 64 on the 7·7·64 flatten


def test_summary_stage_input_shape_and_classes(capsys):
    result = summary.run(model_cfg("seed_mnist_cnn", "++summary.input_shape=[3,32,32]",
                                   "++summary.num_classes=5"))
    assert "(None, 32, 32, 32)" in capsys.readouterr().out
    assert result["total_params"] == 896 + 18_496 + (64 * 8 * 8 * 64 + 64) + (64 * 5 + 5)


@pytest.mark.parametrize("name", OFFLINE)
def test_every_model_config_runs_on_its_shape_and_another(name):
    cfg = compose([f"model={name}"]).model
    assert cfg.name == name and list(cfg.net) and cfg.net._target_.startswith("cnnlab.models.")
    other = (3, 32, 32) if cfg.input_shape[0] == 1 else (1, 28, 28)
    for shape in (tuple(cfg.input_shape), other):
        model = build_model(cfg.net, shape, 7)
        assert isinstance(model, Network) and model.in_shape == shape
        assert model(torch.zeros(2, *shape)).shape == (2, 7)


def test_seed_models_use_keras_init():
    model = build_model(OmegaConf.load(conf_dir() / "model" / "seed_cifar_cnn.yaml").net, (3, 32, 32), 10)
    w = model[-1].weight  # glorot_uniform bound √(6 / (fan_in + fan_out)) = √(6/510)
    assert all(m.bias.abs().sum() == 0 for m in model if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert w.abs().max() <= (6 / 510) ** 0.5 and w.abs().max() > 0.8 * (6 / 510) ** 0.5


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("pool", ["max", "avg", "stride", "none"])
@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_builder_variants(residual, pool, head):
    model = build_model(net(widths=[4, 8], blocks_per_stage=2, pool=pool, residual=residual, head=head,
                            hidden=6, dropout=0.1), (3, 9, 9), 3)
    x = torch.randn(2, 3, 9, 9)
    model(x).sum().backward()
    assert model(x).shape == (2, 3)
    projections = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == (2 if residual else 0)  # 3→4 and 4→8 channels, one per width change


def test_builder_batch_norm_and_even_kernel():
    plain = build_model(net(widths=[4], batch_norm=False, kernel_size=2, head="flatten"), (1, 6, 6), 2)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert plain(torch.zeros(1, 1, 6, 6)).shape == (1, 2)  # 6 → "same" 6 → pool 3 → 4·3·3 flatten


@pytest.mark.parametrize("options, shape, message", [
    (dict(widths=[8], pool="min"), (1, 28, 28), "unknown pool 'min'; valid: max, avg, stride, none"),
    (dict(widths=[8], head="dense"), (1, 28, 28), "unknown head 'dense'"),
    (dict(widths=[]), (1, 28, 28), "widths must be a non-empty list"),
    (dict(widths=[8] * 6), (1, 28, 28), "28×28 images are too small for 6 downsamplings by 2 (need 64×64)"),
    (dict(widhts=[8]), (1, 28, 28),
     "unknown option(s) widhts; missing widths; valid options: widths, blocks"),
    (dict(widths=[8], in_shape=[1, 2, 3]), (1, 28, 28), "in_shape and num_classes come from the data"),
    (dict(widths=[8], dropout=1.5), (1, 28, 28), "0 <= dropout < 1"),
])
def test_builder_user_errors(options, shape, message):
    with pytest.raises(UserError) as e:
        build_model(net(**options), shape, 10)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_seed_model_too_small_and_bad_target():
    with pytest.raises(UserError, match="SeedCifarCNN: 4×4 images are too small for 3 downsamplings"):
        build_model(OmegaConf.create({"_target_": "cnnlab.models.seed.SeedCifarCNN"}), (3, 4, 4), 10)
    with pytest.raises(UserError, match="cannot be imported"):
        build_model(OmegaConf.create({"_target_": "cnnlab.models.seed.Nope"}), (3, 32, 32), 10)
    with pytest.raises(UserError, match=r"'torch.nn.Identity' is not a cnnlab network \(a cnnlab.models"):
        build_model(OmegaConf.create({"_target_": "torch.nn.Identity"}), (3, 32, 32), 10)


def test_network_contract_defaults():
    """What a network that overrides nothing offers the training task."""
    model = build_model(net(widths=[4]), (1, 8, 8), 3)
    assert not model.expects_unit_range and model.init_images == 0 and model.stages() == []
    [group] = model.param_groups()
    assert group["lr_scale"] == 1.0 and len(group["params"]) == len(list(model.parameters()))
    model[0].weight.requires_grad_(False)  # frozen parameters stay out of the optimizer
    assert len(model.param_groups()[0]["params"]) == len(list(model.parameters())) - 1


def test_check_input_shape():
    check_input_shape([1, 28, 28], (1, 28, 28))
    with pytest.raises(UserError) as e:
        check_input_shape((1, 28, 28), (3, 32, 32))
    assert str(e.value) == ("model was built for 1×28×28 inputs, data has 3×32×32 images "
                            "(prepare the data at that size or retrain)")


def test_model_configs_follow_the_schema():
    for name in MODELS:
        cfg = compose([f"model={name}"]).model
        assert set(cfg) == {"name", "input_shape", "net"} and len(cfg.input_shape) == 3
