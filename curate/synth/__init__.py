"""`curate synth`: a noisy synthetic stand-in for a web crawl, with its curated and eval sets."""

from curate.synth.dataset import SynthConfig, SynthSummary, synthesize
from curate.synth.plan import NOISE_KINDS, NoiseRates

__all__ = ["NOISE_KINDS", "NoiseRates", "SynthConfig", "SynthSummary", "synthesize"]
