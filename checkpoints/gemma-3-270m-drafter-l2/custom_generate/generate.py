"""`custom_generate` entry point of an evospec_hf drafter checkpoint.

    model.generate(**inputs, custom_generate="<checkpoint folder or repo id>", trust_remote_code=True)

runs evospec_hf speculative decoding with this checkpoint's drafter (built from `model` itself, so the embeddings
are shared; loaded once per model) unless `assistant_model=` is given. `evospec_config=` is optional; without it
the shortlist is the static list shipped in the checkpoint joined with the context tokens (the whole vocabulary
when it has no more than 16384 tokens).

Written by evospec_hf from its template `evospec_hf/models/hub_generate.py` (`EvoSpecDrafter.save_pretrained`,
`push_to_hub`, `evospec-hf write-hub-files`): edit the template, not a copy.
"""

CHECKPOINT = ""  # the checkpoint's folder or Hub repo id; "" where it is not known
SHORTLIST_SIZE = 16384  # tokens the drafter's head computes by default


def generate(model, assistant_model=None, evospec_config=None, **kwargs):
    import evospec_hf  # lets generate accept evospec_config

    if assistant_model is None:
        if not CHECKPOINT:
            raise ValueError(
                "this checkpoint's custom_generate does not know where it lives (it was copied with a repository); "
                "pass assistant_model=evospec_hf.EvoSpecDrafter.from_pretrained(<its folder>, target=model)."
            )
        assistant_model = evospec_hf.EvoSpecDrafter.from_pretrained_cached(CHECKPOINT, target=model)
    if evospec_config is None:  # a shortlist only where the vocabulary is larger than it
        if model.get_output_embeddings().weight.shape[0] > SHORTLIST_SIZE:
            evospec_config = evospec_hf.EvoSpecConfig(
                shortlist="static+context", shortlist_size=SHORTLIST_SIZE, context_slots=2048
            )
        else:
            evospec_config = evospec_hf.EvoSpecConfig(shortlist="full")
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "inputs"}
    return model.generate(assistant_model=assistant_model, evospec_config=evospec_config, **kwargs)
