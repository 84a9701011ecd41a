"""Shipped data: GPU profiles (gpus/*.yaml), model cards (models/*.yaml), the weight layout of
each model_type (architectures.yaml), acceptance priors (priors*.yaml), the engines' field
tables (engines.yaml) and the demo model (demo/). Installed with the package, beside its code."""

from pathlib import Path

PROFILES_DIR = Path(__file__).resolve().parent
