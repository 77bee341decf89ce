"""How the live path stores the self-attention KV cache: float32, or float16 read by our own kernel.

Late in a 30 s window a musicgen-small step reads ~0.4 GB of cached keys and values (24 layers, two
CFG rows, ~1 000 columns, fp32) - more than its int8 weights. float16 halves those bytes. torch's CPU
attention gains nothing from it (it converts more slowly than it reads), so float16 caches are read
by `kernels/decode_attention.cpp`, which converts in registers and accumulates in float32. It is
compiled for this machine the first time it is needed (~1 min, needs a C++ compiler and ninja) and
cached by torch's extension builder (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions).

What it costs in fidelity: each cached key and value rounded to float16 (about 3 decimal digits);
`musicgen-live bench --kv float16 --quality` measures it against float32. The exact path keeps
float32.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

from .errors import EngineError

KV_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}
KERNELS = Path(__file__).parent / "kernels"
SOURCES = [KERNELS / name for name in ("decode_attention.cpp", "decoder_step.cpp", "module.cpp")]  # one module

# q (R, H, T, d) fp32, k / v float16 views, start column, scale -> (R, H, T, d) fp32
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]


def check_kv(kv: str, device: torch.device, exact: bool = False) -> None:
    """One clear sentence for a cache type this device or kernel choice cannot run."""
    if kv not in KV_DTYPES:
        raise EngineError(f"unknown KV cache type '{kv}' (choose one of {', '.join(KV_DTYPES)})")
    if kv == "float32":
        return
    if exact:
        raise EngineError("the exact (parity) kernels keep the KV cache in float32")
    if device.type != "cpu":
        raise EngineError(f"a float16 KV cache is read by a CPU kernel; on {device.type} keep kv float32")


def _cpu_tag() -> str:
    """A short hash of this CPU's feature flags: the kernel is built with -march=native, so a cache
    directory shared between different machines must not hand one machine's build to another."""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        import platform

        flags = platform.processor() + platform.machine()
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


def attention_kernel(say: Callable[[str], None] | None = None) -> AttentionKernel:
    """The compiled float16-cache attention (built on first use, then loaded from torch's cache)."""
    fn: AttentionKernel = kernels(say).decode_attention
    return fn


def kernels(say: Callable[[str], None] | None = None) -> ModuleType:
    """The compiled CPU kernels' module: `decode_attention`, and `DecoderStep` (`engine.lm`);
    `say` hears a word before the first build or load."""
    if say is not None and _load.cache_info().currsize == 0:
        say("float16 KV cache: loading its CPU kernels (built for this CPU the first time, ~1 min)")
    return _load()


def _source_tag() -> str:
    """A short hash of every kernel file: torch's builder notices a changed source on its own, but
    not a changed header."""
    digest = hashlib.sha1()
    for path in sorted(KERNELS.iterdir()):
        if path.suffix in (".cpp", ".h"):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:8]


@cache
def _load() -> ModuleType:
    if shutil.which("ninja") is None:  # the pip wheel's binary, when its folder is not on PATH
        try:
            import ninja  # type: ignore[import-untyped]

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
    missing = [tool for tool in ("c++", "ninja") if shutil.which(tool) is None]
    if missing:
        raise EngineError(
            f"a float16 KV cache needs its CPU kernels built once, which needs {' and '.join(missing)} "
            "(Debian/Ubuntu: apt install g++ ninja-build; or pip install ninja); or keep kv float32"
        )
    import logging

    builder_log = logging.getLogger("torch.utils.cpp_extension")
    level = builder_log.level
    builder_log.setLevel(logging.ERROR)  # its import warns that a CPU-only machine has no CUDA
    try:
        from torch.utils.cpp_extension import load
    finally:
        builder_log.setLevel(level)
    try:
        module = load(
            name=f"musicgen_live_kernels_{_cpu_tag()}_{_source_tag()}",
            sources=[str(p) for p in SOURCES],
            # -fopenmp: ATen's parallel_for is inlined here and parallel only under OpenMP
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # a compiler error, a missing header: said in one sentence
        raise EngineError(f"the float16 KV cache's CPU kernels did not build ({type(e).__name__}: {e})") from e
    return module
