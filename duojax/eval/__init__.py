"""Evaluation: every member's logits once, then every post-hoc method on them.

members     the trained models compared (restored from workdirs; soups)
bank        their logits on every split from one fused jitted forward
splits      OOD sets and corrupted copies of the test split
mc_dropout  the MC-dropout baseline from the bank's pre-logit features
methods     post-hoc methods as data (kind, members), fitted on val only
inputs      what the sections share: bank, members, methods, fits
sections/   the report's sections (methods, paired, cascade, hydra)
render, outputs, plots, plot_style   Markdown, results files, figures
pipeline    `run(config)`: what `evaluate.py --config` runs
accuracy    accuracy of single checkpoints (`evaluate.py --workdirs`)
"""
