"""The plan file: YAML round trip and validation errors that name the field."""

import copy

import pytest
import yaml

from planner.errors import InputError, NotFoundError, PlanError
from planner.plan import Candidate, Decoding, HardwareRef, ModelRef, Plan, Prediction, load_plan, plan_from_dict, save_plan

PREDICTION = Prediction(basis="analytical", tokens_per_s=120.0, speedup=2.1, tokens_per_iteration=3.2, acceptance=0.8,
                        target_latency_ms=15.0, draft_latency_ms=9.0, iteration_ms=26.0, vram_gib=11.5)


def make_plan(**decoding) -> Plan:
    decoding = {"method": "s3d", "gamma": 4, "skip_layers": (10, 11, 12, 13), "quant": "int4", **decoding}
    return Plan(
        model=ModelRef(name="llama-3.1-8b", source="llama-3.1-8b", num_layers=32, vocab_size=128256, hidden_size=4096),
        hardware=HardwareRef(profile="a10g", device_name="NVIDIA A10G"),
        decoding=Decoding(**decoding),
        prediction=PREDICTION,
        alternatives=(Candidate(Decoding(method="autoregressive", quant="int4"), PREDICTION),),
    )


@pytest.fixture
def plan_dict():
    return make_plan().to_dict()


def test_round_trip(tmp_path):
    plan = make_plan()
    save_plan(plan, tmp_path / "plan.yaml")
    assert load_plan(tmp_path / "plan.yaml") == plan
    assert (tmp_path / "plan.yaml").read_text().startswith("schema_version: 1\n")


def _error(data) -> str:
    with pytest.raises(PlanError) as info:
        plan_from_dict(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_schema_version_missing_or_wrong(plan_dict):
    del plan_dict["schema_version"]
    assert _error(plan_dict) == "schema_version: missing"
    plan_dict["schema_version"] = 7
    assert "schema_version: 7 is not supported" in _error(plan_dict)
    plan_dict["schema_version"] = True
    assert "schema_version: True is not supported" in _error(plan_dict)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.update(modle={}), "modle: unknown field (did you mean: model?)"),
        (lambda d: d["decoding"].update(gama=3), "decoding.gama: unknown field (did you mean: gamma"),
        (lambda d: d["decoding"].update(gamma="four"), "decoding.gamma: expected int, got str 'four'"),
        (lambda d: d["decoding"].update(gamma=True), "decoding.gamma: expected int, got bool True"),
        (lambda d: d["decoding"].update(gamma=40), "decoding.gamma: must be between 0 and 16, got 40"),
        (lambda d: d["decoding"].update(method="hydra"), "decoding.method: 'hydra' is not one of"),
        (lambda d: d["decoding"].update(quant="int3"), "decoding.quant: 'int3' is not one of none, int8, int4"),
        (lambda d: d["prediction"].update(acceptance=1.5), "prediction.acceptance: must be between 0 and 1, got 1.5"),
        (lambda d: d["constraints"].update(context=0), "constraints.context: must be positive, got 0"),
        (lambda d: d["decoding"].update(skip_layers=[10, 32]), "decoding.skip_layers[1]: layer 32 is beyond the model's 32 layers (0-31)"),
        (lambda d: d["decoding"].update(skip_layers=[3, 3]), "decoding.skip_layers: lists a layer twice"),
        (lambda d: d["decoding"].update(method="early_exit", exit_layer=40), "decoding.exit_layer: 40 is outside 1-31"),
        (lambda d: d["decoding"].update(skip_layers=[]), "decoding.skip_layers: method s3d needs at least one skipped layer"),
        (lambda d: d["alternatives"][0]["decoding"].update(skip_layers=[99]), "alternatives[0].decoding.skip_layers[0]: layer 99"),
        (lambda d: d.update(model="llama"), "model: expected a mapping, got str"),
        (lambda d: d["model"].pop("num_layers"), "model.num_layers: missing"),
        (lambda d: d["prediction"].update(tokens_per_s=None), "prediction.tokens_per_s: must not be empty"),
        (lambda d: d["constraints"].update(workload="bogus"), "constraints.workload: 'bogus' is not one of chat, summarisation, rag"),
        (lambda d: d["constraints"].update(workload="Chat"), "constraints.workload: 'Chat' is not one of"),
        (lambda d: d["hardware"].update(memory_gib=0), "hardware.memory_gib: must be positive, got 0"),
    ],
)
def test_each_bad_field_is_named(plan_dict, mutate, expected):
    data = copy.deepcopy(plan_dict)
    mutate(data)
    assert expected in _error(data)


def test_load_names_the_file_and_yaml_line(tmp_path, plan_dict):
    bad = tmp_path / "plan.yaml"
    text = yaml.safe_dump(plan_dict, sort_keys=False).replace("gamma: 4", "gamma: [4")
    bad.write_text(text)
    broken_line = text.splitlines().index("  gamma: [4") + 1
    with pytest.raises(InputError) as info:
        load_plan(bad)
    # the parser reports where it noticed the unclosed list: the broken line or the next one
    assert any(f"plan.yaml: line {n}:" in str(info.value) for n in (broken_line, broken_line + 1)), str(info.value)
    plan_dict["decoding"]["gamma"] = -1
    bad.write_text(yaml.safe_dump(plan_dict))
    with pytest.raises(PlanError, match=r"plan.yaml: decoding.gamma: must be between"):
        load_plan(bad)
    with pytest.raises(NotFoundError, match="no such file"):
        load_plan(tmp_path / "missing.yaml")


def test_save_refuses_invalid_plan_and_writes_nothing(tmp_path):
    plan = make_plan().replace(decoding=Decoding(method="layer_skip", gamma=3, skip_layers=(40,)))
    with pytest.raises(PlanError):
        save_plan(plan, tmp_path / "plan.yaml")
    assert list(tmp_path.iterdir()) == []
