"""Shipped data: GPU profiles (gpus/*.yaml), model cards (models/*.yaml) and the weight layout of
each model_type (architectures.yaml)."""
