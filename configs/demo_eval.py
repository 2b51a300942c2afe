"""Evaluates the demo's models: the duo against every baseline.

  python evaluate.py --config configs/demo_eval.py
  python evaluate.py --config configs/demo_eval.py:runs=runs/demo,ensemble=4

`ensemble=k` uses the extra large models large_seed1 .. large_seed{k}
(train them with `configs/demo_large.py --config.seed=i`); `soups=k` the
fine-tunes soup_1 .. soup_k (`configs/demo_soup.py`); `gatekeeper="0.1 0.5"`
the Gatekeeper fine-tunes gatekeeper_0.1 and gatekeeper_0.5 (`configs/gatekeeper.py`;
"" for none); `hydra=M` the Hydra members hydra_0 .. hydra_{M-1}
(`configs/hydra_member.py`), pruned from the ViT in vit, against the deep
ensemble of vit, vit_seed1 .. vit_seed{M-1} (`configs/demo_vit.py`; 0 for none).
"""


def get_config(arg=None):
  from duojax import config_lib
  from duojax.eval import schema

  arg = config_lib.parse_arg(
    arg, runs="runs/demo", ensemble=1, soups=2, gatekeeper="0.1 0.3 0.5 0.7 0.9", hydra=2
  )
  c = schema.base_eval_config()
  c.large = f"{arg.runs}/large"
  c.sidekick = f"{arg.runs}/sidekick"
  # Extra independently trained large models (deep ensembles m = 2..1+k).
  c.ensemble = ",".join(f"{arg.runs}/large_seed{i}" for i in range(1, arg.ensemble + 1))
  # Short fine-tunes of the large model (model soups).
  c.soup_ingredients = ",".join(f"{arg.runs}/soup_{i}" for i in range(1, arg.soups + 1))
  # Gatekeeper-tuned sidekicks (configs/gatekeeper.py), for the cascade
  # section: deferral quality of each, and cascades into the large model and
  # into the duo. "" for none (and no cascade section without a sidekick).
  c.gatekeeper = ",".join(f"{arg.runs}/gatekeeper_{a}" for a in arg.gatekeeper.split())
  c.cascade = True
  # Hydra ensembles (duojax.hydra): member workdirs, merged into one model
  # per MLP mode ("grouped": exact; "average": one shared MLP, cheaper), the
  # ViT they were pruned from ("" = their prune_from) and extra full ViTs for
  # the deep ensemble they are compared with. "" for no Hydra section.
  c.hydra = ",".join(f"{arg.runs}/hydra_{j}" for j in range(arg.hydra))
  c.hydra_vit = f"{arg.runs}/vit" if arg.hydra else ""
  c.hydra_ensemble = ",".join(f"{arg.runs}/vit_seed{i}" for i in range(1, arg.hydra))
  c.hydra_mlp = "grouped,average"
  c.mc_dropout_samples = 8  # 0 disables MC dropout
  c.mc_dropout_rate = 0.1  # the large model's training dropout on its pre-logits
  c.mahalanobis_train_rows = 10000  # training rows for the Mahalanobis OOD score; 0 disables
  c.ood = "mnist"  # "" for none
  # The four corruptions of the shifted table and the 15 of ImageNet-C, at
  # severities 1, 3 and 5 (57 cells; configs/eval_real.py:shifts=imagenet_c runs
  # every severity).
  c.shifts = "gaussian_noise,blur,rotation,contrast,imagenet_c"
  c.shift_severities = "1,3,5"
  c.shift_max_images = 400  # per (corruption, severity), a seeded subset of test
  # A batch of 128: the Hydra section times one batch per row, a serving-size
  # one here (the fused forward is FLOP-bound on a CPU, about as fast at 128 as
  # at 500: BENCHMARKS.md). Accelerators take the default (500) or more.
  c.batch_size = 128
  c.output_dir = f"{arg.runs}/results"
  return c
