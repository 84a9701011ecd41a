"""Shipped data: GPU profiles (gpus/*.yaml) and model cards (models/*.yaml)."""
