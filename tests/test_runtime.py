"""The runtime decodes losslessly: every method's greedy output equals plain greedy decoding
of the same model (and plain greedy equals transformers' own), S3D's draft adapter changes
the draft and never the verify forward, and speculative sampling's accept rule leaves the
target's distribution unchanged."""

from __future__ import annotations


import pytest
import torch

from conftest import RT_ARCHITECTURES
from planner.runtime.decode import accept_sampled, generate
from planner.runtime.drafters import Autoregressive, DraftModel, EarlyExit, LayerSkip, PromptLookup, S3D
from planner.runtime.load import load_target

CPU = torch.device("cpu")
PROMPT = [40, 41, 42, 43, 40, 41, 42, 70, 71, 40, 41]  # a repeat, so prompt lookup finds matches
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def rt_targets(rt_models, rt_draft_model):
    targets = {arch: load_target(path, device=CPU, max_seq_len=96, dtype=torch.float32) for arch, path in rt_models.items()}
    targets["draft"] = load_target(rt_draft_model, device=CPU, max_seq_len=96, dtype=torch.float32)
    return targets


@pytest.fixture(scope="module")
def rt_plain(rt_targets):
    return {arch: generate(rt_targets[arch], Autoregressive(), PROMPT, max_new_tokens=NEW_TOKENS).tokens for arch in RT_ARCHITECTURES}


@pytest.mark.parametrize("arch", RT_ARCHITECTURES)
def test_decoder_logits_match_transformers(arch, rt_models, rt_targets):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(rt_models[arch], dtype=torch.float32)
    ids = torch.tensor([PROMPT])
    expected = hf(ids).logits
    target = rt_targets[arch]
    got = target.prefill(ids, target.positions(0, len(PROMPT)))
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()


def test_plain_greedy_equals_transformers_generate(rt_models, rt_targets):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(rt_models["llama"], dtype=torch.float32)
    eos = hf.generation_config.eos_token_id
    expected = hf.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=NEW_TOKENS)[0, len(PROMPT):].tolist()
    got = generate(rt_targets["llama"], Autoregressive(), PROMPT, max_new_tokens=NEW_TOKENS, eos_ids=(eos,)).tokens
    assert list(got) == expected


