"""Quality numbers for finished videos: VBench's consistency dimensions, and the toy world's ground truth."""

from .vbench import VBenchScores, evaluate_frames
from .features import FeatureExtractor, feature_extractor

__all__ = ["FeatureExtractor", "VBenchScores", "evaluate_frames", "feature_extractor"]
