"""Checkpoint sources: find checkpoints on disk and read their weights lazily and safely.

- `discover(path)` walks a folder (or takes one file), groups files into checkpoints
  (one weight file; a sharded set with its ``*.index.json``; a Hugging Face model folder
  or Trainer ``checkpoint-N/`` folder as one checkpoint, diffusers' ``unet/`` and the
  like included; each model of an Accelerate ``save_state`` folder; a
  torch.distributed.checkpoint folder), finds each checkpoint's step (metadata first,
  then its name, then the nearest folder above it whose name gives one), resolves
  duplicates and splits a folder of runs (subfolders; models, ``checkpoint-N/unet/``
  beside ``checkpoint-N/text_encoder/``; files named for different runs, ``runA_…`` and
  ``runB_…``).
- `open_checkpoint(path)` opens one checkpoint (file, index or folder).
- `Checkpoint.open()` gives a `TensorReader` that reads one tensor at a time with a
  positioned read: memory holds the tensor being read, not the checkpoint.

Formats, told by a file's first bytes, not its suffix (``.pt .pth .bin .ckpt
.safetensors .pth.tar .pt.tar .tar .pkl .model``): PyTorch (zip and legacy ``torch.save``
formats; state dicts at any depth, the known keys first: Lightning's ``state_dict``,
``model_state_dict``, ``model``, DeepSpeed's ``module``, ``dcp_to_torch_save``'s
``['app']['model']``; a whole pickled ``nn.Module``), a plain ``pickle.dump`` of numpy
arrays, safetensors (bf16 and float8 included), sharded checkpoints of either, and
torch.distributed.checkpoint folders (read by torch's own reader). Pickles are read by a restricted unpickler that never runs code
from the file: unknown classes become inert stubs and a pickle that tries to call
``os.system``, ``eval`` and the like raises `UnsafePickleError`.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what static tools see: the same names, imported eagerly
    from ._checkpoint import Checkpoint, Fingerprint, open_checkpoint
    from ._discover import Discovery, RunSource, discover
    from ._formats import TensorReader
    from ._trainlog import read_metrics_file, read_training_log
    from ._writer import CheckpointOutput, plan_output

__all__ = [
    "discover",
    "open_checkpoint",
    "Discovery",
    "RunSource",
    "Checkpoint",
    "Fingerprint",
    "TensorReader",
    "read_training_log",
    "read_metrics_file",
    "CheckpointOutput",
    "plan_output",
]

# each public name is imported from its module on first use (specdyn/lazy.py)
__getattr__, __dir__ = lazy_exports(__name__)
