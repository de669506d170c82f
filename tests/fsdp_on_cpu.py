"""`python -m deliberate ...` with accelerate's FSDP allowed on the CPU, for `accelerate launch` in the tests.

accelerate (1.15) turns FSDP on only for accelerators: on the CPU (`MULTI_CPU`, gloo) it ignores the FSDP plugin
and silently runs plain DDP. torch itself shards on the CPU (`fully_shard`, DTensor, gloo collectives), so this
lifts that one check and nothing else: accelerate's FSDP2 preparation, the Trainer's gathered saves and
deliberate's loading and merging run as they would on GPUs. It reports each rank it sharded on stderr, so a
test can tell that FSDP2 really ran.
"""

import runpy
import sys

import accelerate.accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init_state = AcceleratorState.__init__
_prepare = accelerate.accelerator.fsdp2_prepare_model


def _init_allowing_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init_state(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState writes it


def _prepare_and_report(accelerator, model):
    model = _prepare(accelerator, model)
    sys.stderr.write(f"FSDP2 sharded {type(model).__name__} on rank {accelerator.process_index}\n")  # one write
    sys.stderr.flush()
    return model


AcceleratorState.__init__ = _init_allowing_fsdp_on_cpu
accelerate.accelerator.fsdp2_prepare_model = _prepare_and_report

if __name__ == "__main__":
    sys.argv = ["deliberate", *sys.argv[1:]]
    runpy.run_module("deliberate", run_name="__main__", alter_sys=True)
