"""The frame step's model calls compiled with torch.compile (inductor), and on CUDA replayed from CUDA graphs.

Each of the three seams of StreamPipeline (VAE encode, UNet, VAE decode) is replaced by a ``CompiledCall``.
Compiled code and CUDA graphs want fixed shapes, so a call pads its batch up to the nearest of the
configured batch sizes (``compile_batch_sizes``) and slices the result back; a batch above the largest size
runs eagerly. Everything is compiled at start-up (``warm_up``), one progress message per batch size (to the
caller's ``progress`` callback, else the log), and inductor's cache lives in the folder the caller passes
(``PipelineConfig.compile_cache_dir``) so the next start is fast. If compiling fails, the call logs one
warning and runs eagerly from then on.

torch.compile's CUDA graph trees keep per-thread state, which torch before 2.13 made only on the importing
thread (pytorch#123177). The thread that will run frames (the GPU worker) calls ``prepare_thread`` before
its first frame: it makes that state and runs every compiled size there, so nothing is compiled or
recorded on air.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)



def use_cache_dir(folder: str | Path | None) -> str | None:
    """Keep compiled code in ``folder`` (the caller's choice: one that outlives /tmp, torch's default) unless
    the user chose a folder with TORCHINDUCTOR_CACHE_DIR. Torch writes its default into that variable the
    first time it asks. Returns the folder in use (None: torch's default, not asked yet)."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if folder is None:
        return current
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        torch_default = os.path.abspath(default_cache_dir())
    except ImportError:
        torch_default = None
    if current is None or os.path.abspath(current) == torch_default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = current = str(folder)
    return current


def should_compile(setting: str, device: torch.device) -> bool:
    """``auto``: on CUDA only (on a CPU the UNet is the whole cost and compiling buys little)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def ensure_cuda_graph_tls() -> None:
    """Give this thread the thread-local state torch.compile's CUDA graph trees expect.

    Before torch 2.13 only the importing thread (and autograd's threads) had it, so a compiled call from
    any other thread failed an assertion (pytorch#123177); later versions create it on demand.
    """
    try:
        from torch._inductor import cudagraph_trees as trees
    except ImportError:
        return
    key = "tree_manager_containers"
    if hasattr(trees.local, key) or torch._C._is_key_in_tls(key):
        return
    trees.local.tree_manager_containers = {}
    trees.local.tree_manager_locks = defaultdict(threading.Lock)
    torch._C._stash_obj_in_tls("tree_manager_containers", trees.local.tree_manager_containers)
    torch._C._stash_obj_in_tls("tree_manager_locks", trees.local.tree_manager_locks)


def _raise_recompile_limit(entries: int) -> None:
    """One compiled entry per batch size and seam: keep dynamo from giving up on them (its default is 8)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < entries:
            setattr(config, name, entries)
            return


def speed_up_modules(unet: Any, vae: Any, device: torch.device, *, fuse_qkv: str = "auto",
                     channels_last: str = "auto") -> list[str]:
    """Layout changes that keep the pictures and make the kernels faster; returns what was applied.
    ``auto`` means on CUDA only. Applied after any LoRA is fused (fusing QKV rewrites those weights)."""
    applied: list[str] = []
    if not isinstance(unet, torch.nn.Module):  # the analytic stand-in has no layers to rearrange
        return applied
    if should_compile(fuse_qkv, device) and hasattr(unet, "fuse_qkv_projections"):
        # diffusers' fusing sets its fused processor everywhere: a loaded IP-Adapter's processors (cross
        # attention, which keeps its own projections) are put back afterwards, self-attention stays fused.
        keep = {name: proc for name, proc in unet.attn_processors.items()
                if type(proc).__name__ == "FrameScaledIPAdapterProcessor"}
        try:
            unet.fuse_qkv_projections()
            if keep:
                unet.set_attn_processor({**unet.attn_processors, **keep})
            applied.append("fused QKV projections")
        except ValueError as exc:  # e.g. added KV projections, which diffusers does not fuse
            log.info("attention projections left unfused: %s", exc)
    modules = [channels_last] if channels_last in ("unet", "vae") else (
        ["unet", "vae"] if should_compile(channels_last, device) else [])
    for name in modules:
        (unet if name == "unet" else vae).to(memory_format=torch.channels_last)
    if modules:
        applied.append("channels_last" if len(modules) == 2 else f"channels_last ({modules[0]} only)")
    return applied


_SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                  "math": "MATH"}


def attention_kernel(setting: str, device: torch.device) -> contextlib.AbstractContextManager:
    """PipelineConfig.attention -> a context that forces that SDPA kernel (``auto``: torch's choice). Entered
    around the whole frame step, so compiled code is traced with the same kernel it runs."""
    if setting == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, _SDPA_BACKENDS[setting])])


