"""Shared fixtures: tiny seeded models built from configs (never downloaded)."""

import os
import threading

import torch

# CPU CI has no GPU: run Triton kernels through the interpreter. Must be set before triton compiles anything.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# measured costs stay in memory: tests never write the machine's calibration file (tests of it opt back in)
os.environ.setdefault("EVOSPEC_HF_CALIBRATION", "0")

import pytest  # noqa: E402
from transformers import (  # noqa: E402
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

import evospec_hf  # noqa: E402,F401  (installs the generate hook)
from evospec_hf import FrequencyTable  # noqa: E402

VOCAB_SIZE = 96
EOS, PAD, BOS = 2, 0, 1


def tiny_llama(seed: int, layers: int = 2, vocab_size: int = VOCAB_SIZE):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def tiny_gemma3(seed: int, layers: int = 2, vocab_size: int = VOCAB_SIZE):
    torch.manual_seed(seed)
    # a 4-token sliding window so that generations cross it and cache cropping of sliding layers is exercised;
    # softcapping on, so the drafter's head post-processing is exercised too
    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2),
        final_logit_softcapping=30.0, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    return Gemma3ForCausalLM(config).eval()


def tiny_gpt2(seed: int, layers: int = 2, vocab_size: int = VOCAB_SIZE):
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=32, n_layer=layers, n_head=4, n_positions=256,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def noisy_copy(model, seed: int, scale: float = 0.02):
    """A drafter that mostly agrees with `model`: its weights plus small noise (exercises partial acceptance)."""
    torch.manual_seed(seed)
    drafter = type(model)(model.config).eval()
    drafter.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in drafter.parameters():
            spread = p.std() if p.numel() > 1 else p.abs()  # one element has no std (NaN)
            p.add_(torch.randn_like(p) * scale * spread.clamp(min=1e-3))
    return drafter


ARCHITECTURES = {"llama": tiny_llama, "gemma3": tiny_gemma3, "gpt2": tiny_gpt2}


def run_together(calls: list, timeout: float = 300) -> list:
    """Runs the callables in threads released at once by a barrier; returns their results, re-raising the first
    error (with its traceback) and failing if a thread hangs."""
    barrier = threading.Barrier(len(calls))
    results, errors = [None] * len(calls), []

    def work(i):
        try:
            barrier.wait(timeout)
            results[i] = calls[i]()
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread hangs"
    if errors:
        raise errors[0]
    return results


