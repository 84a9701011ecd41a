"""The demo model's recipe: a 12-layer Llama trained from scratch on the Python standard
library's sources (held-out files excluded), saved in fp16 so it ships under 25 MB, with an
S3D draft adapter trained beside it (the model itself frozen), prompts taken from the
held-out files and a 2-layer draft model.

    python -m planner.train.demo --threads 2      # CPU defaults: base model, S3D adapter, draft
    python -m planner.train.demo --device cuda    # GPU defaults, meant to finish within 10 minutes

The base model goes to --base and the draft to --out/draft (each skipped when already
there); --out gets a copy of the base, its adapter (s3d.json, adapter.safetensors) and the
prompts. --base and --out may be the same directory: then only the adapter and prompts are
made again. See planner/profiles/demo/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from planner._files import write_atomic
from planner.train.data import read_text, stdlib_split

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<mask>"]  # ids 0..3; <mask> is the S3D draft slot
VOCAB_SIZE = 4096
SEQ_LEN = 256
DEMO_SKIP = (4, 5, 6, 7)  # the middle third of 12 layers
DEMO_GAMMA = 4
PROMPTS = 12
ADAPT_PROMPTS = 256  # distillation prompts: the first documented function of training files
ADAPT_NEW_TOKENS = 96
DOCSTRING_QUOTES = ('"""', "'''")


@dataclass(frozen=True)
class Recipe:
    steps: int
    batch: int
    peak_lr: float
    adapt_steps: int
    adapt_lr: float = 1e-3


# CPU: about 46 minutes on two cores (base 30, adaptation 8, draft 3, tokenizer 4); CUDA: meant
# for a few minutes on one GPU (not yet measured).
DEFAULTS = {
    "cpu": Recipe(steps=1200, batch=8, peak_lr=2e-3, adapt_steps=400),
    "cuda": Recipe(steps=3000, batch=64, peak_lr=2e-3, adapt_steps=1000),
}


def train_tokenizer(files, vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE over the training files only, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((read_text(p) for p in files), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", mask_token="<mask>"
    )


def token_stream(tokenizer, files):
    """All files' tokens in one 1-D tensor, each file followed by </s>."""
    import torch

    ids: list[int] = []
    for encoding in tokenizer.backend_tokenizer.encode_batch([read_text(p) for p in files]):
        ids += encoding.ids + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def demo_config(vocab_size: int, *, layers: int = 12, hidden: int = 256, mlp: int = 704, heads: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )


# The draft for method draft_model: the same tokenizer, 2 layers of width 128 (1.9 MB in fp16).
DRAFT_SHAPE = dict(layers=2, hidden=128, mlp=352, heads=2)
DRAFT_DIR = "draft"  # inside the demo directory


def sample_windows(stream, batch: int, length: int, generator):
    """`batch` random windows of `length` tokens from the stream."""
    import torch

    starts = torch.randint(0, len(stream) - length, (batch,), generator=generator)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])  # (B, length)


