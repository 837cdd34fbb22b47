"""agents: SB3 agents for the AGMC env — graph features extractors, AMC exploration, RL search, whole-episode searchers (uniform, random, your own), run folders."""
from agents.algorithms import ALGORITHMS, make_agent
from agents.extractors import EMBEDDINGS, GraphEncoderExtractor, LayerFeatureExtractor

__all__ = ["ALGORITHMS", "EMBEDDINGS", "GraphEncoderExtractor", "LayerFeatureExtractor", "make_agent"]
