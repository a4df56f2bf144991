"""Push hf_vae models to the Hugging Face Hub, in one commit, with a model card and a preview image.

    push_output_dir(output_dir, repo_id)     a finished training run (what the trainer's --push_to_hub and
                                             scripts/push_to_hub.py call)
    push_model(model, repo_id, metrics=...)  a model in memory
    prepare_output_dir / prepare_model       build the same files into a local folder without pushing (a dry run)

A push uploads, in a single commit:

    config.json              model_type and auto_map (the model classes are registered for trust_remote_code)
    model.safetensors        the weights
    *.py                     the model code, so `AutoModel.from_pretrained(repo, trust_remote_code=True)` works
                             where hf_vae is not installed
    README.md                the model card (hf_vae.integrations.model_card, templates in model_cards/)
    preview.png              reconstructions and samples, side by side
    vae/                     KLAE only: the same weights as a diffusers `AutoencoderKL`
                             (`AutoencoderKL.from_pretrained(repo, subfolder="vae")`)
    prior/                   a VQ-VAE with a learned prior: the GPT-2 prior over its code maps, which
                             `from_pretrained` of the repo attaches (with or without hf_vae installed)

Nothing else of an output directory is pushed (never `checkpoints/`). Files of an earlier push that this push
does not rewrite (an older shard, a `vae/` or `prior/` folder, a stale code file) are deleted in the same commit, so the repo
always describes one model.

Nothing is half-pushed. In order: the output directory is checked (the checkpoint loads with every weight,
metrics.json and training_args.json are well formed and belong to it); the token is checked with one read-only
request (present, valid, allowed to write to the namespace; this also resolves a bare "name" to "user/name");
every file is built in a temporary folder (the card renders and its metadata parses, the diffusers copy reproduces
the model's outputs). Only then is the repository created (if needed) and the one commit made; if that commit
fails, a repository created for it is deleted again.

Nothing hangs. Every request of a push (the token check, the repository's creation, the content upload, the
commit, the clean-up) has a timeout, `HF_VAE_HUB_TIMEOUT` seconds (default 30) to connect and for each read or
write, and the reads (token check, repository lookups, clean-up) are retried `HF_VAE_HUB_RETRIES` times (default
2) after a dropped connection, a timeout or a 502/503/504 (the content upload is retried by huggingface_hub itself, 5
times; the repository's creation and the commit are never repeated); `timeout=` / `retries=` arguments
override both (docs/reliability.md).

Loading needs nothing from this module:

    import hf_vae; AutoModel.from_pretrained(repo_id, revision=...)            # with hf_vae installed
    AutoModel.from_pretrained(repo_id, trust_remote_code=True, revision=...)   # without it

`model.push_to_hub(repo_id)` (transformers' PushToHubMixin) also works, but it uploads only what
`save_pretrained` writes (config.json, model.safetensors, the model code) plus transformers' generic README.md
(or keeps the repo's existing card): no hf_vae card, no preview, no diffusers copy. Use `push_model` for those.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from transformers import PreTrainedModel

from .. import families
from ..utils.images import class_sample_labels
from .model_card import (
    DEFAULT_LICENSE,
    ModelCardTemplateError,
    OutputDirError,
    TrainingOutput,
    compose_preview,
    image_grid,
    normalise_metrics,
    read_output_dir,
    render_model_card,
    value_range,
)

__all__ = [
    "DEFAULT_HUB_RETRIES",
    "DEFAULT_HUB_TIMEOUT",
    "DEFAULT_LICENSE",
    "HubAuthError",
    "HubPushError",
    "ModelCardTemplateError",
    "OutputDirError",
    "check_push_target",
    "diffusers_autoencoder",
    "hub_limits",
    "prepare_model",
    "prepare_output_dir",
    "push_model",
    "push_output_dir",
    "render_model_card",
]

logger = logging.getLogger(__name__)

PREVIEW_FILE = "preview.png"
DIFFUSERS_SUBFOLDER = families.DIFFUSERS_COMPONENT
#: the VQ-VAE's learned prior (hf_vae.modeling_vqvae.PRIOR_SUBFOLDER)
PRIOR_SUBFOLDER = "prior"
#: files a push owns: those matching, present in the repo but not rewritten by a push, are deleted by it
MANAGED_PATTERNS = ("*.py", "*.safetensors", "model.safetensors.index.json", "config.json", "README.md",
                    PREVIEW_FILE, f"{DIFFUSERS_SUBFOLDER}/*", f"{PRIOR_SUBFOLDER}/*")
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
#: seconds a Hub request may take to connect, and to send or receive each chunk (env HF_VAE_HUB_TIMEOUT)
DEFAULT_HUB_TIMEOUT = 30.0
#: retries of a repeatable request after a dropped connection or a timeout (env HF_VAE_HUB_RETRIES)
DEFAULT_HUB_RETRIES = 2
HUB_TIMEOUT_ENV, HUB_RETRIES_ENV = "HF_VAE_HUB_TIMEOUT", "HF_VAE_HUB_RETRIES"
#: HTTP answers worth a retry: the Hub (or a proxy in front of it) is overloaded or restarting
_TRANSIENT_STATUSES = (502, 503, 504)


class HubPushError(RuntimeError):
    """A push to the Hub failed.

    Attributes:
        stage: where it failed: None (checks before anything was sent), "create" (the repository), "upload" (the
            files' contents), "commit" (the commit that makes them the repository's new revision).
        repo_changed: whether the repository's branch moved: False (it did not; a repository created by this push
            is deleted again), True (the commit went through although its answer was lost), None (unknown: the Hub
            could not be asked afterwards).
    """

    def __init__(self, message: str, stage: Optional[str] = None, repo_changed: Optional[bool] = False):
        super().__init__(message)
        self.stage = stage
        self.repo_changed = repo_changed


class HubAuthError(HubPushError, PermissionError):
    """No token, an invalid or read-only token, or a token without write access to the repository's namespace."""


