"""Loading a base pipeline's components for training, with one clear error when one is missing."""

from __future__ import annotations

from editforge.errors import UsageError


def hub_kwargs(config) -> dict:
    return {"revision": config.revision, "cache_dir": config.cache_dir}


def load_components(config, classes: dict[str, type]) -> dict:
    """``{subfolder: cls.from_pretrained(base, subfolder=subfolder)}`` for the base model of
    ``config`` (a local folder or a Hub id); UsageError naming the base and the component."""
    source = config.pretrained_model_name_or_path
    components = {}
    for name, cls in classes.items():
        try:
            components[name] = cls.from_pretrained(source, subfolder=name, **hub_kwargs(config))
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot load the base model {source!r} ({name}): {err}") from None
    return components


def inference_scheduler(config, prediction_type: str | None = None):
    """The base pipeline's own sampler (the class its model_index names), optionally with the
    prediction type the model is trained for."""
    import diffusers

    source = config.pretrained_model_name_or_path
    try:
        index = diffusers.DiffusionPipeline.load_config(source, **hub_kwargs(config))
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot load the base model {source!r}: {err}") from None
    scheduler = getattr(diffusers, index["scheduler"][1]).from_pretrained(source, subfolder="scheduler", **hub_kwargs(config))
    if prediction_type is not None:
        scheduler.register_to_config(prediction_type=prediction_type)
    return scheduler
