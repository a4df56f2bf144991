"""The trainer's last step for models that sample from an ex-post latent density (the RAE; any model with
--fit_latent_density K or --latent_density_kind KIND): a density fitted to the codes of the first training
examples, in stream order."""

from typing import Dict, Optional, Tuple

import torch


def components_to_fit(requested: Optional[int], model) -> int:
    """--fit_latent_density if given, else the config's `latent_density_components` (the RAE's), else 0."""
    if requested is not None:
        if requested < 0:
            raise ValueError(f"Expected --fit_latent_density >= 0, got {requested}.")
        if requested and model.is_conditional:
            raise ValueError(f"--fit_latent_density: {type(model).__name__} is conditional; an ex-post latent "
                             f"density would ignore the condition.")
        return requested
    return int(getattr(model.config, "latent_density_components", 0) or 0)


def density_to_fit(requested: Optional[int], kind: str, model) -> Optional[Tuple[str, int]]:
    """(kind, mixture components) of the density to fit after training, or None. A mixture's size is
    `components_to_fit`'s; another kind is fitted unless --fit_latent_density is 0 (its sizes are its defaults)."""
    if kind == "gmm":
        components = components_to_fit(requested, model)
        return ("gmm", components) if components else None
    if requested == 0:
        return None
    components_to_fit(requested, model)  # the same checks of the request
    if model.is_conditional:
        raise ValueError(f"--latent_density_kind {kind}: {type(model).__name__} is conditional; an ex-post latent "
                         f"density would ignore the condition.")
    return kind, 0


def fit_on_training_data(model, dataset: str, settings: Dict, data_args, num_components: int, max_examples: int,
                         batch_size: int, seed: int, kind: str = "gmm", fit_options: Optional[Dict] = None):
    """Fit `model.fit_latent_density` of `kind` (a mixture of `num_components` for "gmm"; `fit_options` for the
    learned kinds' training) on the first `max_examples` of the training split (unshuffled, so every process fits
    the same density)."""
    from ..data import build_dataset, collate_batch

    extra = {k: getattr(data_args, k) for k in ("image_column", "label_column", "data_dir")
             if getattr(data_args, k) is not None}
    stream = build_dataset(dataset, "train", image_size=settings["image_size"], in_channels=settings["in_channels"],
                           value_range=settings["value_range"], binarize=settings["binarize"], shuffle=False,
                           data_seed=data_args.data_seed, **extra)
    loader = torch.utils.data.DataLoader(stream, batch_size=batch_size, collate_fn=collate_batch)
    was_training = model.training
    model.eval()
    try:
        if kind == "gmm":  # the mixture's call, as before the other kinds
            return model.fit_latent_density(loader, num_components=num_components, max_examples=max_examples,
                                            generator=torch.Generator().manual_seed(seed))
        return model.fit_latent_density(loader, kind=kind, max_examples=max_examples, fit_options=fit_options,
                                        generator=torch.Generator().manual_seed(seed))
    finally:
        model.train(was_training)
