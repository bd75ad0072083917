"""torchvision/timm ResNets converted by `from_torchvision` compute torchvision's logits;
bad files fail naming the file and the first offending key; a pretrained backbone merges
into a model with attention, leaving the new parts as initialized."""

import functools
import importlib
import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip(
    "torch", reason="converting torchvision weights needs torch (pip install .[torch])")

import regionatt_jax.nn as rn  # noqa: E402
from regionatt_jax import data as data_lib  # noqa: E402
from regionatt_jax import pytorch as ra_torch  # noqa: E402
from regionatt_jax.train import config as config_lib  # noqa: E402
from regionatt_jax.train import loop  # noqa: E402
from regionatt_jax.train import pretrained as pretrained_lib  # noqa: E402
from regionatt_jax.train import state as state_lib  # noqa: E402

_TORCHVISION_OPS = []  # Keeps the operator schemas of `_import_vision` registered.


def _import_vision(name):
  """torchvision or timm (which imports torchvision), or a skip when not installed.

  The PyPI wheels of torchvision are built against torch's CUDA build; with the CPU
  build (this project pins `torch==2.13.0`, installed as `+cpu` on CPU machines) the
  wheel's C++ operators do not load, and torchvision 0.28 then fails at import while
  registering a fake kernel for `torchvision::nms`. The ResNets use none of those
  operators, so then the two schemas it registers against are defined and the import
  is retried.
  """
  try:
    return pytest.importorskip(name)
  except RuntimeError as error:
    if "torchvision::nms" not in str(error):
      raise
  for module in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
    del sys.modules[module]
  library = torch.library.Library("torchvision", "DEF")
  for op in ("nms", "qnms"):
    library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  _TORCHVISION_OPS.append(library)
  return importlib.import_module(name)


@functools.lru_cache(maxsize=None)
def _vision_resnet(arch, library="torchvision", **kwargs):
  """A randomly initialized ResNet whose BatchNorms hold non-trivial values, in eval mode.

  Affine parameters are drawn at random (torchvision starts them at 1 and 0, which
  would hide a swapped scale and bias) and a few train-mode forwards move the running
  statistics away from 0 and 1.
  """
  torch.manual_seed(0)
  if library == "timm":
    model = _import_vision("timm").create_model(arch, pretrained=False, **kwargs)
  else:
    model = getattr(_import_vision("torchvision").models, arch)(**kwargs)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
    model.train()
    for seed in range(3):
      model(torch.from_numpy(_images((4, 64, 64, 3), seed).transpose(0, 3, 1, 2)))
  return model.eval()


