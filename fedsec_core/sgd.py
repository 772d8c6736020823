"""What local SGD accepts, as constraint objects: a core module without torch, so that
the experiment config (``fedsec.config``, which declares ``[train]``'s keys with these
objects) loads no torch, while ``fedsec_core.training.train`` checks its arguments with
the very same objects."""

from __future__ import annotations

from fedsec_core.schema import Interval

#: What local SGD accepts, whoever trains: ``fedsec_core.training.train`` checks its
#: arguments with these objects, and the experiment's ``[train]`` (``fedsec.config``)
#: declares its keys with them (its learning rate is also capped at
#: ``fedsec.config.MAX_LR``).
SGD = {
    "epochs": Interval(int, 1, None, closed="left"),
    "batch_size": Interval(int, 1, None, closed="left"),
    "lr": Interval(float, 0, None),
    "momentum": Interval(float, 0, 1, closed="left"),
    "weight_decay": Interval(float, 0, None, closed="left"),
    # 0: every epoch in full; k >= 1: stop after k optimizer steps (FedSGD: one minibatch)
    "max_steps": Interval(int, 0, None, closed="left"),
}
