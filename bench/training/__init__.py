"""Training: one run (a constant-LR trunk, a cooldown branch or a plain run) from a validated config.

``trainer`` (the loop and the run dir), ``config`` (the pydantic config), ``optim`` (fused AdamW), ``schedules``
(WSD with 1-sqrt/linear/cosine cooldown, cosine), ``losses`` (MSE, rollout, AMSE), ``checkpoint`` (atomic,
resumable state), ``distributed`` (torchrun/Slurm/MPI wireup; NCCL on GPUs, gloo on CPU).
"""
