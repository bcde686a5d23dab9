"""saliency_jax: do gradient-based saliency methods find what a model really relies on?"""

__version__ = "0.1.0"
