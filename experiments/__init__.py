"""Scripts a researcher runs: the main training job (`python -m experiments.train`) with
its configs (`experiments/configs/`), the ablation (`python -m experiments.ablation`) and
the benchmarks (`benchmark*.py`, timed with `timing.py`)."""
