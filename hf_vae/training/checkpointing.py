"""Checkpoints that survive a kill at any moment, load without unpickling anything, and detect corruption.

A checkpoint is a folder `checkpoints/checkpoint-<step>` holding only safetensors and JSON:

    model.safetensors                 the model's weights (`safetensors.torch.save_model`)
    model_config.json                 the model's configuration, compared on resume
    training_state.safetensors/.json  everything else the loop needs: its position (`TrainingState`), the
                                      learning-rate schedule, the optimisers, the objective (discriminator,
                                      log-variance), the EMA, the fp16 loss scaler. Tensors go to the
                                      .safetensors file; the JSON holds the structure, the numbers and the
                                      names of the tensors.
    rng_state_<rank>.safetensors/.json  each process's random number generators: torch's CPU (and CUDA)
                                      states are uint8 tensors, Python's and NumPy's Mersenne-Twister states
                                      are lists of integers
    manifest.json                     the size and sha256 of every other file, written last

Nothing in it is unpickled: `accelerator.save_state`/`load_state` are not used, because they pickle the
registered objects and the RNG states and unpickle them with `weights_only=False` (a crafted checkpoint would
run code). A folder holding any other file (`.pkl`, `.bin`, `.pt`, ...) is refused, naming the file, before
anything in it is read.

The folder is written as `checkpoints/.tmp-checkpoint-<step>` and renamed into place once complete; a rename
within one file system is atomic, so a `checkpoint-<step>` folder always holds a manifest. `latest` takes the
newest checkpoint whose files match their manifest and skips (with a warning) one that does not: a truncated
or altered file is found by its size or its hash. A run killed while saving leaves only a `.tmp-` folder,
which `latest` ignores and the next run deletes. Retention renames a checkpoint to `.tmp-` before deleting it,
so a kill during retention cannot leave a half-deleted `checkpoint-<step>`.

The published model (`config.json`, `model.safetensors` and the model code at the root of the output folder) is
written the same way: `save_pretrained` into a temporary folder, then each file renamed into place, weights first.

The output folder belongs to one run (`claim_output_dir`, the one guard of every path that writes a run): a new
run refuses a folder holding another run's files unless it is told to overwrite them or to resume that run. A
run lists what it writes in `run_manifest.json` (before writing it), and --overwrite_output_dir removes exactly
those entries (see docs/reliability.md).

The pieces, each in its own module (this one gathers their names):

    checkpoint_format   state dicts <-> safetensors + JSON (`save_tree`, `load_tree`), `TrainingState`
    random_state        the random number generators in safe formats
    checkpoint_store    checkpoint folders: save, verify, list, prune, resume
    output_folder       the run's claim on its output folder and its run manifest
    publishing          the trained model written into the output folder atomically
"""

from .checkpoint_format import (  # noqa: F401
    CheckpointError,
    TrainingState,
    flatten_state,
    load_tree,
    save_tree,
    unflatten_state,
)
from .checkpoint_store import (  # noqa: F401
    CHECKPOINT_PREFIX,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SAFE_SUFFIXES,
    SUPERSEDED_DIR,
    TMP_PREFIX,
    apply_resume_overrides,
    check_checkpoint_files,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_training_state,
    remove_temporary,
    resolve_resume,
    save_checkpoint,
    set_aside_newer,
    verify_checkpoint,
    write_manifest,
)
from .output_folder import (  # noqa: F401
    RUN_END_ENTRIES,
    RUN_FORMAT,
    RUN_MANIFEST,
    RUN_START_ENTRIES,
    claim_output_dir,
    clear_previous_run,
    describe_cleared,
    read_run_manifest,
    record_run_entries,
)
from .publishing import publish_pretrained, remove_publish_leftovers  # noqa: F401
from .random_state import rng_state, set_rng_state  # noqa: F401
