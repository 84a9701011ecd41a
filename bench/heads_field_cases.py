"""Print issue 17's field cases (learned heads, trees, tensor parallel) against the performance
model: PYTHONPATH=. python bench/heads_field_cases.py (the table in BENCHMARKS.md)."""

from tests.test_heads_field_cases import EAGLE2_7B, EAGLE3_70B, EAGLE_QWEN2_EAGER, _predict

from planner.plan import Decoding

QWEN3 = ("qwen3-8b", "h200", Decoding("eagle3", gamma=8, topk=8, num_draft_tokens=64), {}, 186.0, 365.0)
ROWS = [("SafeAILab/EAGLE pull 173", EAGLE2_7B), ("sgl-project/sglang pull 4716", EAGLE3_70B),
        ("SafeAILab/EAGLE issue 228 (shape assumed 8/8/64)", QWEN3), ("sgl-project/sglang pull 2863 (eager)", EAGLE_QWEN2_EAGER)]

print("| case | set-up | AR tok/s published / predicted | spec tok/s published / predicted | speedup published / predicted | tau predicted |")
print("| --- | --- | --- | --- | --- | --- |")
for source, (model, gpu, d, kw, base_pub, spec_pub) in ROWS:
    base, spec = _predict(model, gpu, d, **kw)
    err = lambda p, q: f"{q:.1f} / {p:.1f} ({p / q - 1:+.0%})"
    print(f"| {source} | {model} {gpu}{' tp ' + str(kw['tp']) if 'tp' in kw else ''} {d.method} {d.gamma}/{d.topk}/"
          f"{d.num_draft_tokens} | {err(base.tokens_per_s, base_pub)} | {err(spec.tokens_per_s, spec_pub)} | "
          f"{spec_pub / base_pub:.2f} / {spec.speedup:.2f} ({spec.speedup / (spec_pub / base_pub) - 1:+.0%}) | "
          f"{spec.tokens_per_iteration:.2f} |")
