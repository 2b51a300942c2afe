"""Where arrays live and which processes run: the device mesh and jax.distributed.

sharding     the ("data", "fsdp") mesh over every device of every process,
             batch / replicated / FSDP shardings, rows split over devices
distributed  joining a multi-process job (flags, SLURM, Open MPI, TPU pods)
accelerator  the start-up warning when JAX runs on the CPU of a machine with a GPU or TPU
"""
