"""The Python API against the binary it drives: pretrain, Run's config, metrics, evaluate,
encoder and embed, and the errors of bad input."""

from __future__ import annotations

import json
import math
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import selfsup
from conftest import SIZE, TINY, selfsup_cli
from selfsup._api import error_message, toml_value


def test_the_installed_package_is_tested() -> None:
    assert Path(selfsup.__file__).is_relative_to(Path(sys.prefix)), selfsup.__file__
    assert (Path(selfsup.__file__).parent / "_bin" / "selfsup").is_file()


VALUES = [3, -2, 0.1, 1e-05, 2.5e20, True, False, "fashion-mnist", 'a "quoted" \\ path\n']


@pytest.mark.parametrize("value", [*VALUES, [32, 64], ["x", 1.5], [], math.inf, -math.inf])
def test_config_values_are_written_as_toml_reads_them(value: object) -> None:
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_nan_and_paths_are_toml() -> None:
    assert math.isnan(tomllib.loads(f"v = {toml_value(math.nan)}")["v"])
    assert tomllib.loads(f"v = {toml_value(Path('/a/b'))}")["v"] == "/a/b"
    with pytest.raises(TypeError, match="config values"):
        toml_value({"nested": 1})


def test_the_binary_s_error_lines_are_the_message() -> None:
    assert error_message("note: x\nerror: bad key\n", 1) == "bad key"
    assert error_message("panicked at y\n", 101) == "panicked at y"
    assert error_message("", 9) == "exited with status 9"


