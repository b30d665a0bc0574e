"""cnnlab.schema: every shipped config choice validates; each bad value is one line naming its key."""

from __future__ import annotations

import typing

import pytest
import torch
from omegaconf import OmegaConf
from pydantic import ValidationError

from cnnlab.config import conf_dir
from cnnlab.errors import UserError
from cnnlab.schema import SECTIONS, Config, validate

NO_CUDA = not torch.cuda.is_available()
GROUPS = ("model", "data", "optimizer", "scheduler", "trainer", "train", "experiment")
CHOICES = [f"{group}={f.stem}" for group in GROUPS for f in sorted((conf_dir() / group).glob("*.yaml"))]


def _on_gpu(c) -> bool:
    return c.trainer.accelerator in ("gpu", "cuda")


def _error(c, command: str = "params", run: str | None = None) -> str:
    with pytest.raises(UserError) as e:
        validate(c, command, run)
    return str(e.value)


@pytest.mark.parametrize("command", [*SECTIONS, "a-command-added-later"])
def test_default_config_validates_for_every_command(cfg, command):
    validate(cfg(), command)


@pytest.mark.parametrize("choice", CHOICES)
def test_every_shipped_choice_validates(cfg, choice):
    c = cfg(choice)
    validate(c, "params")  # everything, runs.* included; no device check (params.yaml may be for a GPU box)
    if not (_on_gpu(c) and NO_CUDA):
        validate(c, "train")


@pytest.mark.skipif(not NO_CUDA, reason="the GPU rule only fires without CUDA")
@pytest.mark.parametrize("overrides", [("trainer=gpu",), ("trainer=ddp",), ("experiment=cifar10",),
                                       ("trainer.accelerator=cuda",)])
def test_gpu_asked_for_without_cuda_is_one_clear_line(cfg, overrides):
    msg = _error(cfg(*overrides), "train")
    assert "\n" not in msg and msg.startswith("trainer.accelerator=")
    assert "torch.cuda.is_available() is False" in msg
    validate(cfg(*overrides), "style")  # only the commands that put work on that device care


@pytest.mark.skipif(not NO_CUDA, reason="the GPU rule only fires without CUDA")
def test_a_cuda_device_without_cuda_is_refused_by_the_command_using_it(cfg):
    c = cfg("evaluate.device=cuda:0")
    assert _error(c, "evaluate").startswith("evaluate.device='cuda:0': no CUDA GPU")
    validate(c, "train")


def test_the_gpu_check_follows_the_run_the_command_trains(cfg):
    c = cfg("trainer.accelerator=cuda" if NO_CUDA else "trainer.accelerator=cpu")
    validate(c, "train", run="transfer")  # runs.transfer has its own trainer (cpu)
    if NO_CUDA:
        msg = _error(cfg("runs.transfer.trainer.accelerator=cuda"), "train", run="transfer")
        assert msg.startswith("runs.transfer.trainer.accelerator='cuda': no CUDA GPU")
    with pytest.raises(UserError, match="unknown run 'nope'"):
        validate(c, "train", run="nope")


