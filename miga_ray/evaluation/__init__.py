"""Quality numbers for finished videos: VBench's consistency dimensions, and the toy world's ground truth."""

from .features import FeatureExtractor, feature_extractor
from .vbench import VBenchScores, evaluate_frames

__all__ = ["FeatureExtractor", "VBenchScores", "evaluate_frames", "feature_extractor"]
