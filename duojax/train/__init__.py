"""Training one classifier: optimizer, jitted steps, the loop, checkpoints.

optim          the optimizer and learning-rate schedule of a config
steps          the jitted train/eval steps and the training loss
recipe         the steps' Mixup/CutMix, weight EMA and gradient accumulation
loop           `train_and_evaluate(config, workdir)`: what train.py runs, in parts:
sizing         sizes left to the data (val, batches, steps, warm-up), chosen and checked
model_init     where a run's weights start (fresh, resumed, a workdir, a file, pruned)
run_context    the checkpoint manager, batches and progress bar, closed once
preemption     stop signals: checkpoint, then exit with the signal's status
checkpoint     checksummed Orbax checkpoints, resume, `load_model`
hydra_member   starting a run as a Hydra member pruned from a trained ViT
"""