BAD = [  # overrides; the message must name the last one's key first
    ["optimizer.lr=abc"],
    ["optimizer.lr='1e-3'"],  # a string: torch would get it as is
    ["optimizer.lr=0"],
    ["optimizer.lr=inf"],
    ["optimizer.weight_decay=-0.1"],
    ["optimizer=sgd", "optimizer.momentum=1.0"],
    ["optimizer._partial_=false"],
    ["train.batch_size=0"],
    ["train.eval_batch_size=1.5"],
    ["train.per_class=0"],
    ["train.label_smoothing=1.0"],
    ["train.augment.cutout=-1"],
    ["train.average.mode=swa"],
    ["train.monitor=val/accuracy"],
    ["train.monitor_mode=min"],  # would keep the worst checkpoint
    ["trainer.max_epochs=0"],
    ["trainer.precision=bogus"],
    ["trainer.accelerator=gpus"],
    ["trainer.devices=0"],
    ["trainer.strategy=dpp"],
    ["trainer.max_time=1h"],
    ["trainer.max_time={weeks:1}"],
    ["trainer.gradient_clip_val=-1"],
    ["trainer.limit_train_batches=1.5"],
    ["trainer.limit_val_batches=0"],
    ["data.val_size=1.5"],  # a count, or a fraction in (0, 1)
    ["data.val_size=60000"],  # all of Fashion-MNIST's training images
    ["data=synthetic", "data.val_size=600"],
    ["data=image_folder", "data.channels=2"],
    ["data=image_folder", "data.image_size=0"],
    ["data.name=.."],
    ["style.name=../../x"],
    ["seed=-1"],
    ["deterministic=yes"],
    ["out_dir=''"],
    ["evaluate.batch_size=0"],
    ["evaluate.device=gpu"],
    ["evaluate.gradcam=-1"],
    ["style.size=0"],
    ["style.iterations=0"],
    ["style.style_weight=-1"],
    ["style.optimizer=sgd"],
    ["style.init=random"],
    ["style.scales=[0.5,2.0]"],
    ["style.name=a/b"],
    ["style.min_size=4096"],
    ["predict.top_k=0"],
    ["predict.center_crop=1.5"],
    ["summary.num_classes=0"],
    ["model=cnn", "model.net.dropout=1.0"],
    ["model=efficientnet_lite0", "model.net.mode=frozen"],
    ["tracking.enabled=maybe"],
    ["runs.transfer.optimizer.lr=-1"],  # a run laid over the root
    ["runs.transfer.trainer.precision=8"],
]


@pytest.mark.parametrize("overrides", BAD, ids=[" ".join(o) for o in BAD])
def test_bad_value_is_one_line_naming_its_key(cfg, overrides):
    key = overrides[-1].split("=")[0]
    msg = _error(cfg(*overrides))
    assert "\n" not in msg and msg.startswith(f"{key}="), msg


def test_messages_name_value_and_what_is_allowed(cfg):
    assert _error(cfg("optimizer.lr=abc")) == "optimizer.lr='abc': must be a number > 0"
    assert _error(cfg("train.batch_size=0")) == "train.batch_size=0: must be an integer >= 1"
    assert _error(cfg("trainer.precision=bogus")).startswith(
        "trainer.precision='bogus': must be one of 32-true, bf16-mixed, 16-mixed, ")
    assert _error(cfg("data.name=../../x")).startswith("data.name='../../x': a name, not a path: ")


def test_a_command_checks_only_what_it_reads(cfg):
    c = cfg("trainer.precision=bogus", "optimizer.lr=abc")
    for command in ("style", "predict", "report", "summary", "prepare"):
        validate(c, command)
    assert _error(c, "train").startswith("optimizer.lr=")
    assert _error(cfg("style.iterations=0"), "style").startswith("style.iterations=")


def test_a_params_file_validates_the_same(cfg, tmp_path):
    """`--params params.yaml` loads a plain file, interpolations unresolved: the same checks apply."""
    (tmp_path / "params.yaml").write_text(OmegaConf.to_yaml(cfg()))
    c = OmegaConf.load(tmp_path / "params.yaml")
    validate(c, "params")
    c.runs.transfer.train.batch_size = 0
    assert _error(c).startswith("runs.transfer.train.batch_size=0: ")


def test_unknown_keys_pass(cfg):
    validate(cfg("+model.net.new_option=1", "+trainer.benchmark=true", "+paths.extra_dir=x", "+notes=hi"),
             "params")


@pytest.mark.parametrize("good", ["seed_mnist_cnn-fashion_mnist", "resnet18-cifar10", "a.b+c=d", "x" * 100])
def test_names_are_names(good):
    Config.model_validate({"style": {"name": good}})


@pytest.mark.parametrize("bad", ["", ".", "..", ".hidden", "a/b", "a\\b", "a\0b", "x" * 101, "../../x", 3])
def test_names_are_not_paths(bad):
    with pytest.raises(ValidationError):
        Config.model_validate({"style": {"name": bad}})


def _choices(section: str, key: str) -> set:
    return set(typing.get_args(Config.model_fields[section].annotation.model_fields[key].annotation))


def test_choices_follow_the_code():
    from cnnlab.data.sources import READERS
    from cnnlab.stages.visualize import WHATS
    from cnnlab.style.features import TRUNKS

    assert _choices("data", "source") == set(READERS)
    assert _choices("style", "network") == set(TRUNKS)
    assert _choices("visualize", "what") == set(WHATS)
