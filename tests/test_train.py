"""The demo recipe's pieces that need no training: the stdlib split, the prompt extraction and
the learning-rate schedule."""

from planner.train.data import stdlib_split
from planner.train.demo import demo_prompts
from planner.train.loop import lr_at


def test_stdlib_split_is_disjoint_deterministic_and_holds_out_about_one_file_in_twenty():
    a, b = stdlib_split(), stdlib_split()
    assert a == b
    assert not set(a.train) & set(a.held_out)
    total = len(a.train) + len(a.held_out)
    assert total > 200 and 0.02 < len(a.held_out) / total < 0.09
    assert not any("test" in p.relative_to(a.root).parts[:-1] for p in a.train + a.held_out)


def test_demo_prompts_are_a_signature_and_its_docstring(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('import os\n\n\ndef first(a, b):\n    """Add two numbers.\n\n    Long text.\n    """\n    return a + b\n\n'
                      'def second():\n    """One line."""\n')
    undocumented = tmp_path / "n.py"
    undocumented.write_text("def f():\n    return 1\n")
    assert demo_prompts([source, undocumented]) == ['def first(a, b):\n    """Add two numbers.\n\n    Long text.\n    """\n']
    assert demo_prompts([source], max_chars=40) == ['def second():\n    """One line."""\n']


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    steps, peak = 1000, 1e-3
    assert lr_at(0, steps, peak) < lr_at(49, steps, peak) == peak
    assert abs(lr_at(steps, steps, peak) - peak / 10) < 1e-12
    assert all(lr_at(s, steps, peak) >= lr_at(s + 1, steps, peak) for s in range(50, steps))
