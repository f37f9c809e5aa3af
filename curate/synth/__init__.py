"""`curate synth`: a noisy synthetic stand-in for a web crawl, with its curated and eval sets.

Config (`config.py`) → plan (`plan.py`: every sample's scene, caption and noise, from the seed alone) → unit
(`unit.py`: one shard of planned samples rendered and written) → driver (`dataset.py:synthesize`: what is
pending, the worker pool, the eval set). `scenes.py` renders, `captions.py` and `vocabulary.py` describe.
"""

from curate.synth.config import SynthConfig, SynthSummary
from curate.synth.dataset import synthesize
from curate.synth.plan import NOISE_KINDS, NoiseRates

__all__ = ["NOISE_KINDS", "NoiseRates", "SynthConfig", "SynthSummary", "synthesize"]
