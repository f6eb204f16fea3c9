"""The engines: search, evaluation (training from scratch), ablation and op profiling."""
