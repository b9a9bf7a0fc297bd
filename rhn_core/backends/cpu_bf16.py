"""Whether this CPU computes bfloat16 products fast, and the one-line refusal where it does not.

``precision=bf16`` on a CPU runs every product of a step with bfloat16 inputs and float32
accumulation (oneDNN, in both backends). That is faster than float32 only on CPUs with
bfloat16 dot-product instructions (AVX512_BF16, or the AMX tiles with AMX-BF16); elsewhere
oneDNN emulates them and the step gets slower, so the run is refused instead.
Framework-free: both backends (and the tests, which replace ``cpu_flags``) use it.
"""

from ..errors import RHNError

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names of the instructions


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags (empty where the system does not list them: not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_bf16_products():
    """True when this CPU has bfloat16 dot-product instructions."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def require_bf16_products(backend):
    """RHNError (one line: what to do) unless bf16 products are fast on this CPU."""
    if not has_bf16_products():
        raise RHNError(
            f"precision=bf16 with {backend} on CPU needs bfloat16 instructions (AVX512_BF16 or AMX-BF16), "
            "which this CPU lacks: bf16 would be slower than float32 here; use precision=float32"
        )
