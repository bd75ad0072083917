"""Scripts a researcher runs: the main training job (`python -m experiments.train`) and
its configs (`experiments/configs/`)."""
