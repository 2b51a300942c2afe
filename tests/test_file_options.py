"""What a Hugging Face ViT file's config.json says beyond its tensor names: the
activation and the DINOv2 classifier's pooling, read from transformers' own files."""

import pytest
import transformers

from duojax.convert import file_options
from duojax.eval import pretrained_members as pm

SMALL = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)


@pytest.mark.parametrize(
  "config, want",
  [
    (transformers.CLIPVisionConfig(**SMALL), {"act": "quick_gelu"}),  # OpenAI's CLIP
    (transformers.CLIPVisionConfig(**SMALL, hidden_act="gelu"), {"act": "gelu"}),
    (transformers.SiglipVisionConfig(**SMALL), {"act": "gelu_tanh"}),
    (transformers.CLIPConfig(vision_config=SMALL), {"act": "quick_gelu"}),  # the whole CLIP
    (transformers.Dinov2Config(**SMALL), {"act": "gelu"}),
    (transformers.Dinov2Config(**SMALL, use_swiglu_ffn=True), {}),  # giant: SwiGLU
  ],
)
def test_the_activation_is_the_files_own(tmp_path, config, want):
  config.save_pretrained(tmp_path)
  path = str(tmp_path / "model.safetensors")
  assert file_options.vit_file_overrides(True, "hf", path) == want
  assert file_options.vit_file_overrides(True, "timm", path) == {}  # timm: the name says
  assert file_options.vit_file_overrides(False, "hf", path) == {}


def test_a_dinov2_classifier_file_is_a_pretrained_member_with_its_pooling(tmp_path):
  config = transformers.Dinov2Config(
    **SMALL, num_hidden_layers=12, image_size=28, patch_size=14, num_labels=4,
    architectures=["Dinov2ForImageClassification"],
  )  # fmt: skip
  transformers.Dinov2ForImageClassification(config).save_pretrained(tmp_path)
  spec = pm.parse(f"pretrained:vit_s14_dinov2:{tmp_path / 'model.safetensors'}")
  layout, classes, overrides = pm.inspect(spec, where="x")
  assert (layout, classes) == ("hf", 4)
  assert overrides["pool"] == "tok+gap" and overrides["act"] == "gelu"
  assert overrides["image_size"] == 28
  # Without its config.json the file is an ordinary one: the name's defaults stand.
  (tmp_path / "config.json").unlink()
  assert "pool" not in pm.inspect(spec, where="x")[2]


def test_a_training_run_from_a_file_takes_its_options_and_the_configs_own_win(tmp_path):
  import types

  from duojax import config_lib
  from duojax.train import loop

  config = transformers.CLIPVisionConfig(**SMALL, num_hidden_layers=12, image_size=32)
  transformers.CLIPVisionModel(config).save_pretrained(tmp_path)
  run = config_lib.base_config()
  run.model_name, run.init_weights = "vit_b16_clip", str(tmp_path / "model.safetensors")
  dataset = types.SimpleNamespace(num_classes=3, image_shape=(32, 32, 3))
  assert loop._model_spec(run, dataset).model_overrides["act"] == "quick_gelu"  # OpenAI's CLIP
  run.model.act = "gelu"
  assert loop._model_spec(run, dataset).model_overrides["act"] == "gelu"
  run.model.act, run.init_weights = None, ""
  assert "act" not in loop._model_spec(run, dataset).model_overrides
