"""saliency_jax: do gradient-based saliency methods find what a model really relies on?"""

from saliency_jax import lowering as _lowering

__version__ = "0.1.0"

# Before JAX starts a backend, where that is still possible: a researcher's own `jax.jit` of a
# method then compiles with the library's XLA options on CPU (see `lowering.set_process_flags`).
_lowering.set_process_flags()
