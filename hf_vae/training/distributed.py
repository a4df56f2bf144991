"""What running on several processes (or devices) needs: the Accelerator's settings for this machine, gradients
averaged outside DDP, the replicas checked at the end, and a clean shutdown of the process group."""

from __future__ import annotations

import os
import time
import warnings
from typing import Dict, Sequence

import torch


def resolve_mixed_precision(requested: str) -> str:
    """fp16 needs an accelerator; on a CPU-only machine fall back to full precision rather than fail."""
    if requested != "fp16":
        return requested
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) or \
        torch.backends.mps.is_available()
    if on_cpu or not has_accelerator:
        warnings.warn("--mixed_precision fp16 needs a GPU (CUDA/XPU/MPS) and this run has none: training in "
                      "full precision (use bf16 for reduced precision on CPUs).")
        return "no"
    return requested


def cpu_only() -> bool:
    """No accelerator device is available: Accelerate then needs `cpu=True` to set up multi-process (gloo)
    training; without it, processes started by `accelerate launch` would each train alone."""
    import accelerate.utils as utils

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        return False
    for name in ("is_xpu_available", "is_npu_available", "is_mlu_available", "is_musa_available",
                 "is_sdaa_available", "is_hpu_available", "is_neuron_available", "is_torch_xla_available"):
        check = getattr(utils, name, None)
        try:
            if check is not None and check():
                return False
        except Exception:  # a probe that fails means that device is not usable here
            continue
    return True


def average_gradients(params: Sequence[torch.nn.Parameter], accelerator) -> None:
    """All-reduce (mean) the gradients of parameters that are not inside the DDP-wrapped model.

    The discriminator runs two forward passes per step (real and fake) and the log-variance lives in the loss,
    so neither is wrapped in DDP; their gradients are averaged here, in one flat all-reduce.
    """
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def check_replicas_agree(accelerator, named_params: Dict[str, Sequence[torch.nn.Parameter]]) -> None:
    """With several processes, every replica must hold the same weights; a cheap checksum comparison catches a
    gradient that was not averaged (it would make the replicas drift apart silently)."""
    if accelerator.num_processes == 1:
        return
    for name, params in named_params.items():
        if not params:
            continue
        checksum = torch.stack([p.detach().double().sum() for p in params]).to(accelerator.device)
        gathered = accelerator.gather(checksum[None]).view(accelerator.num_processes, -1)
        if not torch.equal(gathered.min(0).values, gathered.max(0).values):
            raise RuntimeError(f"The {name} weights differ between processes after training: expected identical "
                               f"replicas (DDP), got per-process checksums {gathered.sum(1).tolist()}.")


def shutdown(accelerator, failed: bool = False) -> None:
    """End the trackers and tear the process group down while the interpreter is healthy.

    With gloo, a process group destroyed during interpreter exit (when the DDP reducer that references it is
    garbage-collected) can deadlock: its worker thread waits for the GIL to release the tensors of the last
    collective while the exiting main thread, holding the GIL, waits for that thread. So: let the worker
    finish (sleep releases the GIL), drop the DDP wrapper, then destroy the group. After an error there is no
    barrier: the other processes may never reach it.
    """
    if accelerator.num_processes > 1 and not failed:
        import gc

        accelerator.wait_for_everyone()
        time.sleep(0.2)
        accelerator.free_memory()
        gc.collect()
    accelerator.end_training()
    if accelerator.num_processes == 1:
        # Accelerate keeps its state (mixed precision among it) in process-wide singletons, so a second `train()` in
        # the same process (a notebook, a benchmark) asking for another precision would be refused. Clear them, as
        # transformers' TrainingArguments does before it builds its own accelerator.
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()
        GradientState._reset_state()
