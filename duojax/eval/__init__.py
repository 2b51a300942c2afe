"""Evaluation: every member's logits once, then every post-hoc method on them.

schema        the evaluation config: core keys plus each section's own
member_specs  the members a config names, parsed once (workdir, pretrained:, logits:)
members       one `Member` of any kind: model, logits file, or derived (soups)
data_spec     the data set the members read, and the evaluation's splits
bank          their logits on every split from one fused jitted forward
splits        OOD sets and corrupted copies of the test split
mc_dropout    the MC-dropout baseline from the bank's pre-logit features
feature_ood   the large model's Mahalanobis OOD score
methods       post-hoc methods as data (kind, members), fitted on val only
inputs        what the sections share: bank, members, methods, fits
sections/     the report's sections, each owning its keys, checks and members
render, outputs, plots, plot_style   Markdown, results files, figures
pipeline      `run(config)`: what `evaluate.py --config` runs
accuracy      accuracy of single checkpoints (`evaluate.py --workdirs`)
"""
