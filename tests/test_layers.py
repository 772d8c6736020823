"""The folders as layers (issue 31 item 7): what CI runs, and the unlearning split.

Which folder may import which is checked by ``lint-imports`` (the contracts in
pyproject.toml), which runs in the test command of README.md; here: that CI runs
exactly that command, and that splitting ``fedsec/unlearning/federated.py`` by layer
left every name it defined importable from it, as the same object.
"""

from __future__ import annotations

import re

from fedsec.unlearning import METHODS, federated, federation, flagging, methods, oracles
from tests.runs import REPO

#: What fedsec/unlearning/federated.py defined before the split, by the module that
#: holds it now (the command itself keeps get_datamodel, unlearn_run and its files).
MOVED = {
    federation: ["Federation", "poisoned_examples", "check_forget_set", "model_metrics"],
    flagging: [
        "DEFAULT_FLAG_LEVEL",
        "OUTLIER_Z",
        "Flagging",
        "flagged_clients",
        "flagged_forget_set",
    ],
    oracles: ["FederationJob", "train_federations", "training_examples", "oracle_mean_logits"],
    methods: [
        "UnlearnSettings",
        "matching_rows",
        "Unlearned",
        "unlearn_state",
        "UnlearnRequest",
        "keep_model",
        "retrain",
        "finetune",
        "gradient_ascent_method",
        "datamodel_matching",
        "oracle_matching",
    ],
}
KEPT = ["DATAMODEL_FILE", "UNLEARN_DIR", "DEFAULT_SUBSETS", "DEFAULT_Q", "get_datamodel"]


def test_ci_runs_exactly_the_readme_test_command_with_lint_imports():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("Set up and run the tests:") :]
    command = re.search(r"\n\n    (.+)\n", section).group(1)
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == command
    steps = [step.strip() for step in command.split("&&")]
    assert steps[-3:] == [
        ".venv/bin/ruff check .",
        ".venv/bin/lint-imports",
        ".venv/bin/python -m pytest -q -n auto --dist worksteal",
    ]


def test_unlearning_split_keeps_every_name_importable_from_federated():
    for module, names in MOVED.items():
        for name in names:
            assert getattr(federated, name) is getattr(module, name), name
            assert name.isupper() or getattr(module, name).__module__ == module.__name__
    assert sorted(federated.__all__) == sorted([*KEPT, "unlearn_run", *sum(MOVED.values(), [])])
    assert federated.DEFAULT_FLAG_LEVEL == 0.05 and federated.OUTLIER_Z == 3.5
    # the registry's lazy entries point at the methods' new home, the same functions
    assert {name: METHODS[name] for name in METHODS.names()} == {
        "none": methods.keep_model,
        "retrain": methods.retrain,
        "dmm": methods.datamodel_matching,
        "om": methods.oracle_matching,
        "finetune": methods.finetune,
        "gradient-ascent": methods.gradient_ascent_method,
    }