def check_attention(setting: str, device: torch.device, dtype: torch.dtype) -> None:
    """ValueError (one line) when the forced attention kernel cannot run on this device and dtype."""
    if setting == "auto":
        return
    q = torch.zeros((1, 1, 8, 64), device=device, dtype=dtype)
    try:
        with torch.no_grad(), attention_kernel(setting, device):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
    except RuntimeError:
        raise ValueError(f"attention {setting!r} has no kernel for {str(dtype).removeprefix('torch.')} on "
                         f"{device.type}; choose auto or "
                         "another of flash, cudnn, efficient, math") from None


def _bucket(batch: int, sizes: list[int]) -> int | None:
    return next((size for size in sizes if size >= batch), None)


def _canonical(value: Any) -> Any:
    return value.contiguous() if isinstance(value, torch.Tensor) else value


def _pad(value: Any, batch: int, size: int) -> Any:
    """Repeat the last row of every batch-sized tensor up to ``size`` rows (other values pass through)."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch and size > batch:
        return torch.cat([value, value[-1:].expand(size - batch, *value.shape[1:])])
    return value


class CompiledCall:
    """A model call compiled per fixed batch size, with eager fallback.

    ``batch_of(args)`` gives the batch the call is for (for the UNet with classifier-free guidance that is
    twice the number of frames); every tensor argument with that many rows is padded.
    """

    def __init__(self, name: str, eager: Callable[..., torch.Tensor], sizes: list[int], device: torch.device,
                 backend: str = "inductor", on_failure: Callable[[str, BaseException], None] | None = None,
                 cuda_graphs: bool = True) -> None:
        self.name = name
        self.eager = eager
        self.sizes = sorted(set(sizes))
        self.cuda = device.type == "cuda" and cuda_graphs  # replayed from CUDA graphs
        self.on_failure = on_failure
        self.failed = False
        self.compiled_calls = 0  # calls served by compiled code (the rest ran eagerly)
        self.compiled: Callable[..., torch.Tensor] | None = None
        try:
            # reduce-overhead = inductor + CUDA graphs; on a CPU there are no graphs to capture.
            mode = "reduce-overhead" if self.cuda else None
            self.compiled = torch.compile(eager, backend=backend, mode=mode, dynamic=False)
        except Exception as exc:  # noqa: BLE001 - any compiler problem means: run eagerly
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        if not self.failed and self.on_failure is not None:
            self.on_failure(self.name, exc)
        self.failed = True

    def __call__(self, *args: Any) -> torch.Tensor:
        batch = args[0].shape[0]
        size = _bucket(batch, self.sizes)
        if self.failed or self.compiled is None or size is None:
            return self.eager(*args)
        # Compiled code is specialised to its inputs' memory layout too: the same batch reaches here
        # channels-last from a frame at the working size, contiguous after a resize or padding. One layout
        # keeps it to one compile per size (a mismatch would recompile on air).
        padded = [_canonical(_pad(a, batch, size)) for a in args]
        try:
            if self.cuda:
                ensure_cuda_graph_tls()
                torch.compiler.cudagraph_mark_step_begin()
            out = self.compiled(*padded)
            self.compiled_calls += 1
        except Exception as exc:  # noqa: BLE001 - a failed compile must not stop the stream
            self._give_up(exc)
            return self.eager(*args)
        # CUDA-graph outputs live in the graph's memory and are overwritten by the next replay: copy.
        if isinstance(out, tuple):  # the ControlNet's residuals
            return tuple(o[:batch].clone() if self.cuda else o[:batch] for o in out)
        return out[:batch].clone() if self.cuda else out[:batch]


def graph_mode(setting: str, device: torch.device) -> str:
    """PipelineConfig.graph -> what is compiled: ``whole`` (the whole step, one CUDA graph per batch size and
    step count), ``seams`` (the three model calls, one graph each, eager arithmetic between) or ``off`` (the
    three model calls compiled without CUDA graphs). ``auto``: whole on CUDA, seams elsewhere."""
    if setting == "auto":
        return "whole" if device.type == "cuda" else "seams"
    return setting


def enable_compile(pipe: Any, sizes: list[int], *, backend: str = "inductor",
                   progress: Callable[[str], None] | None = None, warm: bool = True,
                   cache_dir: str | Path | None = None, graph: str = "seams") -> float:
    """Replace the pipeline's frame step (``graph="whole"``, pipelines/graph_step.py) or its model calls
    (``seams``; ``off``: without CUDA graphs) by compiled ones and, with ``warm``, compile them for every batch
    size now, saying how far it got to ``progress`` (else the log); a whole step then compiles nothing new.
    Compiled code is kept in ``cache_dir`` (None: TORCHINDUCTOR_CACHE_DIR or torch's default). Returns the
    seconds it took."""
    use_cache_dir(cache_dir)
    _raise_recompile_limit(8 * len(sizes) + 16)
    device = pipe.device
    warned: list[str] = []

    def warn_once(name: str, exc: BaseException) -> None:
        if not warned:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.warning("compiling the frame step failed at the %s (%s); running eagerly", name, first_line)
        warned.append(name)

    conditioned = bool(getattr(getattr(pipe, "components", None), "controlnets", None)) or \
        getattr(pipe, "style", None) is not None
    if graph == "whole" and conditioned:
        # A stream's ControlNet and style settings are not tensor fields the whole-step graph reads live:
        # conditioned pipelines compile their model calls (seams) instead.
        log.info("ControlNet or IP-Adapter loaded: compiling the model calls (seams), not the whole step")
        graph = "seams"
    if graph == "whole":
        from pipelines.graph_step import WholeStep

        pipe.whole_step = WholeStep(pipe, sizes, backend=backend, on_failure=warn_once,
                                    thread_state=ensure_cuda_graph_tls)
    else:
        graphs = graph != "off"
        pipe.vae_encode = CompiledCall("VAE encode", pipe.vae_encode, sizes, device, backend, warn_once, graphs)
        pipe.vae_decode = CompiledCall("VAE decode", pipe.vae_decode, sizes, device, backend, warn_once, graphs)
        # With classifier-free guidance the UNet sees two rows per frame.
        unet_sizes = sorted(set(sizes) | ({2 * s for s in sizes} if pipe.uses_cfg else set()))
        pipe.unet_forward = CompiledCall("UNet", pipe.unet_forward, unet_sizes, device, backend, warn_once,
                                         graphs)
        if getattr(getattr(pipe, "components", None), "controlnets", None):
            pipe.controlnet_forward = CompiledCall("ControlNet", pipe.controlnet_forward, unet_sizes, device,
                                                   backend, warn_once, graphs)
            pipe.control_always = True  # the UNet always gets residuals: one compiled entry, no recompiles
    pipe.compiled_sizes = sorted(set(sizes))
    pipe.warmed_threads = set()
    if not warm:
        return 0.0
    seconds = warm_up(pipe, sizes, progress=progress)
    if getattr(pipe, "whole_step", None) is not None:
        pipe.whole_step.seal()
    (progress or log.info)(f"frame step {'running eagerly' if warned else 'compiled'} after "
                           f"{seconds:.1f} s of warm-up")
    return seconds


def warm_up(pipe: Any, sizes: list[int], progress: Callable[[str], None] | None = None) -> float:
    """Run one batch of every size through the frame step, so compiling happens now and not on air."""
    import numpy as np

    say = progress or log.info
    started = time.perf_counter()
    for size in sorted(set(sizes)):
        t0 = time.perf_counter()
        cached = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        say(f"compiling the frame step for batch {size} (first start only"
            + (f"; cached in {cached})..." if cached else ")..."))
        frames = np.zeros((size, pipe.config.height, pipe.config.width, 3), np.uint8)
        ids = [f"__warmup_{i}" for i in range(size)]
        # On CUDA the first call compiles, the second records the CUDA graphs, the third replays them.
        for _ in range(3 if pipe.device.type == "cuda" else 1):
            pipe(frames, ids)
        for stream_id in ids:
            pipe.remove_stream(stream_id)
        say(f"batch {size} ready in {time.perf_counter() - t0:.1f} s")
    warmed = getattr(pipe, "warmed_threads", None)
    if warmed is not None and set(sizes) >= set(getattr(pipe, "compiled_sizes", [])):
        warmed.add(threading.get_ident())
    return time.perf_counter() - started


def prepare_thread(pipe: Any) -> None:
    """Before a new thread's first frame, on CUDA: make the graph trees' thread state and run every
    compiled size there (the compiled code is shared between threads: replays, not a compile)."""
    sizes = getattr(pipe, "compiled_sizes", None)
    if not sizes or pipe.device.type != "cuda" or threading.get_ident() in pipe.warmed_threads:
        return
    ensure_cuda_graph_tls()
    seconds = warm_up(pipe, sizes, progress=log.debug)
    log.info("compiled frame step ready on thread %s in %.1f s", threading.current_thread().name, seconds)
