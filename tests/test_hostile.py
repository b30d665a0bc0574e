"""Hostile and mistaken input through the real CLI: every case is exit code 2 and one line on stderr naming
the key or file, no traceback — and a good run's folder and the prepared data are byte-identical
afterwards."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from conftest import refused, run_cli, snapshot

TINY = ["debug=tiny", "tracking.enabled=false"]




class Evil:
    """Unpickling this would run a shell command: a checkpoint is data, never code."""

    def __reduce__(self):
        return (__import__("os").system, ("touch pwned",))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project with prepared data, one good run (good/) and bad files to hand the CLI."""
    d = tmp_path_factory.mktemp("hostile")
    run_cli("prepare", "data=synthetic", cwd=d)
    run_cli("train", *TINY, "out_dir=good", cwd=d)
    (d / "text.ckpt").write_text("not a checkpoint\n")
    (d / "truncated.ckpt").write_bytes((d / "good/model/best.ckpt").read_bytes()[:5000])
    (d / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    shutil.copytree(d / "good", d / "corrupt")
    (d / "corrupt/model/last.ckpt").write_bytes(b"PK\x03\x04 garbage")
    (d / "photo.png").write_bytes(b"\x89PNG but no more")
    run_cli("params", "data=synthetic", cwd=d)
    (d / "params.yaml").write_text((d / "params.yaml").read_text().replace("lr: 0.001", "lr: 0.005"))
    return d


# Value rules are tested one by one in-process (test_schema.py); here a few of them through the real CLI, and
# every other class of mistake.
CASES = [  # (command line, what the one line must say)
    (["train", *TINY, "optimizer.lr=abc"], "optimizer.lr='abc': must be a number > 0"),
    (["train", *TINY, "trainer.accelerator=gpu"], "trainer.accelerator='gpu'"),
    (["train", *TINY, "data.name=../../x"], "data.name='../../x': a name, not a path"),
    (["train", *TINY, f"data.name={'x' * 300}"], "data.name="),
    (["style", "style.name=../escape"], "style.name='../escape'"),
    (["evaluate", "data=synthetic", "evaluate.device=cuda", "out_dir=good"], "evaluate.device='cuda'"),
    (["train", *TINY, "optimizer.lrr=1"], "unknown key 'optimizer.lrr'"),
    (["train", *TINY, "model=nope"], "model"),
    (["train", *TINY, "--run", "nope"], "unknown run 'nope'"),
    (["train", *TINY, "--force"], "--force applies to `cnnlab params` only"),
    (["train", "--params", "missing.yaml"], "params file missing.yaml does not exist"),
    (["train", "--params", "params.yaml", "optimizer.lr=abc", "out_dir=good"], "optimizer.lr='abc'"),
    (["params", "data=synthetic"], "params.yaml was changed by hand since it was generated"),
    (["train", *TINY, "out_dir=good", "resume=true", "model=seed_mlp"], "resume=true: model differs"),
    (["train", *TINY, "out_dir=corrupt", "resume=true"],
     "cannot resume: corrupt/model/last.ckpt is not a valid"),
    (["train", *TINY, "out_dir=nothing", "resume=true"],
     "resume=true but there is no nothing/model/last.ckpt"),
    (["evaluate", "data=synthetic", "out_dir=nothing"], "nothing to evaluate in nothing"),
    (["evaluate", "data=synthetic", "evaluate.ckpt=text.ckpt"], "text.ckpt is not a valid cnnlab checkpoint"),
    (["evaluate", "data=synthetic", "evaluate.ckpt=truncated.ckpt"], "truncated.ckpt"),
    (["evaluate", "data=synthetic", "evaluate.ckpt=evil.ckpt"], "evil.ckpt is not a valid cnnlab checkpoint"),
    (["evaluate", "data=synthetic", "evaluate.ckpt=nope.ckpt"], "nope.ckpt: no such checkpoint"),
    (["predict", "predict.ckpt=text.ckpt", "predict.image=photo.png"], "text.ckpt is not a valid cnnlab"),
    (["predict", "predict.ckpt=good/model/best.ckpt", "predict.image=photo.png"],
     "cannot read image photo.png"),
    (["visualize", "visualize.what=filters", "visualize.ckpt=evil.ckpt"], "evil.ckpt is not a valid cnnlab"),
    (["visualize", "visualize.what=everything"], "visualize.what='everything'"),
    (["style", "style.content=nope.png"], "image nope.png does not exist"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, says", CASES,
                         ids=[" ".join(a).replace(" ".join(TINY), "…")[:70] for a, _ in CASES])
def test_refused_in_one_line_and_nothing_changes(project, args, says):
    before = snapshot(project / "good", project / "data")
    refused(args, says, cwd=project)
    assert snapshot(project / "good", project / "data") == before
    assert not (project / "pwned").exists()
