"""The transformers export is executed on tiny random checkpoints with the drafter
instrumented: transformers drafts exactly the planned number of tokens with confidence
threshold 0 (or looks up the planned n-grams), and the output equals plain greedy decoding.
A negative control shows the instrumentation catches draft settings passed where
transformers does not read them."""

from __future__ import annotations

import runpy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.generation import candidate_generator as cg

from planner.plan.export import export_plan
from planner.plan.schema import Decoding
from tests._export_support import make_plan

PROMPT = "the cat sat on the mat; the cat sat on the"
NEW_TOKENS = 24


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(c): c - 29 for c in range(32, 127)}}
    vocab.update({f"[{i}]": i for i in range(len(vocab), 128)})  # every id decodes to text
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _save(path, layers: int, seed: int) -> str:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=127, pad_token_id=0)  # eos out of the characters' range
    LlamaForCausalLM(config).eval().save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A 2-layer target and a 1-layer draft with the same vocabulary."""
    root = tmp_path_factory.mktemp("hf_export")
    return _save(root / "target", 2, seed=0), _save(root / "draft", 1, seed=1)


@pytest.fixture
def drafter_calls(monkeypatch):
    """What each candidate generator was set to whenever transformers asked it for a draft."""
    calls = []

    def assisted(self, input_ids, **kwargs):
        candidates, logits = original_assisted(self, input_ids, **kwargs)
        calls.append({"num_assistant_tokens": self.num_assistant_tokens,
                      "threshold": self.assistant_generation_config.assistant_confidence_threshold,
                      "early_exit": getattr(self, "assistant_early_exit", None),
                      "drafted": candidates.shape[1] - input_ids.shape[1]})
        return candidates, logits

    def lookup(self, input_ids, **kwargs):
        calls.append({"num_output_tokens": self.num_output_tokens, "ngram": self.max_matching_ngram_size})
        return original_lookup(self, input_ids, **kwargs)

    original_assisted = cg.AssistedCandidateGenerator.get_candidates
    original_lookup = cg.PromptLookupCandidateGenerator.get_candidates
    monkeypatch.setattr(cg.AssistedCandidateGenerator, "get_candidates", assisted)
    monkeypatch.setattr(cg.PromptLookupCandidateGenerator, "get_candidates", lookup)
    return calls


def _greedy(target_dir: str) -> str:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(target_dir)
    model = LlamaForCausalLM.from_pretrained(target_dir)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _run_export(decoding: Decoding, target_dir: str, tmp_path, monkeypatch, capsys) -> str:
    plan = make_plan(decoding)
    plan = plan.replace(model=plan.model.__class__(name="tiny", source=target_dir, num_layers=2, vocab_size=128))
    script = tmp_path / "run_hf.py"
    script.write_text(export_plan(plan, "hf").text)
    for key, value in {"PROMPT": PROMPT, "MAX_NEW_TOKENS": str(NEW_TOKENS), "DEVICE": "cpu"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MODEL", raising=False)
    monkeypatch.delenv("DRAFT_MODEL", raising=False)
    capsys.readouterr()
    runpy.run_path(str(script), run_name="__main__")
    return capsys.readouterr().out.rstrip("\n")


def test_draft_model_drafts_the_planned_length_with_threshold_zero(checkpoints, drafter_calls, tmp_path,
                                                                  monkeypatch, capsys):
    target, draft = checkpoints
    output = _run_export(Decoding(method="draft_model", gamma=4, draft_model=draft), target, tmp_path, monkeypatch, capsys)
    assert drafter_calls and {c["num_assistant_tokens"] for c in drafter_calls} == {4}
    assert {c["threshold"] for c in drafter_calls} == {0.0}
    assert max(c["drafted"] for c in drafter_calls) == 4
    assert len(output) >= NEW_TOKENS and output == _greedy(target)


def test_early_exit_drafts_the_planned_length_from_the_exit_layer(checkpoints, drafter_calls, tmp_path,
                                                                 monkeypatch, capsys):
    target, _ = checkpoints
    output = _run_export(Decoding(method="early_exit", gamma=3, exit_layer=1), target, tmp_path, monkeypatch, capsys)
    assert drafter_calls and {(c["num_assistant_tokens"], c["threshold"], c["early_exit"]) for c in drafter_calls} == {(3, 0.0, 1)}
    assert output == _greedy(target)


def test_prompt_lookup_uses_the_planned_tokens_and_ngram(checkpoints, drafter_calls, tmp_path, monkeypatch, capsys):
    target, _ = checkpoints
    output = _run_export(Decoding(method="prompt_lookup", gamma=3, ngram=4), target, tmp_path, monkeypatch, capsys)
    assert drafter_calls and {(c["num_output_tokens"], c["ngram"]) for c in drafter_calls} == {(3, 4)}
    assert output == _greedy(target)


def test_instrumentation_catches_draft_settings_passed_to_generate(checkpoints, drafter_calls):
    """Negative control: the old export's generate() keywords leave transformers' defaults (20, 0.4) in force."""
    target, draft = checkpoints
    tokenizer = PreTrainedTokenizerFast.from_pretrained(target)
    model, assistant = LlamaForCausalLM.from_pretrained(target), LlamaForCausalLM.from_pretrained(draft)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        model.generate(**inputs, assistant_model=assistant, do_sample=False, max_new_tokens=8,
                       num_assistant_tokens=4, num_assistant_tokens_schedule="constant",
                       assistant_confidence_threshold=0.0)
    assert (drafter_calls[0]["num_assistant_tokens"], drafter_calls[0]["threshold"]) == (20, 0.4)
