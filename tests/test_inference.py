"""Inference outside the training loop: image files -> model input, the `jax.export`
artifact (reloaded in a process without the model code), and `experiments.predict`."""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import export, predict
from experiments.configs import default, tiny
from regionatt_jax import train, viz
from regionatt_jax.train import inference
from regionatt_jax import nn as rn

SAMPLE_SHAPE = (32, 32, 1)  # the default model, on smaller canvases
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def model_and_variables():
  model = rn.build_model(default.get_config().model, num_classes=NUM_CLASSES)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SAMPLE_SHAPE))
  # Running statistics unlike a batch's, so that a model run in training mode differs.
  stats = jax.tree.map(lambda v: v * 1.5 + 0.1, variables["batch_stats"])
  return model, {**variables, "batch_stats": stats}


@pytest.fixture(scope="module")
def exported_path(model_and_variables, tmp_path_factory):
  model, variables = model_and_variables
  exported = inference.export_inference(model, variables, SAMPLE_SHAPE)
  path = tmp_path_factory.mktemp("export") / "model.jaxexport"
  path.write_bytes(exported.serialize())
  return str(path)


def _pixels(shape, seed=0):
  return np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)


def _reference_probabilities(model, variables, image):
  """Softmax of the model applied directly (Flax, no jit, no export) to one image."""
  x = inference.model_input(image, SAMPLE_SHAPE)[None]
  logits = np.asarray(model.apply(variables, x, train=False), np.float64)[0]
  return np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()


# ------------------------------------------------------------------- reading images


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3), ("RGBA", 3), ("LA", 1),
                                           ("P", 3), ("1", 1)])
def test_read_png_modes(tmp_path, mode, channels):
  rgb = _pixels((7, 11, 3))
  source = Image.fromarray(rgb).convert(mode)
  source.save(tmp_path / "x.png")
  image = inference.read_image(str(tmp_path / "x.png"))
  expected = np.asarray(source.convert("L" if channels == 1 else "RGB"))
  assert image.dtype == np.uint8 and image.shape == (7, 11, channels)
  np.testing.assert_array_equal(image.reshape(expected.shape), expected)


def test_read_16_bit_gray_png_keeps_high_byte(tmp_path):
  values = np.random.RandomState(1).randint(0, 65536, (5, 6)).astype(np.uint16)
  Image.fromarray(values).save(tmp_path / "x.png")
  image = inference.read_image(str(tmp_path / "x.png"))
  np.testing.assert_array_equal(image[..., 0], values >> 8)


def test_read_jpeg_applies_exif_orientation(tmp_path):
  gradient = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (12, 1))  # (12, 30), left dark
  exif = Image.Exif()
  exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to show
  Image.fromarray(gradient).save(tmp_path / "x.jpg", exif=exif, quality=95)
  image = inference.read_image(str(tmp_path / "x.jpg"))
  assert image.shape == (30, 12, 1)
  # Rotated clockwise, the stored left column is the top row.
  assert image[:3].mean() < image[-3:].mean() - 100


# ------------------------------------------------------------------- model input


def test_model_input_same_size_is_the_pipeline_scaling():
  image = _pixels((32, 32, 1))
  np.testing.assert_array_equal(inference.model_input(image, (32, 32, 1)),
                                image.astype(np.float32) / 127.5 - 1)


def test_model_input_rgb_to_gray_uses_luma():
  image = _pixels((8, 8, 3))
  luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  out = inference.model_input(image, (8, 8, 1))[..., 0]
  np.testing.assert_allclose((out + 1) * 127.5, luma, atol=1.0)


def test_model_input_gray_to_rgb_repeats():
  image = _pixels((8, 8, 1))
  out = inference.model_input(image, (8, 8, 3))
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], image[..., 0].astype(np.float32) / 127.5 - 1)


def test_model_input_resizes_without_swapping_axes():
  # 30x80 image: top-left quarter white, the rest black -> 10x16: same quarter white.
  image = np.zeros((30, 80, 1), np.uint8)
  image[:15, :40] = 255
  out = inference.model_input(image, (10, 16, 1))[..., 0]
  assert out.shape == (10, 16)
  np.testing.assert_allclose(out[:4, :7], 1.0, atol=1e-6)
  np.testing.assert_allclose(out[6:, :], -1.0, atol=1e-6)
  np.testing.assert_allclose(out[:, 9:], -1.0, atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8),
                                 np.zeros((4, 4, 3), np.float32)])
