"""The scaling study: plan budgets x sizes as continual-training trunks and cooldown branches, run them locally or
through Slurm, collect runs.csv, and fit IsoFLOP profiles and scaling laws with bootstrap intervals.

``plan`` (plan.csv), ``sweep`` (the sweep dir and runs.csv), ``run`` (local and Slurm executors), ``status``,
``fit`` (Approach 2 and 3), ``fit_cli`` (``wxscale fit``), ``plots``, ``schedule_check`` (WSD against cosine).
"""
