"""Eager PyTorch reference baselines of the two course systems, used only by benchmarks."""
