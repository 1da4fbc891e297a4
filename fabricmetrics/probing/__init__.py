"""Representation probing: the scheduler that probes between epochs, and fast torch-native probes."""

from fabricmetrics.probing.extraction import extract_embeddings
from fabricmetrics.probing.knn import KNNProbe
from fabricmetrics.probing.linear import LinearProbe, RidgeProbe
from fabricmetrics.probing.maps import EmbeddingMaps, plot_embedding_maps
from fabricmetrics.probing.scheduler import ProbingScheduler

__all__ = [
    "EmbeddingMaps",
    "KNNProbe",
    "LinearProbe",
    "ProbingScheduler",
    "RidgeProbe",
    "extract_embeddings",
    "plot_embedding_maps",
]