# ------------------------------------------------------------------------------------------------------------
# Building the files of a push
# ------------------------------------------------------------------------------------------------------------


def diffusers_autoencoder(model):
    """The KLAE `model` as a diffusers `AutoencoderKL` with the same weights, checked to give the same outputs.

    The family table declares which families are diffusers twins; each provides `to_diffusers()`.
    """
    if not families.of(model).capabilities.diffusers_twin:
        twins = ", ".join(families.names(diffusers_twin=True))
        raise HubPushError(f"Only the diffusers twins ({twins}) have a diffusers equivalent (AutoencoderKL); got model_type "
                           f"{model.config.model_type!r}.")
    try:
        import diffusers  # noqa: F401  (to_diffusers builds an AutoencoderKL)
    except ImportError as e:
        raise HubPushError("A KLAE repository carries a diffusers copy under vae/, which needs diffusers "
                           "(`pip install diffusers`); pass diffusers_copy=False to push without it.") from e
    try:  # a diffusers twin declares `to_diffusers` (KLAEModel)
        vae = model.to_diffusers()
    except Exception as e:
        raise HubPushError(f"Could not convert the KLAE to diffusers' AutoencoderKL: {type(e).__name__}: {e}") from e
    _check_same_outputs(model, vae.eval())
    return vae


