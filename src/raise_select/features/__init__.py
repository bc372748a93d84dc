"""Featurization of a pool with an auxiliary LM (pipeline step 1)."""

from .table import FEATURE_COLUMNS, FeatureTable

__all__ = ["FEATURE_COLUMNS", "FeatureTable"]