def train_base(out: Path, *, device: str, recipe: Recipe, seed: int = 0, resume: bool = False, tokenizer=None,
               shape: dict | None = None) -> Path:
    """Train a model of `shape` (default: the demo's 12 layers) from scratch, with a new
    tokenizer unless one is given, and save both (fp16 weights) to `out`; returns `out`."""
    import torch
    from transformers import LlamaForCausalLM

    from planner.train.loop import batch_generator, train

    split = stdlib_split()
    tokenizer = tokenizer or train_tokenizer(split.train)
    stream = token_stream(tokenizer, split.train)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(demo_config(len(tokenizer), **(shape or {}))).to(device)

    def loss_fn(step: int):
        x = sample_windows(stream, recipe.batch, SEQ_LEN + 1, batch_generator(seed, step)).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            logits = model(input_ids=x[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())

    model.train()
    train(
        model, model.parameters(), loss_fn,
        steps=recipe.steps, peak_lr=recipe.peak_lr, checkpoint_dir=out / "checkpoints", resume=resume,
        desc="draft" if shape else "demo",
    )
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    model.half().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def train_draft(demo: Path, *, device: str, recipe: Recipe, seed: int = 0, resume: bool = False) -> Path:
    """The small draft model (DRAFT_SHAPE) on the demo's tokenizer, into demo/draft."""
    from transformers import AutoTokenizer

    return train_base(demo / DRAFT_DIR, device=device, recipe=recipe, seed=seed, resume=resume,
                      tokenizer=AutoTokenizer.from_pretrained(demo), shape=DRAFT_SHAPE)


def _first_documented_function(text: str, max_chars: int) -> str | None:
    """Signature and docstring of the file's first function with a short docstring."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines[:-1]):
        doc = lines[i + 1].strip()
        if not (line.lstrip().startswith("def ") and line.rstrip().endswith(":") and doc.startswith(DOCSTRING_QUOTES)):
            continue
        one_line = len(doc) > 6 and doc.endswith(DOCSTRING_QUOTES)
        end = i + 1 if one_line else next((k for k in range(i + 2, min(i + 12, len(lines))) if lines[k].strip().endswith(DOCSTRING_QUOTES)), None)
        if end is not None and len(prompt := "".join(lines[i : end + 1])) <= max_chars:
            return prompt
    return None


def demo_prompts(files, *, max_prompts: int = PROMPTS, max_chars: int = 320) -> list[str]:
    """One prompt per held-out file (its first documented function's signature and
    docstring), for the model to continue with the body."""
    found = (_first_documented_function(read_text(p), max_chars) for p in files)
    return [p for p in found if p][:max_prompts]


def build_demo(base: Path, out: Path, *, device: str, adapt_steps: int, adapt_lr: float = 1e-3, seed: int = 0,
               resume: bool = False) -> Path:
    """`out`: the base model as it is, the S3D adapter trained for it (planner.train.adapt, the
    code of `specplan adapt`; distillation prompts from the training files) and the held-out
    prompts."""
    from planner.train.adapt import adapt

    split = stdlib_split()
    if base.resolve() != out.resolve():
        out.mkdir(parents=True, exist_ok=True)
        for path in base.iterdir():
            if path.is_file():
                shutil.copy2(path, out / path.name)
    adapt(str(out), demo_prompts(split.train, max_prompts=ADAPT_PROMPTS), skip_layers=DEMO_SKIP, gamma=DEMO_GAMMA,
          out=str(out), steps=adapt_steps, lr=adapt_lr, resume=resume, seed=seed, device=device,
          max_new_tokens=ADAPT_NEW_TOKENS, prompts_name="stdlib training files: first documented function")
    lines = [json.dumps({"prompt": p, "source": "held-out stdlib"}) for p in demo_prompts(split.held_out)]
    write_atomic(out / "prompts.jsonl", "\n".join(lines) + "\n")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("planner/profiles/demo"), help="demo directory (default planner/profiles/demo)")
    parser.add_argument("--base", type=Path, default=Path("build/demo-base"), help="base model; trained unless there")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, help="base-model and draft steps (default: 1200 on cpu, 3000 on cuda)")
    parser.add_argument("--batch", type=int, help="sequences of 256 tokens per step (default: 8 cpu, 64 cuda)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    parser.add_argument("--adapt-steps", type=int, help="S3D adapter steps (default: 400 cpu, 1000 cuda)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints under --base / --out")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    d = DEFAULTS["cuda" if args.device.startswith("cuda") else "cpu"]
    recipe = replace(d, steps=args.steps or d.steps, batch=args.batch or d.batch, peak_lr=args.lr or d.peak_lr,
                     adapt_steps=args.adapt_steps or d.adapt_steps)
    if not (args.base / "model.safetensors").exists():
        train_base(args.base, device=args.device, recipe=recipe, seed=args.seed, resume=args.resume)
    build_demo(args.base, args.out, device=args.device, adapt_steps=recipe.adapt_steps, adapt_lr=recipe.adapt_lr, seed=args.seed,
               resume=args.resume)
    if not (args.out / DRAFT_DIR / "model.safetensors").exists():
        train_draft(args.out, device=args.device, recipe=recipe, seed=args.seed, resume=args.resume)


if __name__ == "__main__":
    main()
