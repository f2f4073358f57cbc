"""The run spec: paper defaults, camelCase, and errors that name the field and the reason."""

import copy

import pytest
import yaml

from evoquality.spec import (
    EvoQualityRunSpec,
    SpecError,
    load_run,
    parse_run,
    spec_hash,
    spec_to_dict,
)

MINIMAL = {
    "apiVersion": "evoquality.io/v1alpha1",
    "kind": "EvoQualityRun",
    "metadata": {"name": "demo"},
    "spec": {"data": {"manifest": "pool.csv"}, "storage": {"uri": "s3://bucket/runs"}},
}


def with_spec(**changes):
    doc = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        node = doc["spec"]
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return doc


def test_defaults_follow_the_paper():
    spec = parse_run(MINIMAL).spec
    assert spec.model.base == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert spec.rounds == 2
    assert spec.voting.pairs_per_round == 20000
    assert spec.voting.votes_per_pair == 32
    assert spec.voting.sampler == "random"
    assert spec.ranking.labels == "hard"
    assert spec.training.num_generations == 32
    assert spec.training.beta == 0.05
    assert spec.training.learning_rate == 3e-7
    assert spec.data.augmentation is not None and spec.data.augmentation.from_round == 1
    assert not spec.training.lora.enabled


def test_camel_case_round_trip_keeps_the_hash():
    spec = parse_run(MINIMAL).spec
    data = spec_to_dict(spec)
    assert "votesPerPair" in data["voting"] and "votes_per_pair" not in data["voting"]
    again = EvoQualityRunSpec.model_validate(data)
    assert spec_hash(again) == spec_hash(spec)


def test_hash_ignores_suspend_and_queue_but_not_results():
    base = spec_hash(parse_run(MINIMAL).spec)
    assert spec_hash(parse_run(with_spec(suspend=True, queueName="q")).spec) == base
    assert spec_hash(parse_run(with_spec(seed=1)).spec) != base


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"voting__votesPerPair": 0}, "spec.voting.votesPerPair", "greater than or equal to 1"),
        ({"voting__sampler": "greedy"}, "spec.voting.sampler", "'random'"),
        ({"ranking__labels": "vote"}, "spec.ranking.labels", "'hard'"),
        ({"ranking__minConfidence": 1.5}, "spec.ranking.minConfidence", "less than or equal"),
        ({"training__beta": -1}, "spec.training.beta", "greater than or equal to 0"),
        ({"training__numGenerations": 3}, "spec.training", "multiple of 2 x numGenerations"),
        ({"training__deepspeed": "zero1"}, "spec.training.deepspeed", "'zero2'"),
        ({"rounds": 0}, "spec.rounds", "greater than or equal to 1"),
        ({"storage__uri": "gs://bucket"}, "spec.storage.uri", "s3://bucket/prefix"),
        ({"storage__uri": "s3://"}, "spec.storage.uri", "bucket name"),
        ({"model__minPixels": 10**7}, "spec.model", "must not exceed maxPixels"),
        ({"voting__votesPerPiar": 4}, "spec.voting.votesPerPiar", "Extra inputs"),
        ({"seed": "zero"}, "spec.seed", "valid integer"),
        (
            {"ranking__confidenceWeighting": True},
            "spec",
            "scaleRewards 'batch' or 'none'",
        ),
        ({"model__engine": "simulated"}, "spec", "needs model.simulated"),
        ({"evaluation__earlyStopping": True}, "spec.evaluation", "needs a validation"),
        (
            {"evaluation__benchmarks": [{"name": "a", "manifest": "x"}] * 2},
            "spec.evaluation",
            "unique",
        ),
        ({"pods__vote__env": [{"name": "X"}]}, "spec.pods.vote.env.0", "exactly one of"),
    ],
)
def test_bad_inputs_name_the_field_and_reason(changes, field, reason):
    with pytest.raises(SpecError) as info:
        parse_run(with_spec(**changes))
    message = str(info.value)
    assert field in message
    assert reason in message


def test_missing_required_sections_are_named():
    doc = copy.deepcopy(MINIMAL)
    del doc["spec"]["storage"]
    with pytest.raises(SpecError, match=r"spec\.storage: Field required"):
        parse_run(doc)


def test_bad_metadata_name():
    doc = copy.deepcopy(MINIMAL)
    doc["metadata"]["name"] = "Not_Valid"
    with pytest.raises(SpecError, match=r"metadata\.name"):
        parse_run(doc)


def test_odd_k_is_allowed():
    assert parse_run(with_spec(voting__votesPerPair=5)).spec.voting.votes_per_pair == 5


def test_yaml_errors_give_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("spec:\n  data: [unclosed\n  storage: x\n")
    with pytest.raises(SpecError, match=r"line \d+, column \d+"):
        load_run(path)


def test_missing_manifest_file(tmp_path):
    with pytest.raises(SpecError, match="no such manifest"):
        load_run(tmp_path / "nope.yaml")


def test_non_mapping_manifest(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(SpecError, match="must be a mapping"):
        load_run(path)


def test_examples_are_valid():
    for name in ("quickstart", "smoke", "qwen2.5-vl-7b"):
        run = load_run(f"examples/{name}.yaml")
        assert run.kind == "EvoQualityRun"
