"""Our compiled CPU kernels (`engine/kernels/*.cpp`): one Python module, built for this CPU.

They are compiled the first time a format needs them (~1 min; a C++ compiler and ninja) and cached
by torch's extension builder (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions), under a
name carrying a hash of this CPU's flags (they are built with -march=native) and of the sources.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType

from .errors import UserError

KERNELS = Path(__file__).parent / "kernels"
SOURCES = [
    KERNELS / name
    for name in (
        "decode_attention.cpp",
        "kv8_attention.cpp",
        "int4_linear.cpp",
        "decoder_step.cpp",
        "codec_step.cpp",
        "module.cpp",
    )
]  # one module


def _cpu_tag() -> str:
    """A short hash of this CPU's feature flags: the kernel is built with -march=native, so a cache
    directory shared between different machines must not hand one machine's build to another."""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        import platform

        flags = platform.processor() + platform.machine()
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


def kernels(say: Callable[[str], None] | None = None, need: str = "this format") -> ModuleType:
    """The compiled CPU kernels' module: `decode_attention`, `decode_attention_q8` and
    `kv_quantize` (`engine.kvcache`), `int4_linear` (`engine.int4`), `DecoderStep` (`engine.lm`)
    and `CodecStep` (`engine.codec_step`). `say` hears a word before the first build or load;
    `need` names what asked for them (in the sentence a missing compiler gets)."""
    if say is not None and _load.cache_info().currsize == 0:
        say(f"{need}: loading the CPU kernels (built for this CPU the first time, ~1 min)")
    try:
        return _load()
    except UserError as e:
        raise UserError(f"{need} needs {e}") from e


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
        raise UserError(
            f"our CPU kernels built once, which needs {' and '.join(missing)} "
            "(Debian/Ubuntu: apt install g++ ninja-build; or pip install ninja); or choose another format"
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
        raise UserError(f"our CPU kernels, which did not build ({type(e).__name__}: {e})") from e
    return module