def test_pretrain_streams_progress_and_writes_a_run(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = selfsup.pretrain(
        "rotation", f"folder:{image_folder}", out=tmp_path / "rot", cnn_widths=[4, 8], **TINY
    )
    err = capsys.readouterr().err
    assert "epoch 1/1: mean loss" in err, err
    assert isinstance(run, selfsup.Run) and run.path == tmp_path / "rot"
    with open(run.path / "config.toml", "rb") as f:
        assert run.config == tomllib.load(f)
    assert run.config["cnn_widths"] == [4, 8] and run.config["epochs"] == 1
    assert run.config["data"] == f"folder:{image_folder}"
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    frame = run.metrics
    assert len(frame) == len(lines) > 0
    assert list(frame["loss"].dropna()) == [json.loads(ln)["loss"] for ln in lines if "loss" in ln]


def test_metrics_are_a_list_without_pandas(
    runs: dict[str, selfsup.Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    records = runs["cnn"].metrics
    lines = (runs["cnn"].path / "metrics.jsonl").read_text().splitlines()
    assert records == [json.loads(ln) for ln in lines]


def test_a_config_dict_and_keys_become_set_options(image_folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('method = "rotation"\ncnn_widths = [4, 8]\nepochs = 1\n')
    run = selfsup.pretrain(
        data=f"folder:{image_folder}",
        out=tmp_path / "r",
        config=config,
        quiet=True,
        image_size=SIZE,
        batch_size=32,
        max_steps=1,
    )
    assert run.config["cnn_widths"] == [4, 8] and run.config["max_steps"] == 1
    run = selfsup.pretrain(
        "rotation",
        f"folder:{image_folder}",
        out=tmp_path / "d",
        config={"cnn_widths": [2, 4], "batch_size": 16},
        quiet=True,
        batch_size=32,
        image_size=SIZE,
        max_steps=1,
    )
    assert run.config["cnn_widths"] == [2, 4] and run.config["batch_size"] == 32


def test_a_failing_binary_raises_its_message(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(selfsup.SelfsupError, match="unknown key 'colour'") as e:
        selfsup.pretrain("simclr", f"folder:{image_folder}", out=tmp_path / "x", colour="blue")
    assert e.value.returncode == 1 and "unknown key 'colour'" in e.value.stderr
    with pytest.raises(selfsup.SelfsupError, match="no-such-method"):
        selfsup.pretrain("no-such-method", out=tmp_path / "y", quiet=True)


def test_evaluate_returns_what_selfsup_eval_prints(runs: dict[str, selfsup.Run]) -> None:
    run = runs["cnn"]
    scores = run.evaluate(knn_k=5, probe_epochs=5)
    o = selfsup_cli("eval", "--run", run.path, "--set", "knn_k=5", "--set", "probe_epochs=5")
    assert o.returncode == 0, o.stderr
    printed = re.search(
        r"top-1\s+([\d.]+)%\s+top-5\s+([\d.]+)%\n.*kNN\s+top-1\s+([\d.]+)%", o.stdout
    )
    assert printed, o.stdout
    got = [100 * scores[k] for k in ("linear_top1", "linear_top5", "knn_top1")]
    assert [f"{x:.2f}" for x in got] == list(printed.groups())
    assert scores["feature_dim"] == 8 * 4


def test_the_encoder_gives_embed_s_features(
    runs: dict[str, selfsup.Run],
    embeddings: dict[str, np.ndarray],
    test_images: tuple[torch.Tensor, list[int]],
) -> None:
    x, _ = test_images
    for name in ("cnn", "resnet18", "vit", "vit-resampled", "cpc", "colorization"):
        net = runs[name].encoder()
        assert not net.training, name
        with torch.no_grad():
            got = net(x).numpy()
        diff = np.abs(got - embeddings[name]).max()
        print(
            f"{name}: {type(net).__module__}.{type(net).__name__}, max |torch - embed| = {diff:.2e}"
        )
        assert got.shape == embeddings[name].shape and diff <= 1e-5, (name, diff)


def test_encoder_classes(runs: dict[str, selfsup.Run]) -> None:
    import timm.models
    import torchvision.models

    from selfsup.models import OnLightness, PatchMean, SmallCNN

    assert isinstance(runs["cnn"].encoder(), SmallCNN)
    assert isinstance(runs["resnet18"].encoder(), torchvision.models.ResNet)
    assert isinstance(runs["resnet18"].encoder("timm"), timm.models.ResNet)
    assert isinstance(runs["vit"].encoder(), timm.models.VisionTransformer)
    assert isinstance(runs["cpc"].encoder(), PatchMean)
    assert isinstance(runs["colorization"].encoder(), OnLightness)


def test_embed_takes_a_batch_or_a_folder(
    runs: dict[str, selfsup.Run],
    embeddings: dict[str, np.ndarray],
    test_images: tuple[torch.Tensor, list[int]],
    image_folder: Path,
) -> None:
    run = runs["cnn"]
    x, _ = test_images
    assert np.abs(run.embed(x, batch_size=5).numpy() - embeddings["cnn"]).max() <= 1e-5
    files = selfsup.list_images(image_folder)
    assert len(files) == 80 and files == sorted(files)
    from_folder = run.embed(image_folder)
    held = [files.index(f) for f in files if int(f.stem[3:]) % 5 == 4]
    assert np.abs(from_folder[held].numpy() - embeddings["cnn"]).max() <= 1e-5
    assert run.input_shape() == (3, SIZE, SIZE)


def test_a_folder_of_other_sizes_is_cut_and_scaled(
    runs: dict[str, selfsup.Run], tmp_path: Path
) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    wide = rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)  # 24 wide, 16 high
    Image.fromarray(wide).save(tmp_path / "a.png")
    square = Image.fromarray(wide[:, 4:20]).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    want = torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1).float()[None] / 255
    got = runs["cnn"].embed(tmp_path)
    assert torch.equal(got, runs["cnn"].embed(want))


def test_bad_runs_and_exports_are_clear_errors(
    runs: dict[str, selfsup.Run], tmp_path: Path
) -> None:
    with pytest.raises(selfsup.NotARunError, match="no such run folder"):
        selfsup.Run(tmp_path / "missing")
    with pytest.raises(selfsup.NotARunError, match=r"has no config\.toml"):
        selfsup.Run(tmp_path)
    (tmp_path / "config.toml").write_text('method = "simclr"\n')
    half = selfsup.Run(tmp_path)
    with pytest.raises(selfsup.NotARunError, match=r"checkpoint\.safetensors"):
        half.encoder()
    with pytest.raises(selfsup.NotARunError, match=r"checkpoint\.safetensors"):
        half.evaluate()
    with pytest.raises(selfsup.ExportError, match="no such encoder export"):
        selfsup.load_encoder(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(selfsup.ExportError, match="is not a safetensors file"):
        selfsup.load_encoder(tmp_path / "bad.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(selfsup.ExportError, match="not an encoder written by `selfsup export`"):
        selfsup.load_encoder(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match=r"\[N, 3, 8, 8\]"):
        runs["cnn"].embed(torch.zeros(2, 1, SIZE, SIZE))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        runs["cnn"].embed(tmp_path / "nothing")
