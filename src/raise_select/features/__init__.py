"""Featurization of a pool with an auxiliary LM (pipeline step 1)."""

from .featurize import FeaturizeConfig, featurize
from .table import FEATURE_COLUMNS, FeatureTable

__all__ = ["FEATURE_COLUMNS", "FeatureTable", "FeaturizeConfig", "featurize"]
