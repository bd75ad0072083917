"""The config files of `experiments/configs/`: their args, and that each builds a model."""

import jax
import jax.numpy as jnp
import pytest

from experiments.configs import cifar10
from experiments.configs import cluttered
from experiments.configs import common
from experiments.configs import default
from experiments.configs import eurosat
from experiments.configs import mil_digit_bags
from experiments.configs import patch_camelyon
from regionatt_jax import data
from regionatt_jax import nn as ra_nn
from regionatt_jax.train import config as config_lib

#: Every config file with args that exercise each of its choices.
CONFIGS = [(default, None), (mil_digit_bags, None), (mil_digit_bags, "pooling=max"),
           (cifar10, None), (cifar10, "attention=cbam,head=none"),
           (eurosat, "head=multiscale,scorer=gated"), (patch_camelyon, None)] + [
    (cluttered, arg) for arg in (
        "", "head=none", "attention=se,head=none", "attention=eca,head=none",
        "attention=cbam,head=none", "attention=coordinate,head=none", "scorer=conv",
        "scorer=gated", "scorer=recurrent", "scorer=self_attention", "head=multiscale",
        "model=attention_net", "canvas=64_heavy", "canvas=128,head=multiscale",
        "canvas=128_clean,features=8-16")]


@pytest.mark.parametrize("module,arg", CONFIGS)
def test_every_config_is_valid_and_builds_its_model(module, arg):
  config = module.get_config(arg) if arg is not None else module.get_config()
  config_lib.validate_config(config, num_devices=1)
  spec = data.dataset_spec(config.dataset.name)
  model = ra_nn.build_model(config.model, spec.num_classes)
  images = jax.ShapeDtypeStruct((2, *spec.example_shape), jnp.float32)
  logits = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0],
                          images)
  assert logits.shape == (2, spec.num_classes)


def test_parse_arg_converts_to_the_defaults_types():
  args = common.parse_arg("steps=3,lr=0.5,name=x,flag", steps=1, lr=1.0, name="", flag=False,
                          other=True)
  assert (args.steps, args.lr, args.name, args.flag, args.other) == (3, 0.5, "x", True, True)
  assert common.parse_arg("", steps=1).steps == 1
  assert common.parse_arg(None, steps=1).steps == 1
  assert common.parse_arg("flag=False", flag=True).flag is False
  with pytest.raises(ValueError, match="'stepz'"):
    common.parse_arg("stepz=3", steps=1)
  with pytest.raises(ValueError, match="'steps' must be of type int, got 'x'"):
    common.parse_arg("steps=x", steps=1)
  with pytest.raises(ValueError, match="'flag' must be a bool"):
    common.parse_arg("flag=yes", flag=False)


def test_cluttered_args_change_only_what_they_name():
  base = default.get_config()
  assert cluttered.get_config() == base and cluttered.get_config("") == base
  se = cluttered.get_config("attention=se,head=none")
  assert se.model.kwargs.attention == "se" and se.model.kwargs.head is None
  assert se.optim == base.optim and se.train == base.train and se.dataset == base.dataset
  gated = cluttered.get_config("scorer=gated")
  assert gated.model.kwargs.head_kwargs.to_dict() == {"scorer": "gated"}
  large = cluttered.get_config("canvas=128")
  assert large.dataset.name == "cluttered_digits/128"
  assert large.model.kwargs.backbone_kwargs.features == (16, 16, 32, 64, 64)
  residual = cluttered.get_config("placement=residual,attention=cbam,head=none")
  assert residual.model.kwargs.backbone_kwargs.to_dict() == {
      "features": (16, 32, 64, 64), "placement": "residual"}
  assert "placement" not in cluttered.get_config("placement=path").model.kwargs.backbone_kwargs
  net = cluttered.get_config("model=attention_net,features=32-64")
  assert net.model.name == "AttentionNet" and net.model.kwargs.to_dict() == {
      "features": (32, 64)}


@pytest.mark.parametrize("arg,match", [
    ("model=attention_net,scorer=gated", "model=classifier"),
    ("model=attention_net,placement=residual", "model=classifier"),
    ("placement=branch", "placement must be"),
    ("head=none,scorer=gated", "needs a head"),
    ("canvas=tiny", "canvas"),
    ("model=resnet", "model must be"),
    ("head=regoin", "head must be"),
    ("atention=se", "'atention'"),
])
def test_cluttered_rejects_args_that_cannot_apply(arg, match):
  with pytest.raises(ValueError, match=match):
    cluttered.get_config(arg)


def test_real_image_configs_share_one_recipe():
  configs = [cifar10.get_config(), eurosat.get_config(), patch_camelyon.get_config()]
  assert {c.optim.name for c in configs} == {"sgd"}
  for config in configs:  # 0.1 per 256 images
    assert config.optim.learning_rate == pytest.approx(
        0.1 * config.train.global_batch_size / 256)
  assert configs[0].model == configs[1].model == configs[2].model
