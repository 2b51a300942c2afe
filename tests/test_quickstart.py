"""The README's quickstart, command by command, on tiny generated data, so it cannot rot.

The commands are read from the README's quickstart block and run as written,
with four substitutions that keep them small: the photo folders are generated
here, the pretrained files are tiny models of the real timm and torchvision code
(`reference_libs`) written under the README's file names, the ViT-B/16 becomes a 2-block ViT, and every fine-tune
runs one epoch at 32 px in float32. The install line is checked with
`make -n` (what it would run), not run.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, make_image_folder, timm_vit_mu4

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
from reference_libs import torchvision_models  # noqa: E402

pytestmark = pytest.mark.slow  # train.py and evaluate.py subprocesses
MARKER = "<!-- quickstart: tests/test_quickstart.py runs these commands on tiny generated data -->"
USE_MARKER = (
  "<!-- use-the-duo: tests/test_quickstart.py runs these commands after the quickstart -->"
)


def use_the_duo_block() -> str:
  text = (Path(ROOT) / "README.md").read_text()
  return re.search(re.escape(USE_MARKER) + r"\n```bash\n(.*?)```", text, re.S).group(1)


def quickstart_commands() -> list[str]:
  text = (Path(ROOT) / "README.md").read_text()
  block = re.search(re.escape(MARKER) + r"\n```bash\n(.*?)```", text, re.S).group(1)
  joined = block.replace("\\\n", " ")
  return [
    " ".join(line.split())
    for line in joined.splitlines()
    if line.strip() and not line.startswith("#")
  ]


def test_the_quickstart_has_the_four_steps():
  commands = quickstart_commands()
  assert [c.split()[0] for c in commands] == ["make"] + [".venv/bin/python"] * 4
  assert "duojax.import_folder" in commands[1] and "evaluate.py" in commands[4]


def test_the_install_line_installs_the_accelerator_extra():
  line = quickstart_commands()[0].split()
  assert line[:2] == ["make", "install"]
  dry = subprocess.run([*line, "-n"], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert dry.returncode == 0, dry.stderr
  extra = line[2].split("=")[1]
  assert f"[{extra}]" in dry.stdout, dry.stdout


def _tiny(command: str, home: Path) -> list[str]:
  command = command.replace("~/", f"{home}/").replace("model=vit_b16", "model=vit_mu4")
  args = shlex.split(command)
  args[0] = sys.executable
  for i, arg in enumerate(args):
    if arg.startswith("configs/imagenet_duo.py:"):
      args[i] = arg + ",size=32,epochs=1,dtype=float32"
    if arg.startswith("configs/eval_real.py:"):
      args[i] = arg + ",shift_images=6,mc_dropout=2,batch_size=8"
  return args


def test_the_quickstart_runs_from_a_folder_to_the_duos_results(tmp_path):
  home = tmp_path / "home"
  make_image_folder(home / "photos" / "train", per_class=12, seed=0)
  make_image_folder(home / "photos" / "test", per_class=4, seed=1, bad=False)
  make_image_folder(home / "photos_ood", classes=("x",), per_class=6, seed=2, bad=False)
  work = tmp_path / "checkout"  # the commands run from a checkout's root
  work.mkdir()
  for name in ("configs", "train.py", "evaluate.py", "duojax"):
    (work / name).symlink_to(Path(ROOT) / name)
  torch.manual_seed(0)
  for name, model in (
    ("vit_base_patch16_224.safetensors", timm_vit_mu4()),
    ("resnet18.safetensors", torchvision_models().resnet.resnet18(num_classes=1000)),
  ):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors_torch.save_file(state, str(work / name), metadata={"format": "pt"})
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  outputs = []
  for command in quickstart_commands()[1:]:
    result = subprocess.run(
      _tiny(command, home), cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (command, result.stderr[-3000:])
    outputs.append(result.stdout + result.stderr)
  # The fine-tunes chose their sizes from the data and said so.
  assert all("sizes from the data" in out for out in outputs[1:3]), outputs[1][-2000:]
  results = work / "runs" / "vit_duo_results"  # where the README says they are
  for name in ("results.md", "results.json", "risk_coverage.png", "reliability.png"):
    assert (results / name).exists(), name
  methods = json.loads((results / "results.json").read_text())["methods"]
  assert {"large+TS", "duo (weighted)"} <= set(methods)
  table = (results / "results.md").read_text()
  assert "AURC" in table and "SAC@98" in table and "| duo (weighted) |" in table

  # Then the README's next block: predict with the bundle, make one, serve it with jax.
  make_image_folder(home / "new_photos", classes=("a", "b"), per_class=5, seed=3)
  script = use_the_duo_block().replace("~/", f"{home}/")
  script = script.replace(".venv/bin/python", sys.executable).replace(
    "python -c", f"{sys.executable} -c"
  )
  # The tiny validation split guarantees no risk as low as 5%: a reachable one.
  script = script.replace("--target_risk 0.05", "--target_risk 0.9 --delta 0.5")
  result = subprocess.run(
    ["bash", "-euo", "pipefail", "-c", script],
    cwd=work, env=env, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [
    json.loads(line) for line in (work / "runs" / "new_photos.jsonl").read_text().splitlines()
  ]
  assert len(rows) == 10 and {"id", "class", "abstain", "disagree", "top_k"} <= set(rows[0])
  assert (work / "runs" / "new_photos.jsonl.skipped").read_text().count("\n") == 2
  assert (work / "runs" / "duo_bundle" / "manifest.json").exists()
  assert "[" in result.stdout.splitlines()[-1]  # the served program's classes