@torch.no_grad()
def _check_same_outputs(model, vae) -> None:
    """Encode and decode one small input with both models; their outputs must agree."""
    config = model.config
    factor = config.downsampling_factor
    side = max(1, min(config.sample_size // factor, 4))
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, config.in_channels, side * factor, side * factor, generator=generator) * 2 - 1
    z = torch.randn(1, config.latent_channels, side, side, generator=generator)
    x, z = x.to(model.device, model.dtype), z.to(model.device, model.dtype)
    pairs = {"encode(x).latent_dist.mean": (model.encode(x).latent_dist.mean, vae.encode(x).latent_dist.mean),
             "decode(z).sample": (model.decode(z).sample, vae.decode(z).sample)}
    atol = 1e-4 if model.dtype == torch.float32 else 3e-2
    for what, (ours, theirs) in pairs.items():
        if ours.shape != theirs.shape or not torch.allclose(ours.float(), theirs.float(), atol=atol, rtol=1e-3):
            diff = (ours.float() - theirs.float()).abs().max().item() if ours.shape == theirs.shape else "shape"
            raise HubPushError(f"The diffusers copy does not reproduce the KLAE: {what} differs (max abs diff {diff}, "
                               f"shapes {tuple(ours.shape)} vs {tuple(theirs.shape)}). Expected identical outputs.")


def _sample_panel(model, num_samples: Optional[int] = None):
    """A grid of `model.generate` samples (seed 0), or None where the model cannot make images alone."""
    config = model.config
    if len(config.data_shape) != 3 or config.data_shape[0] not in (1, 3):
        return None
    labels = None
    if model.is_conditional:
        if model.num_classes is None:
            return None  # condition vectors: no canonical condition to show
        num_samples = num_samples or min(16, 2 * model.num_classes)
        labels = class_sample_labels(model.num_classes, num_samples, model.device)
    side = config.data_shape[-1]
    num_samples = num_samples or (16 if side <= 64 else 4)
    with torch.no_grad():
        samples = model.generate(num_samples, labels=labels, generator=torch.Generator(model.device).manual_seed(0))
    return image_grid(samples, value_range(model))


def _reconstruction_panel(model, pixel_values: torch.Tensor, labels=None):
    """Originals (top row) over their reconstructions (bottom row)."""
    pixel_values = pixel_values.to(model.device, model.dtype)
    with torch.no_grad():
        reconstructions = model.reconstruct(pixel_values, labels=labels) if labels is not None else \
            model.reconstruct(pixel_values)
    return image_grid(torch.cat([pixel_values, reconstructions]), value_range(model), nrow=pixel_values.shape[0])


def _check_empty_folder(folder: Union[str, os.PathLike]) -> Path:
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise HubPushError(f"Expected a new or empty folder to build the repository files in, got {str(folder)!r}.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _stage(model, folder: Path, *, metrics, training_args, panels: Sequence[Tuple[str, Any]], repo_id: Optional[str],
           license: str, template_dir, diffusers_copy: Optional[bool]) -> List[str]:
    """Write every file of the repository into `folder`; return their paths relative to it."""
    if diffusers_copy is None:
        diffusers_copy = families.of(model).capabilities.diffusers_twin
    image = PREVIEW_FILE if panels else None
    # The card first: it is the most likely to fail (templates), and it is cheap.
    card = render_model_card(model, repo_id=repo_id, metrics=metrics, training_args=training_args, image=image,
                             diffusers_copy=diffusers_copy, license=license, template_dir=template_dir)
    vae = diffusers_autoencoder(model) if diffusers_copy else None
    model.save_pretrained(folder)
    with open(folder / "config.json", encoding="utf-8") as f:
        saved_config = f.read()
    if '"auto_map"' not in saved_config or not list(folder.glob("modeling_*.py")):
        raise HubPushError(f"save_pretrained wrote no auto_map / model code for {type(model).__name__}: expected a "
                           f"model class registered for trust_remote_code (import hf_vae before building the model).")
    if panels:
        compose_preview(panels).save(folder / PREVIEW_FILE)
    if vae is not None:
        vae.save_pretrained(folder / DIFFUSERS_SUBFOLDER)
    card.save(folder / "README.md")
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def prepare_output_dir(output_dir: Union[str, os.PathLike], folder: Union[str, os.PathLike], *,
                       repo_id: Optional[str] = None, license: str = DEFAULT_LICENSE,
                       template_dir: Union[str, os.PathLike, None] = None,
                       diffusers_copy: Optional[bool] = None) -> List[str]:
    """Build, in the new or empty `folder`, every file `push_output_dir` would push; return their relative paths.

    The preview combines the run's reconstructions.png and samples.png; where samples.png is missing, samples are
    generated from the model (seed 0); where reconstructions.png is missing, the preview shows samples only.
    """
    return _prepare_output(read_output_dir(output_dir), folder, repo_id=repo_id, license=license,
                           template_dir=template_dir, diffusers_copy=diffusers_copy)


def _prepare_output(output: TrainingOutput, folder, **kwargs) -> List[str]:
    folder = _check_empty_folder(folder)
    panels = []
    if output.reconstructions is not None:
        panels.append(("Reconstructions", output.reconstructions))
    if output.samples is not None:
        panels.append(("Samples", output.samples))
    else:
        generated = _sample_panel(output.model)
        if generated is not None:
            logger.info("%s has no samples.png; the preview shows samples generated from the model.", output.path)
            panels.append(("Samples", generated))
    return _stage(output.model, folder, metrics=output.metrics, training_args=output.training_args, panels=panels,
                  **kwargs)


def prepare_model(model, folder: Union[str, os.PathLike], *, repo_id: Optional[str] = None,
                  metrics: Optional[Mapping[str, Any]] = None, training_args: Optional[Mapping[str, Any]] = None,
                  reconstructions=None, samples=None, pixel_values: Optional[torch.Tensor] = None, labels=None,
                  license: str = DEFAULT_LICENSE, template_dir: Union[str, os.PathLike, None] = None,
                  diffusers_copy: Optional[bool] = None) -> List[str]:
    """Build, in the new or empty `folder`, every file `push_model` would push; return their relative paths.

    Args:
        metrics: a metrics.json record ({"model", "dataset", "split", "step", "metrics"}) or {name: value}.
        training_args: the run's arguments, shown as hyper-parameters in the card.
        reconstructions, samples: images (paths or PIL images) for the preview. Without `reconstructions`,
            `pixel_values` (and `labels` for a CVAE) are reconstructed; without `samples`, samples are generated.
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"Expected an hf_vae model, got {type(model).__name__}.")
    normalise_metrics(metrics, training_args=training_args)  # fail before building anything
    folder = _check_empty_folder(folder)
    was_training = model.training
    model.eval()
    try:
        panels = []
        if reconstructions is not None:
            panels.append(("Reconstructions", reconstructions))
        elif pixel_values is not None:
            panels.append(("Reconstructions", _reconstruction_panel(model, pixel_values, labels)))
        generated = samples if samples is not None else _sample_panel(model)
        if generated is not None:
            panels.append(("Samples", generated))
        return _stage(model, folder, repo_id=repo_id, metrics=metrics, training_args=training_args, panels=panels,
                      license=license, template_dir=template_dir, diffusers_copy=diffusers_copy)
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------------------------
# Talking to the Hub
# ------------------------------------------------------------------------------------------------------------


def _status(error: Exception) -> Optional[int]:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def hub_limits(timeout: Optional[float] = None, retries: Optional[int] = None) -> Tuple[float, int]:
    """(timeout in seconds, retries) of Hub requests: the arguments, else HF_VAE_HUB_TIMEOUT / HF_VAE_HUB_RETRIES,
    else the defaults (30 s, 2 retries). A value that is not a positive finite number / a count is refused."""
    if timeout is None:
        timeout = os.environ.get(HUB_TIMEOUT_ENV, DEFAULT_HUB_TIMEOUT)
    if retries is None:
        retries = os.environ.get(HUB_RETRIES_ENV, DEFAULT_HUB_RETRIES)
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        timeout = float("nan")
    if not (math.isfinite(timeout) and timeout > 0):
        raise HubPushError(f"Expected the Hub timeout ({HUB_TIMEOUT_ENV} or timeout=) to be a positive number of "
                           f"seconds, got {timeout!r}.")
    try:
        retries_count = int(str(retries))
    except ValueError:
        retries_count = -1
    if not 0 <= retries_count <= 10:
        raise HubPushError(f"Expected the Hub retries ({HUB_RETRIES_ENV} or retries=) to be a count from 0 to 10, "
                           f"got {retries!r}.")
    return timeout, retries_count


@contextlib.contextmanager
def bounded_requests(timeout: float):
    """Every request of huggingface_hub's shared client made inside gets `timeout` seconds to connect, to send and
    to receive each chunk, whatever timeout its caller passed (some pass none: they would wait forever)."""
    from huggingface_hub.utils import get_session

    client = get_session()
    limits = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}

    def set_timeout(request) -> None:
        request.extensions["timeout"] = dict(limits)

    hooks = client.event_hooks
    client.event_hooks = {**hooks, "request": [*hooks.get("request", []), set_timeout]}
    try:
        yield
    finally:
        hooks = client.event_hooks
        client.event_hooks = {**hooks, "request": [h for h in hooks.get("request", []) if h is not set_timeout]}


def _transient(error: Exception) -> bool:
    """A dropped connection, a timeout, or an overloaded Hub: the same request may succeed when repeated."""
    try:
        import httpx2 as httpx
    except ImportError:  # huggingface_hub before its httpx2 client
        import httpx
    return isinstance(error, httpx.TransportError) or _status(error) in _TRANSIENT_STATUSES


def _retrying(call: Callable[[], Any], retries: int):
    """`call()`, repeated up to `retries` more times after a transient failure (waits 0.25 s, 0.5 s, ... up to 4 s).
    Only for requests that can be repeated without changing the result (reads, uploads of content by hash)."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as error:
            if attempt == retries or not _transient(error):
                raise
            logger.warning("Hub request failed (%s: %s); retrying (%d of %d).", type(error).__name__, error,
                           attempt + 1, retries)
            time.sleep(min(4.0, 0.25 * 2 ** attempt))


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or not repo_id:
        raise HubPushError(f"Expected a repository id 'namespace/name' (or 'name'), got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubPushError(f"Invalid repository id {repo_id!r}: {e}") from e


def _check_revision(revision: Optional[str]) -> None:
    if revision is not None and (not isinstance(revision, str) or not revision or _COMMIT_SHA.fullmatch(revision)):
        raise HubPushError(f"Expected `revision` to be a branch name to push to, got {revision!r} (a commit id can "
                           f"be loaded from, not pushed to).")


def _authenticate(api, repo_id: str, token, retries: int = 0) -> Tuple[str, str]:
    """Check the token can write to the repository's namespace; return (token, full repo id)."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = (get_token() if token is None or token is True else token) or None
    if not isinstance(token, str):
        raise HubAuthError(f"No Hugging Face token: pushing to {repo_id!r} needs a token with write access. Expected "
                           f"token=..., the HF_TOKEN environment variable or a login (`hf auth login`), found none.")
    try:
        who = _retrying(lambda: api.whoami(token=token), retries)
    except HfHubHTTPError as e:
        if _status(e) == 401:
            raise HubAuthError(f"The Hub at {api.endpoint} refused the token (401 Unauthorized): it is invalid or "
                               f"expired. Expected a valid token with write access to {repo_id!r}.") from e
        raise HubPushError(f"Could not check the token with the Hub at {api.endpoint}: {e}. Nothing was pushed.",
                           stage="authenticate") from e
    except Exception as e:  # a transport failure: the Hub could not be reached
        raise HubPushError(f"Push failed at the authenticate stage: could not reach the Hub at {api.endpoint} to check "
                           f"the token ({type(e).__name__}: {e}). Nothing was pushed.", stage="authenticate") from e
    user = who.get("name")
    namespace, _, name = repo_id.rpartition("/")
    if not namespace:
        namespace, repo_id = user, f"{user}/{name}"
    orgs = {org.get("name"): org.get("roleInOrg") for org in who.get("orgs") or ()}
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubAuthError(f"The token of {user!r} is read-only; pushing to {repo_id!r} needs a token with write access.")
    if namespace != user and namespace not in orgs:
        member_of = f" (member of {sorted(orgs)})" if orgs else ""
        raise HubAuthError(f"The token belongs to {user!r}{member_of}, who cannot write to the namespace "
                           f"{namespace!r} of {repo_id!r}. Expected a token of {namespace!r} or of a member of that "
                           f"organisation with write access.")
    if namespace in orgs and orgs[namespace] == "read":
        raise HubAuthError(f"{user!r} has only read access to the organisation {namespace!r}; pushing to "
                           f"{repo_id!r} needs write access.")
    return token, repo_id


def _commit_folder(api, folder: Path, files: Sequence[str], repo_id: str, *, token: str, private: bool,
                   revision: Optional[str], commit_message: str, commit_description: Optional[str],
                   retries: int = 0):
    """Create the repo/branch if needed and push `files` of `folder` in one commit (`token` is authenticated)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import HfHubHTTPError

    branch = revision or "main"
    head = None

    def branch_moved() -> Optional[bool]:
        """After a failure: did the branch move past `head` (a commit whose answer was lost)? None if unknown."""
        if head is None:
            return False
        try:
            return _retrying(lambda: api.repo_info(repo_id, revision=branch, token=token), retries).sha != head
        except Exception:  # the Hub is unreachable: say so rather than guess
            return None

    def fail(stage: str, action: str, error: Exception, created: bool = False):
        # Transport errors (a dropped connection, a timeout) and HTTP refusals alike become a HubPushError that says
        # where the push stopped and what state the repository is in.
        changed = False if stage in ("create", "upload") else branch_moved()
        if changed is False:
            note = "Nothing was pushed: the repository was not changed."
            if created:
                # A creation that failed may still have happened (its answer lost): look before deleting.
                note += _delete_created_repo(api, repo_id, token, retries, look_first=stage == "create")
        elif changed:
            note = (f"The commit reached {repo_id!r} (its branch {branch!r} moved) although its answer was lost: the "
                    f"repository was changed; check it before pushing again.")
        else:
            note = (f"Whether the commit reached {repo_id!r} could not be checked (the Hub did not answer): the "
                    f"repository may have been changed; check branch {branch!r} before pushing again.")
        kind = HubAuthError if _status(error) in (401, 403) else HubPushError
        detail = f"{type(error).__name__}: {error}" if not isinstance(error, HfHubHTTPError) else str(error)
        return kind(f"Push failed at the {stage} stage: could not {action} on {api.endpoint} ({detail}). {note}",
                    stage=stage, repo_changed=changed)

    exists = None
    try:
        exists = _check_existing_repo(api, repo_id, token, private, retries)
        if not exists:
            # Not retried: a creation whose answer was lost is found (and deleted) by `fail`.
            api.create_repo(repo_id, private=private, token=token)
    except HubPushError:
        raise
    except Exception as e:  # HTTP refusals and transport failures alike
        raise fail("create", f"create the repository {repo_id!r}", e, created=exists is False) from e
    created = not exists
    stage = "upload"
    try:
        refs = _retrying(lambda: api.list_repo_refs(repo_id, token=token), retries) if revision is not None else None
        if revision is not None and branch not in {b.name for b in refs.branches}:
            api.create_branch(repo_id, branch=branch, token=token)
        # The deletions are computed on the head commit, and the commit is made on top of that very commit (the
        # Hub refuses it if another push came in between).
        head = _retrying(lambda: api.repo_info(repo_id, revision=branch, token=token), retries).sha
        existing = _retrying(lambda: api.list_repo_files(repo_id, revision=head, token=token), retries)
        stale = [path for path in existing if path not in files
                 and any(fnmatch.fnmatch(path, pattern) for pattern in MANAGED_PATTERNS)]
        additions = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in files]
        # Contents first (the "upload" stage: nothing in the repository changes), then the commit.
        # Not retried here: huggingface_hub already retries the upload's requests (5 times, with back-off).
        api.preupload_lfs_files(repo_id, additions, token=token, revision=revision)
        stage = "commit"
        operations = additions + [CommitOperationDelete(path_in_repo=path) for path in stale]
        commit = api.create_commit(repo_id, operations, commit_message=commit_message,
                                   commit_description=commit_description, token=token, revision=revision,
                                   parent_commit=head)
    except HubPushError:
        raise
    except Exception as e:
        what = "upload the files to" if stage == "upload" else "commit to"
        raise fail(stage, f"{what} {repo_id!r}", e, created) from e
    logger.info("Pushed %d files to %s (%s).", len(files), repo_id, commit.commit_url)
    return commit


def _delete_created_repo(api, repo_id: str, token: str, retries: int, look_first: bool) -> str:
    """Delete the repository a failed push created; returns the sentence that says what became of it."""
    try:
        if look_first and not _retrying(lambda: api.repo_exists(repo_id, token=token), retries):
            return ""  # the creation did not happen: nothing to delete
        _retrying(lambda: api.delete_repo(repo_id, token=token, missing_ok=True), retries)
        return f" The repository {repo_id!r} created for this push was deleted again."
    except Exception as cleanup:  # the connection is down: say what is left behind
        return (f" The empty repository {repo_id!r} created for this push could not be deleted "
                f"({type(cleanup).__name__}: {cleanup}); delete it on the Hub.")


def _check_existing_repo(api, repo_id: str, token: str, private: bool, retries: int) -> bool:
    """Whether `repo_id` exists; refuses a push with private=True to an existing public repository."""
    exists = _retrying(lambda: api.repo_exists(repo_id, token=token), retries)
    if exists and private and not _retrying(lambda: api.repo_info(repo_id, token=token), retries).private:
        raise HubPushError(f"{repo_id!r} exists and is public, but private=True was asked: refusing to push. "
                           f"Make the repository private on the Hub first, or push with private=False.")
    return exists


def check_push_target(repo_id: str, token: Union[str, bool, None] = None, private: bool = False, *,
                      timeout: Optional[float] = None, retries: Optional[int] = None) -> str:
    """What `push_output_dir` checks before it sends anything, for a run to check before its first step: the
    repository id, the token (present, valid, allowed to write to the namespace) and, for private=True, that the
    repository is not public. Returns the full repository id. Read-only; every request bounded (`hub_limits`)."""
    from huggingface_hub import HfApi

    _check_repo_id(repo_id)
    timeout, retries = hub_limits(timeout, retries)
    api = HfApi()
    with bounded_requests(timeout):
        token, repo_id = _authenticate(api, repo_id, token, retries)
        try:
            _check_existing_repo(api, repo_id, token, private, retries)
        except HubPushError:
            raise
        except Exception as e:
            raise HubPushError(f"Could not look up the repository {repo_id!r} on {api.endpoint} "
                               f"({type(e).__name__}: {e}). Nothing was pushed.", stage="authenticate") from e
    return repo_id


def _commit_description(metrics: Optional[Mapping[str, Any]]) -> Optional[str]:
    if not metrics or not metrics.get("metrics"):
        return None
    values = ", ".join(f"{name} = {value:.4g}" for name, value in metrics["metrics"].items())
    where = "/".join(str(part) for part in (metrics.get("dataset"), metrics.get("split")) if part)
    step = f" at step {metrics['step']}" if metrics.get("step") is not None else ""
    return f"Evaluation{f' on {where}' if where else ''}{step}: {values}."


def push_output_dir(output_dir: Union[str, os.PathLike], repo_id: str, token: Union[str, bool, None] = None,
                    private: bool = False, revision: Optional[str] = None, commit_message: Optional[str] = None, *,
                    license: str = DEFAULT_LICENSE, template_dir: Union[str, os.PathLike, None] = None,
                    diffusers_copy: Optional[bool] = None, timeout: Optional[float] = None,
                    retries: Optional[int] = None):
    """Push a finished training run to the Hub in one commit; return the `huggingface_hub.CommitInfo`.

    Args:
        output_dir: the trainer's output directory (config.json, model.safetensors, metrics.json,
            training_args.json, reconstructions.png, samples.png; checkpoints/ is never pushed).
        repo_id: "namespace/name", or "name" for the token owner's namespace. Created if it does not exist.
        token: a Hub token with write access; default: HF_TOKEN or the stored login.
        private: create the repository private. Pushing with private=True to an existing public repository is
            refused.
        revision: branch to push to (created from main if missing); default main.
        commit_message: default "Upload <model type> trained on <dataset> (step N)".
        license, template_dir, diffusers_copy: see `render_model_card`; `diffusers_copy` defaults to True for the
            KLAE (the `vae/` folder).
        timeout, retries: of each Hub request (`hub_limits`: default HF_VAE_HUB_TIMEOUT / HF_VAE_HUB_RETRIES,
            else 30 s and 2 retries).

    Raises:
        OutputDirError: the directory is missing, incomplete or inconsistent.
        ModelCardTemplateError: a card template is missing or broken.
        HubAuthError: no token, an invalid token, or no write access to the namespace.
        HubPushError: the Hub refused the repository or the commit.
        In every case nothing was pushed.
    """
    from huggingface_hub import HfApi

    _check_repo_id(repo_id)
    _check_revision(revision)
    timeout, retries = hub_limits(timeout, retries)
    output = read_output_dir(output_dir)  # local checks first: a bad directory needs no network to be refused
    api = HfApi()
    with bounded_requests(timeout):
        token, repo_id = _authenticate(api, repo_id, token, retries)  # read-only: nothing is written before the commit
        metrics = output.metrics
        if commit_message is None:
            commit_message = (f"Upload {output.model.config.model_type} trained on {metrics['dataset']} "
                              f"(step {metrics['step']})")
        with tempfile.TemporaryDirectory(prefix="hf_vae_push_") as tmp:
            folder = Path(tmp) / "repo"
            files = _prepare_output(output, folder, repo_id=repo_id, license=license, template_dir=template_dir,
                                    diffusers_copy=diffusers_copy)
            return _commit_folder(api, folder, files, repo_id, token=token, private=private, revision=revision,
                                  commit_message=commit_message, commit_description=_commit_description(metrics),
                                  retries=retries)


def push_model(model, repo_id: str, token: Union[str, bool, None] = None, private: bool = False,
               revision: Optional[str] = None, commit_message: Optional[str] = None, *,
               metrics: Optional[Mapping[str, Any]] = None, training_args: Optional[Mapping[str, Any]] = None,
               reconstructions=None, samples=None, pixel_values: Optional[torch.Tensor] = None, labels=None,
               license: str = DEFAULT_LICENSE, template_dir: Union[str, os.PathLike, None] = None,
               diffusers_copy: Optional[bool] = None, timeout: Optional[float] = None,
               retries: Optional[int] = None):
    """Push an hf_vae model to the Hub in one commit, with its card and preview; return the `CommitInfo`.

    What `model.push_to_hub(repo_id)` does, plus the hf_vae model card, the preview image and (KLAE) the
    diffusers copy. Arguments are those of `push_output_dir` and `prepare_model`.
    """
    from huggingface_hub import HfApi

    _check_repo_id(repo_id)
    _check_revision(revision)
    record = normalise_metrics(metrics, training_args=training_args)
    timeout, retries = hub_limits(timeout, retries)
    api = HfApi()
    with bounded_requests(timeout):
        token, repo_id = _authenticate(api, repo_id, token, retries)  # read-only: nothing is written before the commit
        if commit_message is None:
            commit_message = f"Upload {type(model).__name__} with hf_vae"
        with tempfile.TemporaryDirectory(prefix="hf_vae_push_") as tmp:
            folder = Path(tmp) / "repo"
            files = prepare_model(model, folder, repo_id=repo_id, metrics=metrics, training_args=training_args,
                                  reconstructions=reconstructions, samples=samples, pixel_values=pixel_values,
                                  labels=labels, license=license, template_dir=template_dir,
                                  diffusers_copy=diffusers_copy)
            return _commit_folder(api, folder, files, repo_id, token=token, private=private, revision=revision,
                                  commit_message=commit_message, commit_description=_commit_description(record),
                                  retries=retries)
