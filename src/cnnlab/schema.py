"""One schema for the composed config (pydantic v2): a wrong type or range fails before a run starts, as one
line naming the key, the bad value and what is allowed, not as a traceback deep in torch or Lightning.

It reads the composed DictConfig (conf/ + overrides, or a params.yaml), not Hydra structured configs: DVC
composes conf/ itself and `--params` loads a plain file, and both get the same checks. A key present must hold
a valid value; a key absent passes (the stage that needs it says so); unknown keys pass (nets take their own
options, new features add keys, and Hydra already rejects unknown override keys).
"""

import re
import typing
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from cnnlab.errors import UserError

NAME = re.compile(r"[\w+=-][\w.+=-]{0,99}")  # no separators; no leading dot (hidden files, `.` and `..`)
NAME_RULE = ("a name, not a path: letters, digits and . _ - + = only, not starting with ., "
             "at most 100 characters")


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)



def _strategy(value: str) -> str:
    if value not in STRATEGIES:  # the rarer names (ddp_find_unused_parameters_true, ...): a 3-5 s import
        from pytorch_lightning.strategies import StrategyRegistry

        if value not in StrategyRegistry.available_strategies():
            raise ValueError(value)
    return value


def rule(tp: Any, says: str, **limits: Any) -> Any:
    """`tp` with pydantic's limits, and the words an error shows (pydantic's name neither key nor choices)."""
    return Annotated[Annotated[tp, Field(**limits)] if limits else tp, Field(description=says)]


def one_of(*choices: Any) -> Any:
    shown = dict.fromkeys("null" if c is None else str(c) for c in choices)  # precision: 32 and "32" once
    return rule(Literal[choices], "must be one of " + ", ".join(shown))


def or_null(tp: Any) -> Any:
    says = next(m.description for m in reversed(tp.__metadata__) if getattr(m, "description", None))
    return rule(tp | None, "must be null or " + says.removeprefix("must be "))


