"""Tokens per iteration against the number of skipped layers on the demo model, for
layer_skip, early_exit and s3d at gamma = 1..8 (greedy, held-out prompts), and the fit of
S3D's acceptance relation to them:

    alpha(beta) = U / (1 + exp(k (beta - beta0))),  alpha_i = alpha_1 delta^(i-1),
    tau = 1 + sum_k prod_{i<=k} alpha_i

The fitted constants are written as a priors file (planner/profiles/priors-demo.yaml) that
`specplan autotune` uses for the demo model; the table goes to stdout as markdown.

    python bench/demo_acceptance.py --priors-out planner/profiles/priors-demo.yaml > /tmp/demo-acceptance.md
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.perf.acceptance import Prior, position_acceptances, skipped_fraction, tokens_per_iteration  # noqa: E402
from planner.perf.speedup import middle_block  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "planner" / "profiles" / "demo"
METHODS = ("layer_skip", "early_exit", "s3d")
GAMMAS = tuple(range(1, 9))
SKIPPED_COUNTS = (2, 4, 6, 8, 10)


def _drafter(method: str, target, gamma: int, skipped: int, adapter):
    """s3d drafts with the demo's adapter at the skip set it was trained for, and with an
    untrained one (plain layer skipping with a mask token) at the others."""
    from planner.runtime import drafters
    from planner.runtime.adapter import attach, untrained_draft

    L = target.num_layers
    if method == "early_exit":
        return drafters.EarlyExit(target, gamma, L - skipped)
    skip = middle_block(L, skipped)
    if method == "s3d":
        key = attach(target.decoder, adapter) if skip == adapter.info.skip_layers else untrained_draft(target.decoder, skip)
        return drafters.S3D(target, gamma, key, target.vocab_size)
    return drafters.LayerSkip(target, gamma, skip)


def measure(model: Path, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """One row per (method, skipped layers, gamma): measured tokens per iteration."""
    import torch
    from transformers import AutoTokenizer

    from planner.runtime.adapter import read_adapter
    from planner.runtime.decode import generate
    from planner.runtime.load import load_target

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model)
    adapter = read_adapter(model)
    encoded = [tokenizer(p).input_ids for p in prompts]
    target = load_target(str(model), device=torch.device("cpu"), max_seq_len=max(map(len, encoded)) + max_new_tokens + 10)
    rows = []
    for method, skipped, gamma in itertools.product(METHODS, SKIPPED_COUNTS, GAMMAS):
        drafter = _drafter(method, target, gamma, skipped, adapter)
        runs = [generate(target, drafter, ids, max_new_tokens=max_new_tokens, temperature=0.0, seed=0) for ids in encoded]
        tau = sum(g.decode_tokens for g in runs) / sum(g.iterations for g in runs)
        exit_layer = target.num_layers - skipped if method == "early_exit" else None
        beta = skipped_fraction(method, target.num_layers, skip_layers=middle_block(target.num_layers, skipped), exit_layer=exit_layer)
        rows.append({"method": method, "skipped": skipped, "beta": beta, "gamma": gamma, "tau": tau})
    return rows


def _sse(params, rows) -> float:
    u, k, b0, delta = params
    prior = Prior(ceiling=u, steepness=k, midpoint=b0, decay=delta)
    return sum((tokens_per_iteration(position_acceptances(prior.alpha(r["beta"]), r["gamma"], delta)) - r["tau"]) ** 2 for r in rows)


def fit(rows) -> tuple[Prior, float]:
    """Least squares over (U, k, beta0, delta) by pattern search from a coarse grid: no numpy."""
    bounds = ((0.01, 1.0), (0.0, 40.0), (-0.5, 1.5), (0.2, 1.0))
    grid = itertools.product((0.3, 0.6, 0.9, 1.0), (2.0, 8.0, 20.0), (0.0, 0.4, 0.8), (0.6, 0.85, 1.0))
    best = min(grid, key=lambda p: _sse(p, rows))
    steps = [0.1, 4.0, 0.2, 0.1]
    best_sse = _sse(best, rows)
    for _ in range(400):
        improved = False
        for i, sign in itertools.product(range(4), (1, -1)):
            trial = list(best)
            trial[i] = min(max(trial[i] + sign * steps[i], bounds[i][0]), bounds[i][1])
            sse = _sse(trial, rows)
            if sse < best_sse:
                best, best_sse, improved = tuple(trial), sse, True
        if not improved:
            steps = [s / 2 for s in steps]
            if max(steps) < 1e-4:
                break
    u, k, b0, delta = best
    return Prior(ceiling=u, steepness=k, midpoint=b0, decay=delta), math.sqrt(best_sse / len(rows))


def markdown(rows, fits, command: str) -> str:
    lines = [f"Command: `{command}`", "", "Tokens per iteration (greedy; bonus token included):", "",
             "| method | skipped layers | beta | " + " | ".join(f"gamma {g}" for g in GAMMAS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in GAMMAS) + " |"]
    for (method, skipped), group in itertools.groupby(rows, key=lambda r: (r["method"], r["skipped"])):
        group = list(group)
        lines.append(f"| {method} | {skipped} | {group[0]['beta']:.3f} | " + " | ".join(f"{r['tau']:.2f}" for r in group) + " |")
    lines += ["", "Fitted alpha(beta) = U / (1 + exp(k (beta - beta0))), alpha_i = alpha_1 delta^(i-1):", "",
              "| method | U | k | beta0 | delta | RMS error of tau |", "| --- | --- | --- | --- | --- | --- |"]
    for method, (prior, rms) in fits.items():
        lines.append(f"| {method} | {prior.ceiling:.3f} | {prior.steepness:.2f} | {prior.midpoint:.3f} | {prior.decay:.3f} | {rms:.3f} |")
    return "\n".join(lines) + "\n"


def priors_yaml(fits, command: str) -> dict:
    source = f"demo model, measured: {command}"
    return {"schema_version": 1, "methods": {
        m: {"ceiling": round(p.ceiling, 4), "steepness": round(p.steepness, 3), "midpoint": round(p.midpoint, 4),
            "decay": round(p.decay, 4), "source": source} for m, (p, _) in fits.items()}}


def main() -> None:
    from planner._yaml import write_yaml_atomic
    from planner.runtime.run import read_prompts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEMO)
    parser.add_argument("--prompts", type=int, default=3, help="how many of the model's prompts.jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--priors-out", type=Path, help="write the fitted constants as a priors YAML here")
    args = parser.parse_args()
    command = "python bench/demo_acceptance.py " + " ".join(sys.argv[1:])
    start = time.perf_counter()
    rows = measure(args.model, read_prompts(args.model / "prompts.jsonl")[: args.prompts], args.max_new_tokens)
    fits = {m: fit([r for r in rows if r["method"] == m]) for m in METHODS}
    print(markdown(rows, fits, command))
    print(f"({time.perf_counter() - start:.0f} s on CPU, one thread)")
    if args.priors_out:
        write_yaml_atomic(args.priors_out, priors_yaml(fits, command))


if __name__ == "__main__":
    main()
