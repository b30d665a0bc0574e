from cnnlab.cli import COMMANDS


def test_help_lists_commands(cli):
    out = cli("--help").stdout
    for command in COMMANDS:
        assert command in out


def test_unknown_command_is_one_line(cli):
    p = cli("frobnicate", check=False)
    assert p.returncode == 2
    assert p.stderr.strip() == "cnnlab frobnicate: error: unknown command; valid: " + ", ".join(COMMANDS)


def test_unknown_dataset_lists_choices(cli, workdir):
    p = cli("prepare", "data=nope", check=False)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1
    assert "data/nope" in p.stderr and "fashion_mnist, image_folder, mnist, synthetic" in p.stderr
    assert not (workdir / "data").exists()


def test_unknown_key_lists_valid_keys(cli):
    p = cli("prepare", "data.val_sise=10", check=False)
    assert p.returncode == 2
    line = p.stderr.strip()
    assert "\n" not in line and "unknown key 'data.val_sise'" in line and "val_size" in line
    assert "Traceback" not in p.stderr


def test_cfg_job_prints_resolved_config(cli):
    out = cli("prepare", "data=cifar10", "data.val_size=1234", "--cfg", "job").stdout
    assert "name: cifar10" in out and "val_size: 1234" in out


def test_user_error_one_line_and_debug_traceback(cli):
    p = cli("prepare", "data=image_folder", check=False)
    assert p.returncode == 2
    assert p.stderr.strip() == ("cnnlab prepare: error: image_folder needs data.root=<dir or archive with "
                                "train/<class>/*.jpg>")
    p = cli("prepare", "data=image_folder", "--debug", check=False)
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_summary_prints_seed_param_counts(cli):
    for model, total in [("seed_mlp", "669,706"), ("seed_mnist_cnn", "220,234"),
                         ("seed_cifar_cnn", "541,094"), ("seed_cifar_cnn_k2", "528,054")]:
        out = cli("summary", f"model={model}").stdout
        assert f"Total params: {total}" in out.splitlines(), out
