"""Evaluation: autoregressive rollouts of a trained run over the test split, scored with WeatherBench 2 metrics
(:mod:`wxscale.metrics`) against persistence and climatology."""