def test_model_input_rejects_non_images(bad):
  with pytest.raises(ValueError, match="image must be"):
    inference.model_input(bad, (8, 8, 1))


def test_resize_map_takes_the_value_under_each_pixel_centre():
  attention = np.arange(12, dtype=np.float32).reshape(3, 4)
  out = viz.resize_map(attention, (7, 10))
  expected = [[attention[int((i + 0.5) * 3 / 7), int((j + 0.5) * 4 / 10)]
               for j in range(10)] for i in range(7)]
  np.testing.assert_array_equal(out, expected)


# ------------------------------------------------------------------- export


def test_exported_artifact_has_a_symbolic_batch(model_and_variables, exported_path):
  model, variables = model_and_variables
  images = np.random.RandomState(2).uniform(-1, 1, (3,) + SAMPLE_SHAPE).astype(np.float32)
  with open(exported_path, "rb") as f:
    exported = jax.export.deserialize(f.read())
  logits, maps = inference.inference_function(model, variables)(images)
  for batch in (3, 1):
    got_logits, got_maps = exported.call(images[:batch])
    np.testing.assert_allclose(got_logits, logits[:batch], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_maps, maps[:batch], rtol=0, atol=1e-6)
  # The map is the model's region weights at image resolution: 4x4 blocks summing to 1.
  blocks = np.asarray(maps[0]).reshape(4, 8, 4, 8)
  assert np.allclose(blocks, blocks[:, :1, :, :1]) and np.isclose(blocks[:, 0, :, 0].sum(), 1)


def test_export_checks_its_arguments(model_and_variables):
  model, variables = model_and_variables
  with pytest.raises(ValueError, match="sample_shape"):
    inference.export_inference(model, variables, (0, 32, 1))
  for platforms in ("cpu", (), ("cpu", "gpu")):
    with pytest.raises(ValueError, match="platforms must be"):
      inference.export_inference(model, variables, SAMPLE_SHAPE, platforms=platforms)


# ------------------------------------------------------------------- predict


def _write_inputs(directory):
  """Good images of several sizes, modes and formats; returns {path: uint8 pixels}."""
  directory.mkdir()
  good = {}
  for name, shape, mode in [("gray.png", (20, 30), "L"), ("rgb.png", (64, 48, 3), "RGB"),
                            ("photo.jpg", (100, 80, 3), "RGB"), ("scan.jpeg", (9, 70), "L"),
                            ("alpha.png", (32, 32, 4), "RGBA")]:
    Image.fromarray(_pixels(shape, seed=len(good))).convert(mode).save(directory / name)
    good[str(directory / name)] = inference.read_image(str(directory / name))
  return good


def _run(capsys, argv):
  code = predict.main(argv)
  out, err = capsys.readouterr()
  return code, out.splitlines(), [l for l in err.splitlines() if "predict: error:" in l]


def _check_predictions(lines, good, model, variables, top_k):
  assert len(lines) == len(good)
  for line in lines:
    path, classes = line.split(": ", 1)
    found = [(int(c), float(p)) for c, p in re.findall(r"(\d+) \(([\d.]+)\)", classes)]
    assert len(found) == top_k
    reference = _reference_probabilities(model, variables, good[path])
    assert [c for c, _ in found] == list(np.argsort(-reference, kind="stable")[:top_k])
    np.testing.assert_allclose([p for _, p in found], np.sort(reference)[::-1][:top_k],
                               atol=1e-3)


def test_predict_prints_top_k_and_writes_overlays(capsys, tmp_path, model_and_variables,
                                                  exported_path):
  model, variables = model_and_variables
  good = _write_inputs(tmp_path / "images")
  code, lines, errors = _run(capsys, ["--exported", exported_path, str(tmp_path / "images"),
                                      "--out", str(tmp_path / "out"), "--top_k", "4",
                                      "--batch_size", "2"])
  assert code == 0 and errors == []
  _check_predictions(lines, good, model, variables, top_k=4)
  written = sorted(os.listdir(tmp_path / "out"))
  assert written == sorted(os.path.splitext(os.path.basename(p))[0] + "_attention.png"
                           for p in good)
  with Image.open(tmp_path / "out" / "photo_attention.png") as overlay:
    assert overlay.format == "PNG"


