"""TrainingSettings: what a fine-tuning job trains when the client leaves hyperparameters out or says "auto".

The defaults themselves are measured on a real model by bench/finetune_real.py; these tests pin the mapping.
"""
from __future__ import annotations

import pytest

from tasks.finetune import TrainingSettings


def test_no_hyperparameters_gives_the_measured_defaults():
    settings = TrainingSettings.from_hyperparameters({})
    assert (settings.method, settings.learning_rate, settings.rank, settings.layers) == ("lora", 3e-5, 8, None)
    assert (settings.iters, settings.epochs, settings.batch_size) == (None, None, None)  # auto
    assert TrainingSettings.from_hyperparameters({"n_epochs": "auto", "batch_size": "auto",
                                                  "learning_rate_multiplier": "auto"}) == settings


@pytest.mark.parametrize("rows, batch, iterations", [
    (1, 1, 5),
    (6, 1, 30),  # a handful of facts: each its own step, five passes
    (32, 1, 160),
    (33, 4, 27),  # larger sets: batches of four, three passes
    (100, 4, 75),
])
def test_auto_batch_and_epochs_follow_the_size_of_the_training_set(rows, batch, iterations):
    settings = TrainingSettings.from_hyperparameters({})
    assert (settings.batch(rows), settings.iterations(rows)) == (batch, iterations)


def test_given_steps_keep_mlx_lm_batches_of_four():
    settings = TrainingSettings.from_hyperparameters({"iters": 150})
    assert (settings.batch(14), settings.batch(3), settings.iterations(14)) == (4, 3, 150)


def test_given_values_win():
    assert TrainingSettings.from_hyperparameters({"n_epochs": 3}).iterations(6) == 18
    assert TrainingSettings.from_hyperparameters({"epochs": 2, "batch_size": 4}).iterations(6) == 4
    assert TrainingSettings.from_hyperparameters({"iters": 7, "n_epochs": 3}).iterations(6) == 7
    sized = TrainingSettings.from_hyperparameters({"batch_size": 8})
    assert (sized.batch(100), sized.batch(3)) == (8, 3)  # never more than there are rows
    assert TrainingSettings.from_hyperparameters({"learning_rate_multiplier": 2}).learning_rate == pytest.approx(6e-5)
    assert TrainingSettings.from_hyperparameters({"learning_rate": 1e-3, "learning_rate_multiplier": 2}
                                                 ).learning_rate == 1e-3
    tuned = TrainingSettings.from_hyperparameters({"method": "dora", "rank": 4, "layers": 8}, seed=3)
    assert (tuned.method, tuned.rank, tuned.layers, tuned.seed) == ("dora", 4, 8, 3)


def test_full_fine_tuning_defaults_to_a_lower_learning_rate():
    """Every weight moves, unscaled: at the adapters' 3e-5 it overwrote 7 of 12 general answers, at 1e-5 none."""
    assert TrainingSettings.from_hyperparameters({"method": "full"}).learning_rate == 1e-5
    assert TrainingSettings(method="full").learning_rate == 1e-5
    assert TrainingSettings.from_hyperparameters({"method": "full", "learning_rate_multiplier": 3}
                                                 ).learning_rate == pytest.approx(3e-5)
    assert TrainingSettings.from_hyperparameters({"method": "qlora"}).learning_rate == 3e-5
