"""The values of an unlearning request, declared once and judged in one place.

``fedsec unlearn`` and ``fedsec unlearn-eval`` (and their functions,
``federated.unlearn_run`` and ``evaluation.klom_evaluation``) take three kinds of value:
the datamodel's, the oracles' and ``--flagged``'s (:class:`RequestArguments`), how the
request is unlearned (``methods.UnlearnSettings``) and the fine-tuning
(``matching.MatchingConfig``). Each is declared beside its default with
``fedsec_core.params.param`` and a ``fedsec_core.schema`` constraint, the pattern of the
experiment's keys and of the attacks' and rules' parameters, and :func:`check_request`
judges them all before anything is loaded or trained; the steps after it
(``get_datamodel``, the fine-tuning loops) trust them. The errors name the commands'
flags (``--subsets must be >= 3, got 2``), as the commands take the values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedsec_core.errors import ConfigError
from fedsec_core.params import check_parameters, param
from fedsec_core.schema import Interval

_COUNT = Interval(int, 1, None, closed="left")

#: MatchingConfig's values that the commands take as flags (the rest: ``matching.<name>``).
MATCHING_FLAGS = ("epochs", "lr")


@dataclass(frozen=True)
class MatchingConfig:
    """Hyper-parameters of the fine-tuning loop.

    Two ways to decide how long it runs:

    - ``epochs = None`` (default): until it converges. A seeded ``holdout`` share of the
      matching set is set aside; every ``check_every`` steps the loss on it is measured,
      and the loop stops when it has not improved by ``min_delta`` (relative) over
      ``patience`` checks in a row, or after ``max_steps``; the model of the best
      held-out loss is kept. The step count then follows the problem (set size, model,
      distance to the target) instead of a fixed epoch count, which on a client-sized
      matching set of a few hundred examples is a handful of Adam steps.
    - ``epochs = k``: the paper code's loop, exactly k epochs over the whole set with the
      learning rate multiplied by ``lr_decay`` after each (its defaults: 5 epochs, lr
      5e-4, x0.95, batch 512).

    Adam at ``lr`` with batches of ``batch_size`` either way. The default lr, 2e-3
    (the paper code's is 5e-4), was chosen on validation models that the KLoM evaluation
    never sees (``experiments/unlearning/README.md``): it matched the best DMM result
    there at half the steps of 5e-4.

    Declared here, free of torch (the CLI reads its defaults); the loops are in
    ``matching.py``. Each value is judged by :meth:`validate`, which
    :func:`check_request` calls before any training; the loops trust it.
    """

    epochs: int | None = param(None, _COUNT.or_none())  # None: until converged
    # chosen on validation models (experiments/unlearning/README.md)
    lr: float = param(2e-3, Interval(float, 0, None))
    # per epoch, fixed-epoch loop only
    lr_decay: float = param(0.95, Interval(float, 0, 1, closed="right"))
    batch_size: int = param(512, _COUNT)
    # the held-out share; at least one example is held out, at least one fitted
    holdout: float = param(0.2, Interval(float, 0, 1))
    check_every: int = param(5, _COUNT)  # steps
    patience: int = param(10, _COUNT)  # checks without improvement
    # relative improvement that counts
    min_delta: float = param(0.01, Interval(float, 0, 1, closed="left"))
    max_steps: int = param(2000, _COUNT)

    def validate(self, label: Callable[[str], str] = "matching.{}".format) -> MatchingConfig:
        """ConfigError (one line, ``label(name)`` naming the value) for the first value
        outside its constraint; else ``self``."""
        check_parameters(self, label)
        return self


@dataclass(frozen=True, kw_only=True)
class RequestArguments:
    """The keyword arguments of a request, named as the commands' flags; None stands for
    the default (``DEFAULT_SUBSETS``, ``DEFAULT_Q``, ...), which is valid."""

    # subset models of the datamodel (``num_models``): a ridge fit needs a few
    subsets: int | None = param(None, Interval(int, 3, None, closed="left").or_none())
    # the probability a client is in a subset
    q: float | None = param(None, Interval(float, 0, 1, closed="right").or_none())
    workers: int | None = param(None, _COUNT.or_none())  # parallel trainings
    om_oracles: int | None = param(None, _COUNT.or_none())  # retrained models OM matches
    # --flagged's significance level
    flag_level: float | None = param(None, Interval(float, 0, 1).or_none())
    # KLoM's originals and oracles (``n_models``): a distribution needs two
    models: int | None = param(None, Interval(int, 2, None, closed="left").or_none())


def flag(name: str) -> str:
    """The command-line flag of a declared value: ``reference_size`` -> ``--reference-size``."""
    return "--" + name.replace("_", "-")


def check_request(settings: Any, **arguments: Any) -> None:
    """Judge a request's values, once, before anything runs: ``arguments`` (as
    :class:`RequestArguments`), then ``settings`` (an ``UnlearnSettings``) and its
    ``matching``. Raises the first value's one-line ConfigError."""
    check_parameters(RequestArguments(**arguments), flag)
    check_parameters(settings, flag)
    settings.matching.validate(lambda n: flag(n) if n in MATCHING_FLAGS else f"matching.{n}")


def auto_count(clients: str) -> int | None:
    """K of ``--clients auto[:K]`` (``auto`` = 1), or None for a list of ids; a K that
    is not a whole number >= 1 is a ConfigError."""
    if clients != "auto" and not clients.startswith("auto:"):
        return None
    text = clients.partition(":")[2].strip() or "1"
    try:
        k: Any = int(text)
    except ValueError:
        k = text
    _COUNT.check("--clients auto:K", k)
    return k


def check_auto_count(k: int, num_clients: int) -> None:
    """ConfigError when ``auto:K`` would name every client (nothing would remain)."""
    if k >= num_clients:
        raise ConfigError(
            f"--clients auto:{k} would forget every client of {num_clients} (nothing would "
            f"remain to learn from); use K <= {num_clients - 1}"
        )