@pytest.mark.parametrize("head", ["region", None])
def test_predict_from_a_model_source_in_memory(capsys, tmp_path, model_and_variables,
                                               monkeypatch, head):
  # The model source is pluggable: predict runs the same on the Flax model, and on a
  # model without an attention map (plain pooling) it draws the image alone.
  model, variables = model_and_variables
  if head is None:
    model = model.clone(head=None)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SAMPLE_SHAPE))
  good = _write_inputs(tmp_path / "images")
  source = predict.ModelSource(SAMPLE_SHAPE, inference.inference_function(model, variables))
  monkeypatch.setattr(predict, "from_exported", lambda path: source)
  code, lines, errors = _run(capsys, ["--exported", "unused", *sorted(good), "--out",
                                      str(tmp_path / "out"), "--top_k", "1"])
  assert code == 0 and errors == []
  _check_predictions(lines, good, model, variables, top_k=1)
  with Image.open(tmp_path / "out" / "gray_attention.png") as overlay:
    width, height = overlay.size
  # attention_figure: 2.6 inches per panel (image, attention), 2.9 high.
  assert round(width / height * 2.9 / 2.6) == (1 if head is None else 2)


def test_predict_reports_each_bad_input_and_goes_on(capsys, tmp_path, model_and_variables,
                                                    exported_path):
  model, variables = model_and_variables
  good = _write_inputs(tmp_path / "images")
  (tmp_path / "images" / "notes.png").write_text("not pixels")
  whole = (tmp_path / "images" / "rgb.png").read_bytes()
  (tmp_path / "images" / "cut.png").write_bytes(whole[:len(whole) // 2])
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "readme.txt").write_text("no images here")
  bad = {
      str(tmp_path / "images" / "notes.png"): "not an image",
      str(tmp_path / "images" / "cut.png"): "damaged image",
      str(tmp_path / "empty"): "directory has no PNG or JPEG images",
      str(tmp_path / "missing.jpg"): "no such file or directory",
  }
  inputs = [str(tmp_path / "images"), str(tmp_path / "empty"), str(tmp_path / "missing.jpg")]
  if os.path.exists("/proc/self/mem"):  # Linux: a file whose reads fail, for root too
    (tmp_path / "unreadable.png").symlink_to("/proc/self/mem")
    bad[str(tmp_path / "unreadable.png")] = "cannot read (Input/output error)"
    inputs.append(str(tmp_path / "unreadable.png"))
  code, lines, errors = _run(capsys, ["--exported", exported_path, *inputs,
                                      "--out", str(tmp_path / "out"), "--batch_size", "3"])
  assert code == 1
  assert len(errors) == len(bad)
  for path, reason in bad.items():
    assert [e for e in errors if e.startswith(f"predict: error: {path}: {reason}")], (
        path, errors)
  _check_predictions(lines, good, model, variables, top_k=3)
  assert len(os.listdir(tmp_path / "out")) == len(good)


@pytest.mark.parametrize("make,reason", [
    (lambda path: path.write_bytes(b"\x00" * 64), "not a jax.export artifact"),
    (lambda path: None, "cannot read"),
])
def test_predict_bad_model_file_is_one_line_and_exit_2(capsys, tmp_path, make, reason):
  make(tmp_path / "model.jaxexport")
  (tmp_path / "x.png").write_bytes(b"")
  code, lines, errors = _run(capsys, ["--exported", str(tmp_path / "model.jaxexport"),
                                      str(tmp_path / "x.png")])
  assert code == 2 and lines == []
  assert len(errors) == 1
  assert errors[0].startswith(f"predict: error: {tmp_path / 'model.jaxexport'}: {reason}")


def test_predict_artifact_for_another_platform_is_one_line_and_exit_2(
    capsys, tmp_path, model_and_variables):
  model, variables = model_and_variables
  artifact = tmp_path / "model.jaxexport"
  artifact.write_bytes(inference.export_inference(model, variables, SAMPLE_SHAPE,
                                                  platforms=("tpu",)).serialize())
  Image.fromarray(_pixels((8, 8))).save(tmp_path / "x.png")
  code, lines, errors = _run(capsys, ["--exported", str(artifact), str(tmp_path / "x.png")])
  assert code == 2 and lines == [] and len(errors) == 1
  assert errors[0].startswith(f"predict: error: {artifact}: ") and "tpu" in errors[0]


# ------------------------------------------------------------------- from a workdir


@pytest.fixture(scope="module")
def trained_workdir(data_dir, tmp_path_factory):
  """A few steps of `experiments/configs/tiny.py` (`SAMPLE_SHAPE` images)."""
  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  config.train.steps = config.train.eval_every = 4
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(config, workdir)
  return workdir


def _outputs_in_fresh_process(artifact: str, images: np.ndarray, directory) -> dict:
  """`exported.call` per batch size, run by a Python that cannot import the model code."""
  np.save(directory / "images.npy", images)
  script = textwrap.dedent(f"""
      import sys
      for blocked in ("regionatt_jax", "flax", "experiments"):
        sys.modules[blocked] = None
      import jax, numpy as np
      exported = jax.export.deserialize(open({artifact!r}, "rb").read())
      images = np.load("images.npy")
      for batch in (len(images), 1):  # the batch size is symbolic
        logits, maps = exported.call(images[:batch])
        np.savez(f"outputs_{{batch}}.npz", logits=logits, maps=maps)
      """)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  subprocess.run([sys.executable, "-c", script], check=True, cwd=directory, env=env,
                 timeout=300)
  return {batch: dict(np.load(directory / f"outputs_{batch}.npz"))
          for batch in (len(images), 1)}


@pytest.mark.slow
def test_export_command_round_trip(trained_workdir, tmp_path, capsys):
  artifact = str(tmp_path / "model.jaxexport")
  assert export.main(["--workdir", trained_workdir, "--out", artifact]) == 0
  assert "platforms cpu, cuda, tpu" in capsys.readouterr().out
  model, variables, _ = train.load(trained_workdir)
  images = np.random.RandomState(3).uniform(-1, 1, (4,) + SAMPLE_SHAPE).astype(np.float32)
  logits, maps = inference.inference_function(model, variables)(images)
  for batch, outputs in _outputs_in_fresh_process(artifact, images, tmp_path).items():
    np.testing.assert_allclose(outputs["logits"], logits[:batch], rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["maps"], maps[:batch], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_predict_from_workdir_and_from_its_export_agree(trained_workdir, tmp_path, capsys):
  good = _write_inputs(tmp_path / "images")
  artifact = str(tmp_path / "model.jaxexport")
  assert export.main(["--workdir", trained_workdir, "--out", artifact,
                      "--platforms", "cpu"]) == 0
  capsys.readouterr()
  runs = {}
  for source in (["--workdir", trained_workdir], ["--exported", artifact]):
    out = tmp_path / source[0].strip("-")
    code, lines, errors = _run(capsys, [*source, str(tmp_path / "images"), "--out", str(out)])
    assert code == 0 and errors == [] and len(os.listdir(out)) == len(good)
    runs[source[0]] = lines
  model, variables, _ = train.load(trained_workdir)
  _check_predictions(runs["--workdir"], good, model, variables, top_k=3)
  assert runs["--exported"] == runs["--workdir"]


@pytest.mark.slow
@pytest.mark.parametrize("with_config", [False, True])
def test_workdir_without_checkpoint_is_one_line_and_exit_2(trained_workdir, tmp_path, capsys,
                                                           with_config):
  workdir = tmp_path / "run"
  workdir.mkdir()
  if with_config:  # a run that stopped before its first checkpoint
    shutil.copy(os.path.join(trained_workdir, "config.json"), workdir)
  (tmp_path / "x.png").write_bytes(b"")
  code, lines, errors = _run(capsys, ["--workdir", str(workdir), str(tmp_path / "x.png")])
  reason = "no checkpoint" if with_config else "no config.json"
  assert code == 2 and lines == [] and len(errors) == 1
  assert str(workdir) in errors[0] and reason in errors[0]
  assert export.main(["--workdir", str(workdir), "--out", str(tmp_path / "m")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("export: error: ") and "\n" not in err
  assert str(workdir) in err and reason in err
  assert not os.path.exists(tmp_path / "m")

