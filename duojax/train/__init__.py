"""Training one classifier: optimizer, jitted steps, the loop, checkpoints.

optim          the optimizer and learning-rate schedule of a config
steps          the jitted train/eval steps and the training loss
loop           `train_and_evaluate(config, workdir)`: what train.py runs
checkpoint     checksummed Orbax checkpoints, resume, `load_model`
hydra_member   starting a run as a Hydra member pruned from a trained ViT
"""
