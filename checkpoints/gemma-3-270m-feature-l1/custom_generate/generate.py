"""`custom_generate` entry point of an evospec_hf drafter checkpoint.

    model.generate(**inputs, custom_generate="<checkpoint folder or repo id>", trust_remote_code=True)

runs evospec_hf speculative decoding with this checkpoint's drafter (built from `model` itself, so the embeddings
are shared) unless `assistant_model=` is given. `evospec_config=` is optional; without it the shortlist is the
static list shipped in the checkpoint joined with the context tokens.
"""

CHECKPOINT = ""  # written by EvoSpecDrafter.save_pretrained / push_to_hub

_DRAFTERS = {}


def generate(model, assistant_model=None, evospec_config=None, **kwargs):
    import evospec_hf  # noqa: F401  (lets generate accept evospec_config)
    from evospec_hf import EvoSpecConfig
    from evospec_hf.models.checkpoint import EvoSpecDrafter

    if assistant_model is None:
        if not CHECKPOINT:
            raise ValueError(
                "this checkpoint's custom_generate does not know where it lives (it was copied with a repository); "
                "pass assistant_model=evospec_hf.EvoSpecDrafter.from_pretrained(<its folder>, target=model)."
            )
        key = (CHECKPOINT, id(model))
        if key not in _DRAFTERS:
            _DRAFTERS[key] = EvoSpecDrafter.from_pretrained(CHECKPOINT, target=model)
        assistant_model = _DRAFTERS[key]
    if evospec_config is None:
        evospec_config = EvoSpecConfig(shortlist="static+context", shortlist_size=16384, context_slots=2048)
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "inputs"}
    return model.generate(assistant_model=assistant_model, evospec_config=evospec_config, **kwargs)