@pytest.mark.parametrize("arch", RT_ARCHITECTURES)
def test_cached_decoding_follows_transformers_full_forward(arch, rt_models, rt_targets, rt_plain):
    """Each token of the runtime's cached greedy decoding is the argmax of transformers' own
    uncached forward over the whole sequence (sliding windows cover 8 of its 35 positions)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(rt_models[arch], dtype=torch.float32)
    sequence = torch.tensor([PROMPT + list(rt_plain[arch])])
    with torch.no_grad():
        expected = hf(sequence).logits[0, len(PROMPT) - 1 : -1].argmax(-1).tolist()
    assert list(rt_plain[arch]) == expected


def random_s3d(target, gamma: int, skip: tuple[int, ...], *, seed: int = 0, scale: float = 0.05, draft_vocab=None) -> S3D:
    """S3D on `target` with an adapter of random LoRA matrices (B != 0, so the draft really
    differs from plain layer skipping) and a random mask embedding, mask id one past the
    vocabulary; its LM head scores only `draft_vocab` (ascending ids) when given."""
    from planner.runtime.adapter import Draft, linear_modules

    kept = tuple(i for i in range(target.num_layers) if i not in skip)
    vocab = None if draft_vocab is None else torch.tensor(draft_vocab)
    draft = Draft(target.decoder, ("s3d-test", skip, seed, draft_vocab), skip_layers=skip, rank=4, alpha=8.0,
                  target_modules=linear_modules(target.decoder, kept), mask_token_id=target.vocab_size, draft_vocab=vocab)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return S3D(target, gamma, draft.key, target.vocab_size)


DRAFT_VOCAB = tuple(range(0, 128, 2))  # half the rt_models' 128 tokens: the draft cannot propose the odd ones


DRAFTERS = {
    "layer_skip g2 skip{1}": lambda t, d: LayerSkip(t, 2, (1,)),
    "layer_skip g4 skip{1,2}": lambda t, d: LayerSkip(t, 4, (1, 2)),
    "early_exit g3 E1": lambda t, d: EarlyExit(t, 3, 1),
    "early_exit g5 E3": lambda t, d: EarlyExit(t, 5, 3),
    "s3d g2 skip{2}": lambda t, d: random_s3d(t, 2, (2,)),
    "s3d g4 skip{1,2}": lambda t, d: random_s3d(t, 4, (1, 2)),
    "s3d g3 skip{2} draft vocab": lambda t, d: random_s3d(t, 3, (2,), draft_vocab=DRAFT_VOCAB),
    "draft_model g2": lambda t, d: DraftModel(d, 2),
    "draft_model g4": lambda t, d: DraftModel(d, 4),
    "prompt_lookup g3 n3": lambda t, d: PromptLookup(t, 3, 3),
    "prompt_lookup g6 n1": lambda t, d: PromptLookup(t, 6, 1),
}


@pytest.mark.parametrize("method", DRAFTERS)
@pytest.mark.parametrize("arch", RT_ARCHITECTURES)
def test_greedy_speculative_output_equals_plain_greedy(arch, method, rt_targets, rt_plain):
    drafter = DRAFTERS[method](rt_targets[arch], rt_targets["draft"])
    result = generate(rt_targets[arch], drafter, PROMPT, max_new_tokens=NEW_TOKENS)
    assert result.tokens == rt_plain[arch]
    assert result.iterations < NEW_TOKENS - 1 or result.accepted == 0  # accepted drafts save iterations


@pytest.mark.parametrize("arch", RT_ARCHITECTURES)
def test_an_s3d_adapter_changes_the_draft_and_never_the_verify_forward(arch, rt_models, rt_targets):
    """With an adapter attached, the full model's logits still equal transformers' own, while
    the draft view's differ from plain layer skipping over the same kept layers."""
    from transformers import AutoModelForCausalLM

    target = rt_targets[arch]
    drafter = random_s3d(target, 3, (1, 2), seed=7, scale=0.2)
    ids = torch.tensor([PROMPT])
    positions = target.positions(0, len(PROMPT))
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(rt_models[arch], dtype=torch.float32)(ids).logits
    assert torch.allclose(target.step(ids, positions), expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(target.step(ids, positions, drafter.draft_key), target.step(ids, positions, (0, 3)), atol=1e-3)


def test_a_draft_vocabulary_scores_its_tokens_as_the_whole_head_does(rt_targets):
    """The draft's LM head over a draft vocabulary gives its tokens the logits the whole
    head gives them, and -inf to every other token, so the draft proposes only its own."""
    target = rt_targets["llama"]
    whole = random_s3d(target, 3, (2,), seed=5)
    trimmed = random_s3d(target, 3, (2,), seed=5, draft_vocab=DRAFT_VOCAB)
    ids = torch.tensor([PROMPT[:3] + [target.vocab_size] * 2])  # pending tokens then two masks
    positions = target.positions(0, 5)
    expected, got = target.step(ids, positions, whole.draft_key), target.step(ids, positions, trimmed.draft_key)
    inside = torch.tensor(DRAFT_VOCAB)
    outside = torch.tensor([t for t in range(target.vocab_size) if t not in DRAFT_VOCAB])
    assert torch.allclose(got[..., inside], expected[..., inside], atol=1e-5, rtol=1e-5)
    assert torch.isneginf(got[..., outside]).all()
    assert set(got.argmax(-1).flatten().tolist()) <= set(DRAFT_VOCAB)
    assert not set(expected.argmax(-1).flatten().tolist()) <= set(DRAFT_VOCAB)  # the whole head would propose others


def test_speculation_accepts_and_rejects(rt_targets):
    """The identity tests above only prove something if drafts are both kept and refused."""
    results = [generate(rt_targets[arch], EarlyExit(rt_targets[arch], 3, 3), PROMPT, max_new_tokens=NEW_TOKENS)
               for arch in RT_ARCHITECTURES]
    assert sum(r.accepted for r in results) > 0
    assert sum(r.drafted - r.accepted for r in results) > 0


def test_sampling_is_reproducible_and_seed_dependent(rt_targets):
    target = rt_targets["qwen2"]
    runs = [generate(target, LayerSkip(target, 3, (1,)), PROMPT, max_new_tokens=16, temperature=1.0, seed=s).tokens
            for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


CHI2_DF5_P001 = 20.52  # chi-square critical value, 5 degrees of freedom, p = 0.001


@pytest.mark.parametrize("draft_vocab", [None, (0, 2, 3)])
def test_speculative_sampling_keeps_the_target_distribution(draft_vocab):
    """Draft tokens sampled from q, accepted/resampled by the rule: the first output token is
    distributed as p_0 and, when the first draft was kept, the second as p_1; also when q is
    zero outside a draft vocabulary (the draft cannot propose half the tokens)."""
    gen = torch.Generator().manual_seed(0)
    vocab, trials = 6, 6000
    p = torch.softmax(torch.randn(3, vocab, generator=gen) * 1.5, -1)  # target, gamma + 1 positions
    logits = torch.randn(2, vocab, generator=gen) * 1.5
    if draft_vocab is not None:
        outside = torch.ones(vocab, dtype=torch.bool)
        outside[list(draft_vocab)] = False
        logits[:, outside] = float("-inf")  # as the draft's head over a draft vocabulary scores them
    q = torch.softmax(logits, -1)  # draft, gamma positions
    first, second = torch.zeros(vocab), torch.zeros(vocab)
    for _ in range(trials):
        draft = torch.multinomial(q, 1, generator=gen)[:, 0]
        out, n = accept_sampled(p, q, draft, gen)
        first[out[0]] += 1
        if n >= 1:
            second[out[1]] += 1
    assert _chi_square(first, p[0]) < CHI2_DF5_P001
    assert _chi_square(second, p[1]) < CHI2_DF5_P001
    assert _chi_square(first, q[0]) > CHI2_DF5_P001  # the test can tell the draft's distribution apart


@pytest.mark.parametrize("arch, method", [("llama", "layer_skip"), ("gpt_neox", "layer_skip"), ("qwen2", "s3d")])
def test_speculative_sampling_keeps_the_models_distribution_end_to_end(arch, method, rt_models, rt_targets):
    """The second sampled token (the first one an iteration emits: a kept draft or a
    resample) of layer-skip or S3D decoding (with an adapter) is distributed as the model's
    own marginal sum_t0 p(t0) p(t1 | t0), computed exactly by transformers over the whole
    vocabulary."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(rt_models[arch], dtype=torch.float32)
    with torch.no_grad():
        p0 = torch.softmax(hf(torch.tensor([PROMPT])).logits[0, -1], -1)  # (V,)
        every_next = torch.tensor([PROMPT + [t] for t in range(p0.shape[0])])  # (V, len + 1)
        p1 = torch.softmax(hf(every_next).logits[:, -1], -1)  # (V, V): row t0 is p(. | t0)
    marginal = p0 @ p1  # (V,)
    target, counts = rt_targets[arch], torch.zeros_like(marginal)
    drafter = LayerSkip(target, 2, (1,)) if method == "layer_skip" else random_s3d(target, 2, (1,), seed=3)
    for seed in range(1000):
        tokens = generate(target, drafter, PROMPT, max_new_tokens=2, temperature=1.0, seed=seed).tokens
        counts[tokens[1]] += 1
    top = marginal.argsort(descending=True)[:5]  # five most likely tokens and the rest: 5 degrees of freedom
    observed = torch.cat([counts[top], (counts.sum() - counts[top].sum())[None]])
    expected = torch.cat([marginal[top], (1 - marginal[top].sum())[None]])
    assert _chi_square(observed, expected) < CHI2_DF5_P001


def test_deterministic_draft_sampling_keeps_the_target_distribution():
    """Prompt lookup proposes without probabilities: a one-hot q, still exact."""
    gen = torch.Generator().manual_seed(1)
    vocab, trials = 6, 4000
    p = torch.softmax(torch.randn(2, vocab, generator=gen), -1)
    draft = torch.tensor([3])
    q = torch.nn.functional.one_hot(draft, vocab).float()
    counts = torch.zeros(vocab)
    for _ in range(trials):
        out, _ = accept_sampled(p, q, draft, gen)
        counts[out[0]] += 1
    assert _chi_square(counts, p[0]) < CHI2_DF5_P001


def test_int8_weight_only_stays_lossless_between_methods():
    """torchao int8 on CPU: speculative output equals plain decoding of the quantized model."""
    pytest.importorskip("torchao.quantization", reason='torchao not installed (pip install ".[quant]")')
    from transformers import LlamaConfig

    from planner.runtime.load import random_target
    from planner.runtime.quantize import quantize

    config = LlamaConfig(num_hidden_layers=6, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
    target = random_target(config, device=torch.device("cpu"), max_seq_len=128, dtype=torch.bfloat16)
    quantize(target.decoder.hf_model, "int8")
    prompt = list(range(10, 30))
    plain = generate(target, Autoregressive(), prompt, max_new_tokens=20)
    assert generate(target, LayerSkip(target, 3, (2, 3)), prompt, max_new_tokens=20).tokens == plain.tokens


def test_a_compiled_target_allows_a_graph_per_set_up(rt_models):
    """autotune steps one compiled target with a dozen (tokens, layer subset) shapes; past
    dynamo's default limit of 8 a fullgraph compile raises instead of falling back to eager."""
    from planner.runtime.load import RECOMPILE_LIMIT

    load_target(rt_models["llama"], device=torch.device("cpu"), max_seq_len=32, compiled=True)  # compiles on first step only
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT >= 24
