"""Edge-case data: the attacker's set, the BA test set, and honest clients' data."""

from __future__ import annotations

import numpy as np
import torch

from fedsec.config import load_config
from fedsec.task import get_task
from fedsec_core.data import load_ardis
from tests.runs import tiny_digits

# (two local epochs: the default)
DIGITS = tiny_digits(rounds=2, seed=1, local_epochs=2)
MNIST5K = ["data.name=mnist5k", "data.num_clients=20", "train.rounds=2", "seed=2"]


def row_set(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.ascontiguousarray(x).reshape(len(x), -1)}


def honest_rows(task) -> set[bytes]:
    return set().union(*(row_set(task.dataset.x_train[idx]) for idx in task.partitions))


# -------------------------------------------------------------------------- ARDIS
def test_ardis_attacker_set_is_66_sevens_labelled_1_plus_100_clean(edge_case_dir):
    task = get_task(
        load_config(
            None, [*MNIST5K, "attack.name=edge-case-pgd", f"attack.edge_case_dir={edge_case_dir}"]
        )
    )
    attack = task.attack
    assert attack.source == "ardis" and attack.target == 1
    pid = task.schedule.pool[0]
    x, y = attack.attacker_data(task.pool_context(pid))
    assert len(y) == 66 + 100
    ax, ay, tx, ty = load_ardis(edge_case_dir)
    assert torch.equal(x[:66], torch.from_numpy(ax[ay == 7][:66]))  # the first 66 train 7s
    assert torch.all(y[:66] == 1)
    own = row_set(task.dataset.x_train[task.partitions[pid]])
    assert row_set(x[66:].numpy()) <= own  # clean part: the attacker's own examples
    bx, by = attack.backdoor_test_set(task.dataset)
    assert torch.equal(bx, torch.from_numpy(tx[ty == 7])) and len(by) == 100 and torch.all(by == 1)
    # honest data hold no ARDIS image at all
    assert not (row_set(np.concatenate([ax, tx])) & honest_rows(task))


def test_ardis_counts_and_target_follow_the_config(edge_case_dir):
    task = get_task(
        load_config(
            None,
            [
                *MNIST5K,
                "attack.name=edge-case",
                "attack.edge_case=ardis",
                f"attack.edge_case_dir={edge_case_dir}",
                "attack.num_edge_cases=10",
                "attack.num_clean=300",
                "attack.target_label=4",
            ],
        )
    )
    pid = task.schedule.pool[0]
    x, y = task.attack.attacker_data(task.pool_context(pid))
    assert len(y) == 310 and torch.all(y[:10] == 4)
    assert len(task.partitions[pid]) < 300  # a partition smaller than num_clean is repeated
    assert len(row_set(x[10:].numpy())) == len(task.partitions[pid])


# --------------------------------------------------------------------------- tail
def test_tail_examples_leave_the_training_set_and_form_attacker_and_test_parts():
    from fedsec_core.data import load_dataset

    task = get_task(
        load_config(
            None,
            [
                *DIGITS,
                "attack.name=edge-case",
                "attack.edge_case=tail",
                "attack.source_label=3",
                "attack.target_label=5",
                "attack.num_edge_cases=6",
                "attack.num_tail_test=4",
                "attack.num_clean=15",
            ],
        )
    )
    attack = task.attack
    original = load_dataset("digits")
    chosen = attack.tail_indices
    assert len(chosen) == 10 and (original.y_train[chosen] == 3).all()
    assert len(task.dataset.y_train) == len(original.y_train) - 10
    # none of the selected examples remains in any partition
    assert not (row_set(original.x_train[chosen]) & honest_rows(task))
    pid = task.schedule.pool[0]
    x, y = attack.attacker_data(task.pool_context(pid))
    assert len(y) == 6 + 15 and torch.all(y[:6] == 5)
    bx, by = attack.backdoor_test_set(task.dataset)
    assert len(by) == 4 and torch.all(by == 5)
    assert row_set(x[:6].numpy()) | row_set(bx.numpy()) == row_set(original.x_train[chosen])
    assert not row_set(x[:6].numpy()) & row_set(bx.numpy())


def test_tail_selection_picks_the_lowest_density_examples_and_is_seeded():
    from attacks.edge_sources import select_tail, tail_log_density
    from fedsec_core.data import load_dataset

    d = load_dataset("digits")
    members = np.flatnonzero(d.y_train == 7)
    scores = tail_log_density(d.x_train, members, seed=5)
    chosen = select_tail(d.x_train, d.y_train, 7, 8, seed=5)
    assert np.array_equal(chosen, select_tail(d.x_train, d.y_train, 7, 8, seed=5))
    chosen_scores = scores[np.searchsorted(members, chosen)]
    rest = np.setdiff1d(members, chosen)
    assert chosen_scores.max() <= scores[np.searchsorted(members, rest)].min()
    # rare images are far from the class mean
    center = d.x_train[members].mean(axis=0)

    def dist(idx):
        return np.linalg.norm((d.x_train[idx] - center).reshape(len(idx), -1), axis=1).mean()

    assert dist(chosen) > dist(rest)


def test_auto_source_is_tail_for_data_without_a_natural_edge_case_set():
    task = get_task(load_config(None, [*DIGITS, "attack.name=edge-case"]))
    assert task.attack.source == "tail" and task.attack.target == 1
    size = int((task.dataset.y_train == 7).sum()) + len(task.attack.tail_indices)
    share = max(1, round(0.05 * size))
    assert task.attack.counts() == (share, 100, share)