def _images(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _assert_same_logits(torch_model, flax_model, variables):
  nhwc = _images((2, 64, 64, 3), seed=10)
  with torch.no_grad():
    want = torch_model(torch.from_numpy(nhwc.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(jax.jit(functools.partial(flax_model.apply, train=False))(variables, nhwc))
  assert got.shape == want.shape
  # Within 1e-4 of the logits' scale (a relative error per logit is meaningless near 0).
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_resnet_logits_are_reproduced(arch):
  torch_model = _vision_resnet(arch, num_classes=7)
  assert abs(float(torch_model.bn1.running_var.mean()) - 1.0) > 0.05  # Statistics moved.
  model, variables = ra_torch.from_torchvision(torch_model)
  assert (model.backbone, model.num_classes, model.head) == (arch, 7, None)
  _assert_same_logits(torch_model, model, variables)


# timm is optional and in no extra: its parity test exists where it is installed (a skip
# would fail CI, which refuses skipped tests).
if importlib.util.find_spec("timm") is not None:

  def test_timm_resnet50_logits_are_reproduced():
    torch_model = _vision_resnet("resnet50", library="timm", num_classes=5)
    model, variables = ra_torch.from_torchvision(torch_model.state_dict())
    _assert_same_logits(torch_model, model, variables)


@pytest.mark.parametrize("name", ["resnet18.pth", "resnet18.safetensors", "checkpoint.pt"])
def test_a_saved_file_converts_like_the_module(tmp_path, name):
  torch_model = _vision_resnet("resnet18", num_classes=3)
  state_dict = torch_model.state_dict()
  if name == "checkpoint.pt":  # A training script's checkpoint holding the state_dict.
    state_dict = {"model": state_dict, "epoch": 3}
  model, variables = ra_torch.from_torchvision(_save(state_dict, tmp_path / name))
  _, direct = ra_torch.from_torchvision(torch_model)
  assert model.backbone == "resnet18"
  jax.tree.map(np.testing.assert_array_equal, variables, direct)


def _save(state_dict, path):
  if path.suffix == ".safetensors":
    from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
  else:
    torch.save(state_dict, path)
  return str(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_truncated_file_is_named(tmp_path, suffix):
  path = _save({"conv1.weight": torch.ones(64, 3, 7, 7)}, tmp_path / f"cut{suffix}")
  with open(path, "r+b") as f:
    f.truncate(len(f.read()) // 2)
  with pytest.raises(ValueError, match=f"pretrained file '{path}' cannot be read"):
    ra_torch.from_torchvision(path)


def test_wrong_architecture_and_width_name_the_first_offending_key():
  resnet18 = _vision_resnet("resnet18").state_dict()
  with pytest.raises(ValueError, match=r"state_dict has no key 'layer1\.2\.[a-z0-9_.]+', "
                                       "which a torchvision resnet34 has"):
    ra_torch.from_torchvision(resnet18, arch="resnet34")
  with pytest.raises(ValueError, match="has a key a torchvision resnet18 lacks: "
                                       "'layer1.2.conv1.weight'"):
    ra_torch.from_torchvision(_vision_resnet("resnet34").state_dict(), arch="resnet18")
  # Half the inner width of each bottleneck: the first 1x1 conv is the first to differ.
  narrow = _vision_resnet("resnet50", width_per_group=32).state_dict()
  with pytest.raises(ValueError, match=r"'layer1.0.conv1.weight' has shape \(32, 64, 1, 1\), "
                                       r"a torchvision resnet50 needs \(64, 64, 1, 1\)"):
    ra_torch.from_torchvision(narrow)
  vgg_layer = {"features.0.weight": torch.zeros(8, 3, 3, 3)}
  with pytest.raises(ValueError, match="resnet18 lacks: 'features.0.weight'"):
    ra_torch.from_torchvision({**resnet18, **vgg_layer})
  with pytest.raises(ValueError, match="first key that no ResNet has is 'features.0.weight'"):
    ra_torch.from_torchvision(vgg_layer)


def test_torchvision_key_names_every_leaf_as_torchvision_does():
  state_dict = _vision_resnet("resnet50").state_dict()
  _, variables = ra_torch.from_torchvision(state_dict)
  keys = {ra_torch.torchvision_key(collection, tuple(path))
          for collection, *path in traverse_util.flatten_dict(variables)}
  assert keys == {k for k in state_dict if not k.endswith("num_batches_tracked")}
  assert ra_torch.torchvision_key("params", ("backbone", "layer3_0", "downsample_1", "scale")) == (
      "layer3.0.downsample.1.weight")


def _classifier(**kwargs):
  return rn.RegionAttentionClassifier(
      10, backbone="resnet18", attention="se", head="region",
      backbone_kwargs={"stem": "imagenet"}, head_kwargs={"grid": (2, 2)}, **kwargs)


def _variables(model, seed=None):
  """`model`'s variables: their shapes, or (with a seed) random values, which stand in
  for an initialization at no compile cost."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, 64, 64, 3)))
  if seed is None:
    return shapes
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


def test_merge_loads_the_backbone_and_keeps_attention_and_head_as_initialized():
  _, pretrained = ra_torch.from_torchvision(_vision_resnet("resnet18"))
  fresh = _variables(_classifier(), seed=1)
  merged = pretrained_lib.merge_pretrained(fresh, pretrained)
  flat_fresh = traverse_util.flatten_dict(fresh)
  flat_pretrained = traverse_util.flatten_dict(pretrained)
  flat_merged = traverse_util.flatten_dict(merged.variables)
  assert flat_merged.keys() == flat_fresh.keys()
  backbone = {p for p in flat_pretrained if p[1] == "backbone"}
  assert {tuple(p.split("/")) for p in merged.loaded} == backbone
  assert {tuple(p.split("/")) for p in merged.new} == flat_fresh.keys() - backbone
  assert any("attention" in p for p in merged.new) and any("head" in p for p in merged.new)
  for path, value in flat_merged.items():
    np.testing.assert_array_equal(
        value, flat_pretrained[path] if path in backbone else flat_fresh[path])


def test_merge_into_another_stem_or_width_names_the_key():
  _, pretrained = ra_torch.from_torchvision(_vision_resnet("resnet18"))
  small_stem = _variables(_classifier().clone(backbone_kwargs={"stem": "small"}))
  with pytest.raises(ValueError, match=r"'conv1.weight'.*\(7, 7, 3, 64\).*\(3, 3, 3, 64\)"):
    pretrained_lib.merge_pretrained(small_stem, pretrained,
                                    name=ra_torch.torchvision_key)
  narrow = _variables(_classifier().clone(backbone_kwargs={"stem": "imagenet", "width": 32}))
  with pytest.raises(ValueError, match=r"'conv1.weight'.*\(7, 7, 3, 64\).*\(7, 7, 3, 32\)"):
    pretrained_lib.merge_pretrained(narrow, pretrained, name=ra_torch.torchvision_key)


# --- model.pretrained in a training run ------------------------------------------------

def _grayscale_file(directory, arch="resnet18", suffix=".pth"):
  """A torchvision ResNet for 1-channel images (conv1 summed over RGB, as for grayscale
  inputs), saved to `directory`."""
  state_dict = dict(_vision_resnet(arch).state_dict())
  state_dict["conv1.weight"] = state_dict["conv1.weight"].sum(1, keepdim=True)
  return _save(state_dict, directory / f"{arch}{suffix}")


def _finetune(config, pretrained, **backbone_kwargs):
  """`config` (the tiny one, on the 32x32 `cluttered_digits/tiny`) for two steps of
  ResNet-18 + SE, the backbone from `pretrained`."""
  config.model.kwargs = {"backbone": "resnet18", "attention": "se", "head": None,
                         "backbone_kwargs": {"stem": "imagenet", **backbone_kwargs}}
  config.model.pretrained = pretrained
  config.optim.backbone_lr_multiplier = 0.1
  config.train.steps = 2
  return config


def test_train_state_starts_from_the_files_backbone(tmp_path, tiny_config):
  path = _grayscale_file(tmp_path, suffix=".safetensors")
  config = _finetune(tiny_config, path)
  model = rn.build_model(config.model, 10)
  state = state_lib.create_train_state(config, model, jax.random.PRNGKey(0), (1, 32, 32, 1))
  config.model.pretrained = ""
  fresh = state_lib.create_train_state(config, model, jax.random.PRNGKey(0), (1, 32, 32, 1))
  _, from_file = ra_torch.from_torchvision(path)
  from_file = traverse_util.flatten_dict(from_file)
  got = traverse_util.flatten_dict({"params": state.params, "batch_stats": state.batch_stats})
  initialized = traverse_util.flatten_dict({"params": fresh.params,
                                            "batch_stats": fresh.batch_stats})
  loaded = {key for key in from_file if key[1] == "backbone"}  # not the 1000-class fc
  assert loaded <= got.keys()
  attention = [key for key in got if "attention" in key]
  assert attention and not set(attention) & set(loaded)
  for key, value in got.items():
    np.testing.assert_array_equal(value, from_file[key] if key in loaded else initialized[key],
                                  err_msg=str(key))


@pytest.mark.slow
def test_a_config_with_a_pretrained_file_trains(tmp_path, tiny_config):
  config = _finetune(tiny_config, _grayscale_file(tmp_path))
  summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["steps"] == 2 and np.isfinite(summary["final_train_loss"])


def _truncated(directory):
  path = _grayscale_file(directory)
  with open(path, "r+b") as f:
    f.truncate(1000)
  return path, "cannot be read as a state_dict"


@pytest.mark.parametrize("bad_file, backbone_kwargs", [
    (_truncated, {}),
    (lambda d: (_grayscale_file(d, "resnet34"), "a torchvision resnet18 lacks: "
                                                "'layer1.2.conv1.weight'"), {}),
    (lambda d: (_grayscale_file(d), r"'conv1.weight' has shape \(7, 7, 1, 64\), the model's "
                                    r"params/backbone/conv1/kernel has \(7, 7, 1, 32\)"),
     {"width": 32}),
], ids=["truncated", "resnet34_for_resnet18", "other_width"])
def test_a_bad_pretrained_file_stops_the_run_before_training(tmp_path, tiny_config, bad_file,
                                                             backbone_kwargs):
  path, problem = bad_file(tmp_path)
  workdir = tmp_path / "run"
  config = _finetune(tiny_config, path, **backbone_kwargs)
  with pytest.raises(ValueError, match=f"pretrained file '{path}'.*{problem}"):
    loop.train_and_evaluate(config, str(workdir))
  assert not (workdir / "config.json").exists() and not (workdir / "metrics.jsonl").exists()
  assert not list((workdir / "checkpoints").glob("[0-9]*"))


def test_a_missing_pretrained_file_fails_validation(tmp_path, tiny_config):
  config = _finetune(tiny_config, str(tmp_path / "absent.pth"))
  with pytest.raises(ValueError, match="'model.pretrained': no file '.*absent.pth'"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["eurosat_finetune", "patch_camelyon_finetune"])
def test_finetune_configs_take_torchvisions_resnet50(tmp_path, name):
  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  assert config.model.pretrained.endswith(".pth")
  config.model.pretrained = _save(_vision_resnet("resnet50").state_dict(),
                                  tmp_path / "resnet50.pth")
  config_lib.validate_config(config, num_devices=1)
  spec = data_lib.dataset_spec(config.dataset.name)
  model = rn.build_model(config.model, spec.num_classes)
  _, merged = pretrained_lib.load_pretrained_backbone(config.model.pretrained, model,
                                                      (1, *spec.image_shape))
  assert len(merged.loaded) == 265  # every backbone leaf of torchvision's resnet50
  assert all("attention" in p or not p.split("/")[1] == "backbone" for p in merged.new)
