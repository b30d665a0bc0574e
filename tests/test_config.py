"""Config rules that everything else relies on: named runs laid over the root, overrides meant for a run,
params files with overrides, and how a params file drifted from conf/."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cnnlab.config import compose, differing_keys, drift, for_run, load_params, note_params, select_run
from cnnlab.errors import UserError


def test_select_run_replaces_groups_whole_and_merges_the_rest(cfg):
    c = cfg("model.net.hidden=32")
    t = select_run(c, "transfer")
    assert t.model.name == "efficientnet_lite0" and "hidden" not in t.model.net  # replaced, not mixed
    assert t.train.per_class == 100 and t.trainer.max_epochs == 5  # the run's own train/trainer
    assert t.data == c.data and t.seed == c.seed  # what the run does not set comes from the root
    with pytest.raises(UserError, match="unknown run 'nope'; runs in the config: transfer"):
        select_run(c, "nope")


def test_overrides_of_a_run_section_go_to_the_run():
    keys = ["run_name", "model", "optimizer", "scheduler", "train", "trainer"]
    assert for_run("transfer", keys, ["trainer.max_epochs=1", "model=timm", "data=synthetic", "+train.x=1",
                                      "run_name=t"]) == [
        "runs.transfer.trainer.max_epochs=1", "model@runs.transfer.model=timm", "data=synthetic",
        "+runs.transfer.train.x=1", "runs.transfer.run_name=t"]
    composed = select_run(compose(for_run("transfer", keys, ["trainer.max_epochs=1"])), "transfer")
    assert composed.trainer.max_epochs == 1 and compose().trainer.max_epochs == 10


def test_load_params_overrides_and_errors(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(OmegaConf.to_yaml(compose()))
    c = load_params(path, ["optimizer.lr=0.5", "+notes=x", "trainer.max_epochs=2"], run="transfer")
    assert c.runs.transfer.optimizer.lr == 0.5 and c.runs.transfer.trainer.max_epochs == 2 and c.notes == "x"
    assert c.optimizer.lr == 0.001 and c.trainer.max_epochs == 10  # with --run transfer, the run got them
    with pytest.raises(UserError, match="unknown key 'optimizer.lrr'"):
        load_params(path, ["optimizer.lrr=1"])
    with pytest.raises(UserError, match="only key=value overrides apply"):
        load_params(path, ["~seed"])
    with pytest.raises(UserError, match="does not exist"):
        load_params(tmp_path / "none.yaml", [])


def test_drift_names_the_keys_a_hand_edit_changed(cfg, tmp_path, workdir):
    c = compose()
    OmegaConf.resolve(c)
    text = OmegaConf.to_yaml(c)
    assert differing_keys(text, text) == []
    (tmp_path / "params.yaml").write_text(text.replace("lr: 0.001", "lr: 0.005"))  # paths.params_file
    assert drift(cfg(), tmp_path / "params.yaml") == ["optimizer.lr", "runs.transfer.optimizer.lr"]
    (tmp_path / "run.yaml").write_text(text.replace("lr: 0.001", "lr: 0.005"))  # a run's config
    assert drift(cfg(), tmp_path / "run.yaml") == []
    note_params(cfg(), tmp_path / "params.yaml")  # what `dvc exp run -S` composed: no hand edit
    assert drift(cfg(), tmp_path / "params.yaml") == []


def test_params_says_which_experiment_values_it_resets(workdir, caplog):
    """What `dvc exp run -S` composed into params.yaml is no hand edit, so `cnnlab params` (`make run`) may
    replace it — naming the keys it resets, not silently."""
    from cnnlab.config import note_params
    from cnnlab.stages import params

    params.run(compose([]))
    text = (workdir / "params.yaml").read_text()
    (workdir / "params.yaml").write_text(text.replace("lr: 0.001", "lr: 0.003", 1))
    note_params(compose([]), workdir / "params.yaml")  # as the stages of `dvc exp run -S optimizer.lr=...` do
    with caplog.at_level("WARNING"):
        params.run(compose([]))
    assert (workdir / "params.yaml").read_text() == text
    assert "optimizer.lr reset to conf/'s value" in caplog.text
