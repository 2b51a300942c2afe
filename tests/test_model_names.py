"""The table of timm / torchvision / Hugging Face model names (duojax.convert.names)
and its page, docs/model_names.md, which must stay the command's output."""

import os
import subprocess
import sys

import pytest
from helpers import ROOT

from duojax.convert import layouts, names
from duojax.models import resnet, vit

PAGE = os.path.join(ROOT, "docs", "model_names.md")


@pytest.mark.parametrize(
  "name, expected",
  [
    ("vit_base_patch16_224", ("vit_b16", 224)),
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", ("vit_b16", 224)),  # a pretrained tag
    ("vit_base_patch16_384", ("vit_b16", 384)),
    ("vit_small_patch32_224", ("vit_s32", 224)),
    ("vit_large_patch16_224", ("vit_l16", 224)),
    ("vit_huge_patch14_224", ("vit_h14", 224)),
    ("vit_tiny_patch16_224", ("vit_ti16", 224)),
    ("resnet50", ("resnet50", 224)),  # timm's and torchvision's
    ("resnet50.a1_in1k", ("resnet50", 224)),
    ("google/vit-base-patch16-224", ("vit_b16", 224)),
    ("google/vit-large-patch32-384", ("vit_l32", 384)),
    ("microsoft/resnet-50", ("resnet50", 224)),
    ("microsoft/resnet-18", ("resnet18", 224)),
    ("vit_b_16", None),  # torchvision's ViTs: another layout
    ("resnet50d", None),  # timm's deep-stem ResNet
    ("resnet20", None),  # duojax's CIFAR-style ResNet: nobody publishes one
    ("swinv2_tiny_window8_256.ms_in1k", ("swin_v2_t", 256)),
    ("swin_v2_s", ("swin_v2_s", 256)),  # torchvision's
    ("microsoft/swinv2-base-patch4-window16-256", ("swin_v2_b_w16", 256)),
    ("swinv2_base_window12to16_192to256", None),  # fine-tuned from window 12: not a row
  ],
)
def test_known_names_map_to_duojax_models(name, expected):
  assert names.duojax_name(name) == expected


def test_every_row_names_a_model_of_the_registry_with_its_window():
  from duojax.models import family_name, swin

  assert all(family_name(row.model) is not None for row in names.all_rows())
  for row in names.swin_rows():
    window = swin.CONFIGS[row.model][3]
    assert f"window{window}" in row.name or row.library == "torchvision"


def test_the_rows_follow_the_registry_and_the_layouts():
  rows = names.rows()
  assert set(names.LIBRARIES) == set(layouts.LAYOUTS)
  assert len({row.name for row in rows if row.library == "hf"}) == sum(
    1 for row in rows if row.library == "hf"
  )
  for row in rows:
    assert row.library in layouts.LAYOUTS
    if row.model.startswith("resnet"):
      assert resnet.CONFIGS[row.model][3] == "imagenet"
    else:
      assert row.library != "torchvision"  # its layout holds ResNets only
      variant, patch = vit.parse_name(row.model)
      width = vit.VARIANTS[variant][0]
      # The library's size word names a ViT of that width (timm / Hugging Face configs).
      word = {"tiny": 192, "small": 384, "base": 768, "large": 1024, "huge": 1280}
      assert any(f"{w}_" in row.name or f"-{w}-" in row.name for w in word if word[w] == width)
      assert f"patch{patch}" in row.name and str(row.image_size) in row.name
  # Every ImageNet-stem ResNet, from every library.
  imagenet = [m for m, c in resnet.CONFIGS.items() if c[3] == "imagenet"]
  assert sorted({(r.model, r.library) for r in rows if r.model.startswith("resnet")}) == sorted(
    (m, library) for m in imagenet for library in layouts.LAYOUTS
  )


def test_the_page_is_the_commands_output(tmp_path):
  with open(PAGE) as f:
    page = f.read()
  assert page == names.markdown(), "regenerate: python -m duojax.convert --names --out " + PAGE
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  run = lambda *args: subprocess.run(
    [sys.executable, "-m", "duojax.convert", "--names", *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=env,
    timeout=300,
  )
  printed = run()
  assert printed.returncode == 0, printed.stderr
  assert printed.stdout == page
  out = tmp_path / "names.md"
  written = run(f"--out={out}")
  assert written.returncode == 0 and out.read_text() == page, written.stderr
  bad = run(f"--out={tmp_path / 'names.txt'}")
  assert bad.returncode == 1 and "must end in .md" in bad.stderr
  assert not (tmp_path / "names.txt").exists()
