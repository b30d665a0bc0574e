"""Stage `style`: neural style transfer (Gatys et al.) of `style.content` in the style of `style.style`.

Outputs, replaced as a whole (atomic directory) in ${out_dir}/<name>/: result.png (full size), panel.png
(content | styles | result), losses.csv + losses.png (per evaluation), metrics.json (final losses, time,
iterations), run.json (input hashes, git, MLflow run id), config.yaml. One MLflow run tagged stage=style.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab import tracking
from cnnlab.errors import UserError
from cnnlab.io import atomic_dir, write_csv, write_json, write_text
from cnnlab.paths import out_dir
from cnnlab.style.features import TRUNKS, feature_net
from cnnlab.style.figures import loss_curves_png, panel_png
from cnnlab.style.images import image_name, load_image, save_png
from cnnlab.style.transfer import Settings, check, stylise

log = logging.getLogger(__name__)


def _clamped_size(s: DictConfig) -> int:
    size = min(max(int(s.size), s.min_size), s.max_size)
    if size != s.size:
        log.warning("style.size=%d is outside [style.min_size=%d, style.max_size=%d]: using %d", s.size,
                    s.min_size, s.max_size, size)
    return size


def _style_weights(s: DictConfig, n: int) -> list[float]:
    w = [1.0] * n if s.style_weights is None else list(s.style_weights)
    if len(w) != n or any(v < 0 for v in w) or sum(w) <= 0:
        raise UserError(f"style.style_weights={w} must be {n} non-negative number(s), not all 0 "
                        f"(one per style image)")
    return [v / sum(w) for v in w]


def transfer_settings(cfg: DictConfig) -> Settings:
    s = cfg.style
    return Settings(
        content_layers=list(s.content_layers), style_layers=list(s.style_layers),
        content_weight=s.content_weight, style_weight=s.style_weight, tv_weight=s.tv_weight, init=s.init,
        optimizer=s.optimizer, iterations=s.iterations, lr=s.lr, lbfgs_history=s.lbfgs_history,
        lbfgs_chunk=s.lbfgs_chunk, line_search=s.line_search, scales=list(s.scales), min_side=s.min_size,
        preserve_color=s.preserve_color, seed=cfg.seed, channels_last=s.channels_last)


def _progress(total: int):
    """A rich bar on a terminal; otherwise five plain log lines (CI logs, DVC, files)."""
    if sys.stdout.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("style"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       TextColumn("{task.fields[losses]}"), transient=True)
        task = bar.add_task("style", total=total, losses="")

        def update(done, total, row):
            bar.update(task, completed=done,
                       losses=f"content {row['content']:.3g} style {row['style']:.3g} tv {row['tv']:.3g}")
        return bar, update

    every = max(total // 5, 1)

    def update(done, total, row):
        if done % every == 0 or done == total:
            log.info("evaluation %d/%d at %d px: content %.4g, style %.4g, tv %.4g", done, total,
                     row["scale"], row["content"], row["style"], row["tv"])
    return None, update


def run(cfg: DictConfig) -> dict:
    s = cfg.style
    if s.network not in TRUNKS:
        raise UserError(f"style.network={s.network!r}: use {' or '.join(TRUNKS)}")
    styles_spec = [s.style] if isinstance(s.style, str) else list(s.style or [])
    if not styles_spec:
        raise UserError("style.style needs at least one style image")
    weights = _style_weights(s, len(styles_spec))
    settings = transfer_settings(cfg)
    check(settings)  # before loading anything: a typo costs no time
    size = _clamped_size(s)
    content, content_sha = load_image(s.content, size, s.min_size)
    style_size = max(round(size * s.style_scale), s.min_size)
    loaded = [load_image(spec, style_size, s.min_size) for spec in styles_spec]
    styles = [img for img, _ in loaded]
    name = s.name or f"{image_name(s.content)}_{'+'.join(image_name(x) for x in styles_spec)}"
    name = re.sub(r"[^\w.+=-]", "_", name)
    out = out_dir(cfg) / name  # before the optimisation: a refused out_dir costs none of it
    net = feature_net(s.network, settings.content_layers + settings.style_layers, s.weights_path,
                      s.softmax_features, s.softmax_temperature)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if s.device == "auto" else s.device)
    torch.manual_seed(cfg.seed)

    bar, update = _progress(s.iterations * len(settings.scales))
    with bar or contextlib.nullcontext():
        result = stylise(net, content, styles, weights, settings, device, update)

    h, w = result.image.shape[-2:]
    metrics = {**{f"{k}_loss": v for k, v in result.final.items()}, "time_s": round(result.seconds, 2),
               "iterations": len(result.history), "lbfgs_restarts": result.restarts, "height": h, "width": w,
               "device": device.type}
    if result.restarts:
        log.warning("L-BFGS ran away %d time(s) and restarted from the best image: lower "
                    "style.style_weight or set style.line_search=strong_wolfe", result.restarts)
    params = {f"style.{k}": v for k, v in tracking.flatten(s).items() if not k.startswith("presets.")}
    run_id = tracking.new_run(cfg, f"style-{name}", {**params, "seed": cfg.seed},
                              {"stage": "style", "network": s.network})
    inputs = [{"image": spec, "sha256": sha, "weight": wt}
              for spec, (_, sha), wt in zip(styles_spec, loaded, weights)]
    with atomic_dir(out) as tmp:
        save_png(result.image, tmp / "result.png")
        titles = [f"content: {image_name(s.content)}"]
        titles += [f"style: {image_name(x)}" + (f" ({wt:.2g})" if len(weights) > 1 else "")
                   for x, wt in zip(styles_spec, weights)]
        titles.append("result" + (" (colours kept)" if s.preserve_color else ""))
        panel_png([content, *styles, result.image], titles, tmp / "panel.png")
        write_csv(result.history, tmp / "losses.csv")
        loss_curves_png(result.history, tmp / "losses.png", f"{name}: {s.network}"
                        + (", SWAG" if s.softmax_features else "") + f", {s.optimizer}")
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "run.json", {"content": {"image": s.content, "sha256": content_sha},
                                      "styles": inputs,
                                      "mlflow_run_id": run_id, "torch_threads": torch.get_num_threads(),
                                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                                      **tracking.run_tags(cfg)})
        write_text(tmp / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(
            {"seed": cfg.seed, "style": OmegaConf.to_container(s, resolve=True)})))
    files = sorted(out.iterdir())
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    tracking.log_run_files(cfg, run_id, {"style": files}, numbers, finish="FINISHED")
    log.info("%s: %d×%d px, %d evaluations in %.1f s (content %.3g, style %.3g, tv %.3g) → %s", name, w, h,
             metrics["iterations"], result.seconds, result.final["content"], result.final["style"],
             result.final["tv"], out)
    return metrics