def tiny_from_config(config_class, model_class, seed: int, **fields):
    """A tiny seeded causal LM of any architecture (hidden 32, 2 layers), for tests that sweep architectures."""
    torch.manual_seed(seed)
    defaults = dict(vocab_size=VOCAB_SIZE, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    return model_class(config_class(**defaults, **fields)).eval()


def more_architectures() -> dict:
    """Architectures beyond ARCHITECTURES (Qwen2, Mistral with a sliding window, GPT-NeoX, OPT), built from configs."""
    from transformers import (
        GPTNeoXConfig, GPTNeoXForCausalLM, MistralConfig, MistralForCausalLM, OPTConfig, OPTForCausalLM,
        Qwen2Config, Qwen2ForCausalLM,
    )  # fmt: skip

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return {
        "qwen2": lambda seed: tiny_from_config(Qwen2Config, Qwen2ForCausalLM, seed, num_key_value_heads=2, **small),
        "mistral": lambda seed: tiny_from_config(
            MistralConfig, MistralForCausalLM, seed, num_key_value_heads=2, sliding_window=6, **small
        ),
        "gpt-neox": lambda seed: tiny_from_config(GPTNeoXConfig, GPTNeoXForCausalLM, seed, **small),
        "opt": lambda seed: tiny_from_config(
            OPTConfig, OPTForCausalLM, seed, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            word_embed_proj_dim=32,
        ),
    }


def tiny_cohere(seed: int, layers: int = 2, logit_scale: float = 0.3):
    """Cohere (Command R): its forward multiplies the head's output by `logit_scale` (not a power of two here, so the
    product rounds)."""
    from transformers import CohereConfig, CohereForCausalLM

    return tiny_from_config(
        CohereConfig, CohereForCausalLM, seed, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, logit_scale=logit_scale,
    )  # fmt: skip


def tiny_inkling(seed: int, layers: int = 2, **fields):
    """Inkling: its forward divides the decoder's output by `logits_mup_width_multiplier` before the head (3, so the
    quotient rounds); sliding-window and convolution layers, MoE MLPs."""
    from transformers import InklingForCausalLM, InklingTextConfig

    return tiny_from_config(
        InklingTextConfig, InklingForCausalLM, seed, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, swa_num_attention_heads=4, swa_num_key_value_heads=2,
        swa_head_dim=8, sliding_window_size=8, d_rel=8, rel_extent=64, moe_intermediate_size=16, n_routed_experts=4,
        num_experts_per_tok=2, logits_mup_width_multiplier=3.0, **fields,
    )  # fmt: skip


def tiny_llama4_text(seed: int, layers: int = 2):
    """Llama 4's text model: MoE outputs, its body in `.model` under the prefix "language_model", and chunked
    attention with 8-token chunks (generations cross them), the first layer MoE and without RoPE, the second dense."""
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    return tiny_from_config(
        Llama4TextConfig, Llama4ForCausalLM, seed, hidden_size=32, intermediate_size=32, intermediate_size_mlp=64,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
        num_experts_per_tok=1, attention_chunk_size=8, layer_types=["chunked_attention", "full_attention"][:layers],
        no_rope_layers=[0, 1][:layers], moe_layers=[0],
    )  # fmt: skip


@pytest.fixture(scope="session")
def static_table_path(tmp_path_factory):
    """A frequency table over VOCAB_SIZE where low ids are frequent: a static shortlist that misses many tokens."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.multinomial(torch.linspace(1.0, 0.01, VOCAB_SIZE), 4000, replacement=True, generator=gen)
    path = tmp_path_factory.mktemp("static") / "freq.json"
    FrequencyTable.from_token_ids([ids], VOCAB_SIZE, source="synthetic").save(path)
    return str(path)


def centroid_router(model, folder, num_clusters: int = 12) -> str:
    """A router folder made for `model`'s LM head, untrained but sensible: faiss clusters of its rows, a router
    scoring each cluster by the hidden state's dot product with the cluster's mean row, and a semantic table.
    Its picks hold the model's likely tokens (a random router's would not), so drafts through it get accepted."""
    from evospec_hf.vocab.clusters import cluster_vocabulary
    from evospec_hf.vocab.indexes import SemanticIndex
    from evospec_hf.vocab.router import ClusterRouter

    weight = model.get_output_embeddings().weight.detach()
    clusters = cluster_vocabulary(weight, num_clusters)
    clusters.save(folder)
    router = ClusterRouter(weight.shape[1], clusters.num_clusters)
    with torch.no_grad():
        for c in range(clusters.num_clusters):
            router.net.weight[c] = weight[clusters.tokens_of(torch.tensor([c]))].mean(0)
        router.net.bias.zero_()
    router.save(folder)
    SemanticIndex.build(weight, k=4, progress=False).save(folder)
    return str(folder)


@pytest.fixture(scope="session")
def router_folder(tmp_path_factory):
    """A router over VOCAB_SIZE tokens in 12 clusters for hidden size 32 (all tiny drafters): random but valid.
    With a semantic table (shortlist="evospec") of a random head, so that loading one is exercised.

    Exactness never depends on the router or the table; they only decide which drafts are proposed."""
    from evospec_hf.vocab.clusters import TokenClusters
    from evospec_hf.vocab.indexes import SemanticIndex
    from evospec_hf.vocab.router import ClusterRouter

    folder = tmp_path_factory.mktemp("router")
    gen = torch.Generator().manual_seed(0)
    TokenClusters.from_assignment(torch.randint(0, 12, (VOCAB_SIZE,), generator=gen)).save(folder)
    SemanticIndex.build(torch.randn(VOCAB_SIZE, 32, generator=gen), k=4, progress=False).save(folder)
    torch.manual_seed(0)
    ClusterRouter(hidden_size=32, num_clusters=12).save(folder)
    return str(folder)


def sharpened(model, logit_std: float = 3.0):
    """Scales the LM head so the model's logits spread like a trained model's (random init gives near-uniform
    next-token distributions, which no drafter can learn to agree with)."""
    with torch.no_grad():
        probe = torch.randint(3, VOCAB_SIZE, (1, 16), generator=torch.Generator().manual_seed(0))
        head = model.get_output_embeddings()
        head.weight.mul_(logit_std / model(probe).logits.std())
    return model


def target_text(target, count: int, length: int = 48, seed: int = 0) -> list:
    """`count` chunks of the target's own greedy text after short random prompts: text it predicts well, which a
    drafter can learn from in a few steps."""
    gen = torch.Generator().manual_seed(seed)
    chunks = []
    for _ in range(count):
        prompt = torch.randint(3, VOCAB_SIZE, (1, 4), generator=gen)
        out = target.generate(prompt, max_new_tokens=length - 4, do_sample=False, eos_token_id=None, pad_token_id=PAD)
        chunks.append(("synthetic", out[0]))
    return chunks


def distilled_feature_drafter(target, folder, steps: int = 60, feature_layers=(-1,), chunks=None, lr: float = 3e-3):
    """A tiny feature drafter briefly distilled on the target's own text (`evospec_hf.distill.feature`), as a
    `PeftModel` (LoRA on its decoder layer, its two input projections trained whole)."""
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    from evospec_hf.distill.feature import cache_teacher, decoder_linear_names, train
    from evospec_hf.models import feature_drafter_from_target

    chunks = chunks if chunks is not None else target_text(target, 24)
    paths = cache_teacher(target, chunks, folder / "teacher", feature_layers, topk=16, progress=False)
    records = [r for path in paths for r in torch.load(path)]
    drafter = feature_drafter_from_target(target, 1, feature_layers)
    lora = LoraConfig(
        r=8, lora_alpha=8, target_modules=decoder_linear_names(drafter),
        modules_to_save=["evospec_fuse", "evospec_combine"],
    )  # fmt: skip
    model = get_peft_model(drafter, lora)
    train(model, records, Accelerator(cpu=True), steps, 4, lr, folder / "state.pt", negatives=32, progress=False)
    return model.eval()


def copy_trained_target(seed: int = 0, half: int = 12, steps: int = 400):
    """A tiny 2-layer Llama trained (seconds) on sequences that repeat their first `half` tokens: its next token
    depends on the context, as a real model's does, not mostly on the last token, as a random model's does.
    Returns `(target, prompts)`, `prompts(count, seed)` giving `(count, half + 4)` prompts that start a repeat."""
    def sequences(gen, n):
        x = torch.randint(3, VOCAB_SIZE, (n, half), generator=gen)
        return torch.cat([x, x, x[:, : half // 2]], 1)

    target = tiny_llama(seed, layers=2)
    target.train()
    optimizer = torch.optim.AdamW(target.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = sequences(gen, 32)
        loss = target(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    target.eval().requires_grad_(False)
    return target, lambda count, seed: sequences(torch.Generator().manual_seed(seed), count)[:, : half + 4]
