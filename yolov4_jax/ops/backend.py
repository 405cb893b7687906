"""Which platform the code being traced is for: the default backend, or the one a lowering
for other platforms names (`lowering_for`).

The convolution dispatch (`conv.conv2d`, `winograd.tile`) picks CPU-only algorithms where this
is "cpu". An export or a lowering check for GPUs and TPUs traces on this CPU host inside
``lowering_for("cuda")`` (or "tpu"), so ``auto`` picks what it picks on a GPU or TPU host:
XLA's convolution, no Winograd, no oneMKL custom call.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax

# jax.export's platform names -> jax.default_backend()'s.
_BACKENDS = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "tpu": "tpu"}
_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("target", default=None)


def current() -> str:
    """``jax.default_backend()``'s name ("cpu", "gpu", "tpu") of the platform being traced
    for: the innermost `lowering_for`'s, else JAX's default backend."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def lowering_for(platform: str) -> Iterator[None]:
    """Traces inside take the choices of a ``platform`` host ("cpu", "cuda", "rocm", "tpu").

    Only tracing reads it: a function jitted and traced outside keeps its choices, so build
    and trace the function inside (a jitted function's cache does not see this setting).
    """
    if platform not in _BACKENDS:
        raise ValueError(f"platform must be one of {sorted(_BACKENDS)}, got {platform!r}")
    token = _TARGET.set(_BACKENDS[platform])
    try:
        yield
    finally:
        _TARGET.reset(token)