Ge1 = Annotated[int, Field(ge=1)]
Int = rule(int, "must be an integer")
Count = rule(int, "must be an integer >= 1", ge=1)
Count0 = rule(int, "must be an integer >= 0", ge=0)
Pos = rule(float, "must be a number > 0", gt=0)
NonNeg = rule(float, "must be a number >= 0", ge=0)
Unit = rule(float, "must be a number in [0, 1]", ge=0, le=1)
Below1 = rule(float, "must be a number in [0, 1)", ge=0, lt=1)
Bool = rule(bool, "must be true or false")
Str = rule(str, "must be a non-empty string", min_length=1)
OptStr = or_null(Str)
Strs = rule(list[int | str], "must be a list of names")  # Hydra reads layers=[0,3] as ints
Name = rule(str, NAME_RULE, pattern=f"^{NAME.pattern}$")
Locations = rule(dict[str, Annotated[str, Field(min_length=1)]], "must be a non-empty string (a location)")
Device = rule(str, "must be auto, cpu, cuda, cuda:N or mps", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
Partial = rule(Literal[True], "must be true (the callee's first arguments come at run time)")
Shape = or_null(rule(list[Ge1], "must be [channels, height, width], integers >= 1",
                     min_length=3, max_length=3))
Size = rule(Ge1 | Annotated[float, Field(gt=0, lt=1)],
            "must be an integer >= 1 (images) or a fraction in (0, 1) of the training images")
Limit = or_null(rule(Ge1 | Annotated[float, Field(gt=0, le=1)],
                     "must be an integer >= 1 (batches) or a fraction in (0, 1]"))
# Lightning's precisions; from 32 on the legacy spellings it still takes
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", 32, 16, 64, "32", "16", "64", "bf16")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "fsdp", "deepspeed", "single_device")


# strict: the stages read the config, not this model: "1e-3" must not pass as 0.001 (torch gets the str)
STRICT = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


def section(name: str, /, **fields: Any) -> type[BaseModel]:
    """A config section whose keys may all be absent; `_target_`-style keys become aliases."""
    return create_model(name, __config__=STRICT, **{
        k.strip("_"): (t, Field(None, alias=k) if k[0] == "_" else None) for k, t in fields.items()})


Data = section(
    "Data", name=Name, source=one_of("mnist", "cifar", "image_folder", "synthetic"),  # data.sources.READERS
    val_size=Size, test_size=Size,  # a count or a fraction; 0 would leave val/acc unlogged
    split_seed=Int, image_size=Count, channels=one_of(1, 3), download=Bool, root=OptStr,
    num_workers=Count0, skip_bad_images=Bool,
    num_train=Count, num_test=Count, num_classes=Count, contrast=NonNeg, noise=NonNeg, seed=Int)  # synthetic
Net = section(  # options several nets share; each net checks its own when it is built
    "Net", _target_=Str, dropout=Below1, image_size=Count, mode=one_of("linear_probe", "finetune", "gradual"),
    widths=rule(list[Ge1], "must be a non-empty list of integers >= 1", min_length=1),
    hidden=Count0, backbone_lr_scale=NonNeg, unfreeze_every=Count)
Optimizer = section(
    "Optimizer", _target_=Str, _partial_=Partial, lr=Pos, weight_decay=NonNeg,
    momentum=Below1, batch_size=Count)  # nesterov_sgd divides by 1 - momentum, counts lr per 1024 images
Scheduler = section(
    "Scheduler", _target_=Str, _partial_=Partial, warmup_epochs=NonNeg, min_factor=Unit, pct_start=Unit,
    div_factor=Pos, final_div_factor=Pos, step_epochs=Count, gamma=Pos, start_factor=NonNeg, peak_at=Unit,
    end_factor=NonNeg)
Trainer = section(  # keyword arguments of pytorch_lightning.Trainer
    "Trainer", accelerator=one_of("cpu", "gpu", "cuda", "mps", "tpu", "auto"),
    devices=rule(Ge1 | Literal[-1, "auto"] | Annotated[list[Count0], Field(min_length=1)],
                 "must be an integer >= 1, -1 (all), auto or a list of device indices"),
    num_nodes=Count,
    strategy=rule(Annotated[str, AfterValidator(_strategy)],
                  f"must be one of {', '.join(STRATEGIES)} or another name in Lightning's StrategyRegistry"),
    precision=one_of(*PRECISIONS),
    max_epochs=Count,
    max_time=or_null(rule(Annotated[str, Field(pattern=r"^\d+:\d+:\d+:\d+$")] | dict[
        Literal["days", "hours", "minutes", "seconds"], Annotated[float, Field(ge=0)]],
        'must be "DD:HH:MM:SS" or {days, hours, minutes, seconds: numbers >= 0}')),
    gradient_clip_val=or_null(NonNeg), log_every_n_steps=Count,  # 0: Lightning divides by it
    num_sanity_val_steps=rule(int, "must be an integer >= -1 (-1: all)", ge=-1),
    limit_train_batches=Limit, limit_val_batches=Limit)
Train = section(
    "Train", batch_size=Count, eval_batch_size=Count,  # divisible by the DDP world size: the loader's check
    drop_last=Bool, per_class=or_null(Count), subset_seed=Int,
    label_smoothing=Below1,  # 1 makes every target uniform
    channels_last=Bool, compile=Bool,
    monitor=one_of("val/acc", "val/loss", "train/acc", "train/loss"),  # what Classifier logs
    monitor_mode=one_of("max", "min"), early_stopping_patience=Count0,
    average=section("Average", mode=one_of(None, "ema", "lookahead"), every=Count, decay=Unit,
                    warmup_power=NonNeg) | None,  # null: off, as mode: null
    augment=section("Augment", crop_padding=Count0, flip=Bool, alternate_flip=Bool, cutout=Count0))
Style = section(
    "Style", content=Str,
    style=rule(Str | Annotated[list[str], Field(min_length=1)], "must be an image or a list of images"),
    style_weights=or_null(rule(list[Annotated[float, Field(ge=0)]], "must be a list of numbers >= 0")),
    name=or_null(Name), size=Count, min_size=Count, max_size=Count, style_scale=Pos,
    scales=rule(list[Annotated[float, Field(gt=0, le=1)]], "must be a non-empty list of fractions of size in "
                "(0, 1]", min_length=1),
    network=one_of("efficientnet_lite0", "vgg19"),  # style.features.TRUNKS
    weights_path=OptStr, content_layers=Strs, style_layers=Strs, softmax_features=Bool,
    softmax_temperature=rule(Literal["auto"] | Annotated[float, Field(gt=0)], "must be auto or a number > 0"),
    content_weight=NonNeg, style_weight=NonNeg, tv_weight=NonNeg, init=one_of("content", "style", "noise"),
    optimizer=one_of("lbfgs", "adam"), iterations=Count, lr=or_null(Pos), lbfgs_history=Count,
    lbfgs_chunk=Count, line_search=one_of(None, "strong_wolfe"), preserve_color=Bool, device=Device,
    channels_last=Bool)
Visualize = section(
    "Visualize", what=one_of("kernels", "filters", "feature_maps", "gradcam", "saliency"),  # visualize.WHATS
    image=OptStr, ckpt=OptStr, backbone=Str, weights_path=OptStr, layers=Strs,
    target_class=rule(int | str | None, "must be null, a class name or an index"), num_images=Count,
    max_maps=Count, image_size=Count, device=Device, dpi=Count)
Config = section(
    "Config",
    seed=rule(int, "must be an integer in [0, 4294967295]", ge=0, le=2**32 - 1),  # numpy's range: Lightning
    deterministic=Bool, resume=Bool, run_name=Str, out_dir=OptStr,              # raises (a traceback) outside
    paths=Locations, pipeline=Locations, data=Data,
    model=section("Model", name=Str, input_shape=Shape, net=Net), optimizer=Optimizer,
    scheduler=Scheduler | None, trainer=Trainer, train=Train,  # scheduler null or {}: a constant lr
    tracking=section("Tracking", enabled=Bool, uri=OptStr, experiment=Str, registered_model=or_null(Name),
                     alias=Str, alias_if_better=OptStr), style=Style, visualize=Visualize,
    evaluate=section("Evaluate", ckpt=OptStr, device=Device, batch_size=Count, tta=Bool, grid_size=Count0,
                     mistakes=Count0, gradcam=Count0),
    predict=section("Predict", ckpt=OptStr, image=OptStr, top_k=Count, backbone=Str, weights_path=OptStr,
                    batch_size=Count, output=OptStr,
                    center_crop=rule(float, "must be a number in (0, 1]", gt=0, le=1)),
    summary=section("Summary", input_shape=Shape, num_classes=or_null(Count)),  # null: 10
    report=section("Report", history=Bool),
    export=section("Export", source=OptStr, formats=Strs, input_dtype=one_of("uint8", "float32"),
                   atol=Pos, check_images=Count),
    promote=section("Promote", study=OptStr, sweep=OptStr, name=OptStr, run=Bool),
    runs=dict[str, dict])  # each run is also checked laid over the root (select_run)

# The top-level keys each command reads; a command not listed gets everything checked.
SECTIONS = {
    "params": tuple(Config.model_fields),
    "prepare": ("paths", "data"),
    "summary": ("model", "summary"),
    "train": ("seed", "deterministic", "resume", "run_name", "out_dir", "paths", "data", "model", "optimizer",
              "scheduler", "trainer", "train", "tracking"),
    "evaluate": ("seed", "run_name", "out_dir", "paths", "data", "evaluate", "tracking"),
    "predict": ("predict", "tracking"),
    "style": ("seed", "out_dir", "paths", "style", "tracking"),
    "visualize": ("seed", "out_dir", "paths", "data", "visualize"),
    "report": ("run_name", "out_dir", "paths", "pipeline", "report"),
    "promote": ("paths", "promote"),
    "export": ("out_dir", "paths", "data", "export", "tracking"),
}
# Where a command puts its work: a GPU asked for where there is none fails late (after loading data) and deep.
DEVICE_KEYS = {"train": "trainer.accelerator", "evaluate": "evaluate.device", "style": "style.device",
               "visualize": "visualize.device"}
# Where the config builds objects (hydra.utils.instantiate), the modules conf/ takes them from there and the
# other Hydra keys it sets: any other _target_ calls any importable function with the config's arguments
# (`+scheduler._target_=builtins.open +scheduler.file=x +scheduler.mode=w` truncates x), and a nested one is
# built too (Hydra instantiates recursively).
BUILT = {"model.net": (("cnnlab.models.",), {}),
         "optimizer": (("torch.optim.", "cnnlab.tasks.optim."), {"_partial_": True}),
         "scheduler": (("cnnlab.tasks.schedules.",), {"_partial_": True})}
# Training images in the official files (md5-checked, so fixed): val_size must leave some to train on.
TRAIN_SIZES = {"MNIST": 60_000, "FashionMNIST": 60_000, "CIFAR10": 50_000, "CIFAR100": 50_000}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return next((t for t in (annotation, *typing.get_args(annotation))
                 if isinstance(t, type) and issubclass(t, BaseModel)), None)


def _one_line(e: ValidationError, data: dict, prefix: str) -> str:
    """The first error as `key=value: what is allowed`, the key dotted from its loc."""
    err = e.errors()[0]
    cls, key, says, value = Config, [], None, data
    for part in err["loc"]:
        fields = {f.alias or n: f for n, f in cls.model_fields.items()} if cls else {}
        if part in fields:
            says, cls = fields[part].description, _model_of(fields[part].annotation)
        elif not (cls is None and isinstance(value, dict) and part in value):  # a key inside a plain dict
            break  # a list index or a union member's tag: the key so far is the one to name
        key.append(str(part))
        value = value.get(part) if isinstance(value, dict) else None
    return f"{prefix}{'.'.join(key)}={_show(value)}: {says or err['msg']}"


def _fail(key: str, value: Any, says: str) -> None:
    raise UserError(f"{key}={_show(value)}: {says}")


def _cross(c: dict, prefix: str) -> None:
    """Rules between keys, on values the schema has passed."""
    d, t, s = c.get("data") or {}, c.get("train") or {}, c.get("style") or {}
    n = d.get("num_train") if d.get("source") == "synthetic" else TRAIN_SIZES.get(d.get("torchvision_name"))
    if n is not None and isinstance(d.get("val_size"), int) and d["val_size"] >= n:  # image_folder: unknown
        _fail(f"{prefix}data.val_size", d["val_size"], f"must be smaller than the {n} training images")
    mode = {"acc": "max", "loss": "min"}.get(str(t.get("monitor")).rpartition("/")[2])
    if mode and t.get("monitor_mode") not in (None, mode):  # the wrong way round keeps the worst checkpoint
        _fail(f"{prefix}train.monitor_mode", t["monitor_mode"], f"must be {mode} for {t['monitor']}")
    if s.get("min_size") and s.get("max_size") and s["min_size"] > s["max_size"]:
        _fail(f"{prefix}style.min_size", s["min_size"], f"must be <= style.max_size ({s['max_size']})")


def _targets(node: Any, prefix: str, key: str = "") -> None:
    """Hydra's keys (`_target_`, `_partial_`, `_args_`, ...) only where BUILT allows them, as it allows."""
    if isinstance(node, list):
        for i, v in enumerate(node):
            _targets(v, prefix, f"{key}[{i}]")
    if not isinstance(node, dict):
        return
    modules, keys = BUILT.get(key, ((), {}))
    if modules and node:  # an object cnnlab builds ({}: a scheduler that is none)
        target = node.get("_target_")
        if not (isinstance(target, str) and target.startswith(modules)):
            _fail(f"{prefix}{key}._target_", target,
                  f"must be in {' or '.join(m[:-1] for m in modules)}: the config builds nothing else here")
        for k, v in keys.items():
            if node.get(k) != v:
                _fail(f"{prefix}{key}.{k}", node.get(k), f"must be {_show(v)}")
    allowed = {"_target_", *keys} if modules else set()
    if bad := [k for k in node if str(k).startswith("_") and k not in allowed]:
        _fail(prefix + (f"{key}.{bad[0]}" if key else bad[0]), node[bad[0]],
              f"not allowed: conf/ sets only {', '.join(sorted(allowed))} here" if allowed else
              f"Hydra keys only where cnnlab builds an object ({', '.join(BUILT)})")
    for k, v in node.items():
        if k != "runs" or key:  # each run is checked laid over the root (validate)
            _targets(v, prefix, f"{key}.{k}" if key else str(k))


def _gpu_check(c: dict, key: str, prefix: str) -> None:
    top, _, leaf = key.partition(".")
    value = (c.get(top) or {}).get(leaf)
    if value not in ("gpu", "cuda") and not str(value).startswith("cuda:"):
        return
    import torch

    # Lightning's "gpu" is MPS too (Apple silicon)
    if not (torch.cuda.is_available() or (value == "gpu" and torch.backends.mps.is_available())):
        _fail(prefix + key, value, "no CUDA GPU is visible here (torch.cuda.is_available() is False); "
              "use cpu or auto")


def _check(cfg: DictConfig, keys: tuple, prefix: str) -> dict:
    data = {}
    for k in keys:
        if k in cfg:  # one section at a time: a broken interpolation elsewhere is not this command's business
            try:
                node = cfg[k]
                data[k] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            except OmegaConfBaseException as e:
                key = getattr(e, "full_key", None) or k
                raise UserError(f"{prefix}{key}: cannot resolve ({str(e).splitlines()[0]})") from None
    try:
        Config.model_validate(data)
    except ValidationError as e:
        raise UserError(_one_line(e, data, prefix)) from None
    _cross(data, prefix)
    _targets(data, prefix)
    return data


def validate(cfg: DictConfig, command: str, run: str | None = None, sweep: bool = False) -> None:
    """Raise cnnlab.errors.UserError with ONE line naming the key, the bad value and what is allowed.

    Checks the sections `command` reads in the root config and in every `runs.<name>` laid over it (the runs
    a pipeline trains too), naming keys as written (`runs.transfer.optimizer.lr`): pass the root config, not
    select_run's. The GPU check applies to the config the command runs: `runs.<run>` (`--run`), else the root;
    `sweep`: the config is one job of a multirun.
    """
    from cnnlab.config import select_run  # not at the top: config may come to import this module

    keys = SECTIONS.get(command, tuple(Config.model_fields))
    if missing := [k for k in keys if k not in cfg]:  # a section a composed config always has
        raise UserError(f"{missing[0]}: missing, and `cnnlab {command}` reads it: not a config composed from "
                        "conf/ (`cnnlab params` writes one)")
    checked = {None: _check(cfg, keys, "")}
    runs = cfg.get("runs")
    for name in runs if OmegaConf.is_dict(runs) else ():
        if OmegaConf.is_dict(runs[name]):  # a run that is no mapping is for `params` to report
            checked[name] = _check(select_run(cfg, name), keys, f"runs.{name}.")
    if run not in checked:
        select_run(cfg, run)  # raises: unknown run, naming the valid ones
    if command in DEVICE_KEYS:
        _gpu_check(checked[run], DEVICE_KEYS[command], f"runs.{run}." if run else "")
    trainer = checked[run].get("trainer") or {}
    if sweep and command == "train" and trainer.get("strategy") == "ddp" and trainer.get("devices") != 1:
        raise UserError("strategy=ddp inside a multirun re-launches the whole sweep in every process (a "
                        "Lightning + Hydra limitation): use trainer.strategy=ddp_spawn, or one launcher job "
                        "per GPU set (hydra/launcher=slurm)")
