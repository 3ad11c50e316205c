"""FSDP (`--fsdp "full_shard auto_wrap"`): the frozen base's decoder layers sharded over the processes, while the
prefix trains and every checkpoint stays prefix-only.

The Trainer drives FSDP2 through accelerate (`fully_shard` on each decoder layer, named by the base's
`_no_split_modules`, then on the whole model). Every parameter becomes a DTensor sharded on dim 0, the prefix
included. What ptune changes, and why:
- Checkpoints: the Trainer would save FSDP's own files (`pytorch_model_fsdp.bin` — the whole base — or DCP
  shards of it) and an FSDP optimizer file. ptune gathers the prefix and the prefix's Adam state on every rank
  (one collective each, prefix-sized) and rank 0 writes the usual `model.safetensors` and `optimizer.pt`
  (keyed by parameter name, as torch.distributed.checkpoint's full state dicts are); a resume reads them back
  and each rank keeps its own shard.
- On the CPU, accelerate leaves FSDP off and silently runs DDP (it only turns `fsdp_plugin` into FSDP for GPU-like
  devices), so nothing there would be sharded: `enable_on_cpu` sets the same state it sets on GPUs, so that
  the CPU tests run accelerate's own FSDP2 path (gloo), the one GPUs take.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


def check_arguments(verb: str, model_args, training) -> None:
    """What ptune runs under --fsdp: training (with eval loss) by FSDP2 over several processes."""
    from ptune.config.argtypes import BadArgument

    if not training.fsdp:
        return
    if verb != "train":
        raise BadArgument(
            f"ptune {verb} does not run under --fsdp: run it in one process (without torchrun), or under "
            "torchrun without --fsdp",
            "fsdp",
        )
    if training.world_size < 2:
        raise BadArgument(
            "--fsdp shards the base over several processes: launch with torchrun --nproc_per_node N (N >= 2), "
            "e.g. scripts/fsdp_train.sh, or remove --fsdp",
            "fsdp",
        )
    plugin = training.fsdp_plugin_args or {}
    refused = (  # (given, flag, why)
        (training.predict_with_generate, "--predict_with_generate", "generation runs outside FSDP's forward"),
        (model_args.quantization_bit, "--quantization_bit", "bitsandbytes layers are not sharded by ptune"),
        (plugin.get("fsdp_version") == 1, "fsdp_config version 1", "ptune shards with FSDP2 (version 2)"),
        (
            plugin.get("activation_checkpointing"),
            "fsdp_config activation_checkpointing",
            "use --activation_checkpointing true",
        ),
    )
    for given, flag, why in refused:
        if given:
            raise BadArgument(f"{flag} does not go with --fsdp: {why}", "fsdp")


def enable_on_cpu(accelerator, plugin_args: dict | None) -> bool:
    """Turn accelerate's state to FSDP on CPU processes (see the module docstring); True when it did so."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if plugin_args is None or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
    return True


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for a DTensor: call it on all ranks)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def gathered_prefix(model) -> dict[str, torch.Tensor]:
    """The prefix encoder's parameters, whole, float32 on the CPU, under THUDM's key names (all ranks call it)."""
    return {
        name: full(p.detach()).to("cpu", torch.float32).contiguous()
        for name, p in model.trainable_state_dict().items()
    }


@torch.no_grad()
def load_into(param: nn.Parameter, value: torch.Tensor) -> None:
    """Copy a whole tensor into a parameter; a sharded one keeps only this rank's part (every rank calls it)."""
    if is_sharded(param):
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(
            value.to(param.to_local().device, param.dtype), param.device_mesh, param.placements
        )
        param.to_local().copy_(value.to_local())
    else:
        param.data.copy_(value.to(param.device, param.dtype))


def reshard(model) -> None:
    """Put every FSDP unit back to its shards. A forward without backward (an evaluation) leaves the root unit
    (embedding, output layer, prefix) gathered, and the optimizer's parameters are the sharded ones."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer's state gathered whole (keyed by parameter name), on every rank, CPU tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    reshard(model)
    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Give each rank its shard of a whole optimizer state read from `optimizer.pt`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def decoder_share(model) -> tuple[int, int]:
    """(elements of the decoder layers' weights this process holds, elements of all of them)."""
    held = total = 0
    for layer in model.base.get_decoder().layers:
        for p in layer.parameters():
            total += p.numel()
            held += p.to_local().numel() if is_sharded(p) else p.numel()
    return held, total


def report_decoder_share(model) -> None:
    """One line per process on stderr: what FSDP left this process of the decoder layers' weights."""
    held, total = decoder_share(model)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    print(
        f"FSDP: process {rank} holds {held} of {total} decoder parameters ({100 * held / total:.1f}%)",
        file=sys.stderr,
        flush=True,
    )
