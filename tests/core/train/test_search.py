"""The fine-tuning search: its trials, the pick, and the compiled ParallelFor."""

import re

import pytest
import yaml

from components.core.errors import ConfigError
from components.core.config.schema import PipelineConfig, SearchConfig
from components.core.train import search
from pipelines.transfer_learning import compile_pipeline


def test_trials_are_every_combination_of_the_lists_given():
    assert search.trials(SearchConfig()) == []
    assert search.trials(SearchConfig(learning_rates=[1e-4, 3e-4], epochs=[5])) == [
        {"learning_rate": 1e-4, "epochs": 5}, {"learning_rate": 3e-4, "epochs": 5}]
    assert len(search.trials(SearchConfig([1e-4, 3e-4, 1e-3], [0.5, 1.0], [10, 20]))) == 12


def _report(chosen, head_loss, tuned_loss, accuracy=0.8):
    return {"chosen": chosen, "head_only_val": {"loss": head_loss, "accuracy": accuracy},
            "finetuned_val": {"loss": tuned_loss, "accuracy": accuracy},
            "recipe": {"learning_rate": 3e-4, "unfreeze_fraction": 1.0, "epochs": 28}}


def test_the_trial_whose_shipped_model_has_the_lowest_val_loss_is_picked():
    reports = [_report("finetuned", 0.9, 0.5), _report("head_only", 0.9, 0.3),
               _report("finetuned", 0.9, 0.4)]
    # the second trial's fine-tuned weights were dropped: its shipped val loss is 0.9
    assert search.best(reports) == 2
    tie = [_report("finetuned", 0.9, 0.4, 0.7), _report("finetuned", 0.9, 0.4, 0.8)]
    assert search.best(tie) == 1
    assert search.label(reports[0]["recipe"]) == \
        "learning_rate=0.0003 unfreeze_fraction=1 epochs=28"


def test_search_values_are_checked_up_front():
    for bad, message in (({"learning_rates": [0]}, "learning_rates=[0.0]; use positive"),
                         ({"unfreeze_fractions": [1.5]}, "use shares in (0, 1]"),
                         ({"epochs": [0]}, "epochs=[0]; use counts of at least 1")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            PipelineConfig.from_dict({"finetune": {"search": bad}}).validate()
    with pytest.raises(ConfigError, match="with weights: none the whole network trains from"):
        PipelineConfig.from_dict({"model": {"weights": "none"}, "finetune": {
            "search": {"learning_rates": [1e-4, 1e-3]}}}).validate()
    PipelineConfig.from_dict({"model": {"weights": "none"},
                              "finetune": {"search": {"epochs": [1, 2]}}}).validate()
    with pytest.raises(ConfigError, match="warmup_epochs=3 is not below"):
        PipelineConfig.from_dict({"finetune": {"warmup_epochs": 3, "epochs": 10,
                                               "search": {"epochs": [2, 8]}}}).validate()


@pytest.mark.parametrize("launcher,limit", [("local", 1), (None, None)])
def test_a_search_compiles_to_a_parallel_for_and_a_pick(tmp_path, launcher, limit):
    trials = search.trials(SearchConfig(learning_rates=[1e-4, 3e-4], unfreeze_fractions=[1.0]))
    spec = yaml.safe_load(open(compile_pipeline(str(tmp_path / "p.yaml"), launcher=launcher,
                                                trials=trials)))
    tasks = spec["root"]["dag"]["tasks"]
    loop = tasks["for-loop-2"]
    assert loop["parameterIterator"]["items"]["raw"] == (
        '[{"learning_rate": 0.0001, "unfreeze_fraction": 1.0}, '
        '{"learning_rate": 0.0003, "unfreeze_fraction": 1.0}]')
    assert loop.get("iteratorPolicy", {}).get("parallelismLimit") == limit
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["finetune"]
    assert "trial" in inner["finetune"]["inputs"]["parameters"]
    assert tasks["pick-trial"]["dependentTasks"] == ["for-loop-2"]
    assert "pick-trial" in tasks["evaluate"]["dependentTasks"]
    assert "finetune" not in tasks  # only inside the loop
