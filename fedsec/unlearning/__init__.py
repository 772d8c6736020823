"""Server-side unlearning by Datamodel Matching, evaluated with KLoM.

Georgiev et al. 2024, "Attribute-to-Delete: Machine Unlearning via Datamodel Matching"
(DMM). A *unit* is what can be forgotten: a client of a federation here, a training
example in the paper; the math modules do not care which.

- ``datamodel``: a linear datamodel f(x; S') ~ b(x) + sum_{i in S'} B[i, x, :] fitted by
  ridge regression of models' logits on their units' inclusion masks.
- ``klom``: margins, the KL divergence of margin histograms (KLoM) and its percentiles.
- ``matching``: fine-tuning a model towards target logits (DMM, Oracle Matching) and the
  fine-tune / gradient-ascent baselines.
- ``subsets``: "train on a subset of units -> logits on inputs" for clients (the
  in-process federation) and for examples (central training), run in parallel.
- ``artifact``: the datamodel stored beside a run, checked against its config and inputs.
- ``federation`` (a federation's rows and who owns them), ``flagging`` (``--flagged``),
  ``oracles`` (federations retrained without some clients), ``methods`` (the unlearning
  methods on a request), ``federated`` (the run-dir ``unlearn`` command; it re-exports
  the names of the four); ``evaluation``: the KLoM protocol (``unlearn-eval``).

``datamodel``, ``klom`` and ``matching`` use torch only (no Flower).
"""

from fedsec_core.registry import Registry

#: OM's retrained models per request. Two: on validation models (seed 1000, digits,
#: N = 50) OM's forget / retain / test KLoM was 1.54 / 1.57 / 1.45 with one oracle,
#: 1.39 / 1.33 / 1.15 with two, 1.43 / 1.36 / 1.28 with four, 1.44 / 1.43 / 1.35 with
#: eight: two is the cheapest at the best level, and each oracle is a retraining per
#: request (experiments/unlearning/README.md).
DEFAULT_OM_ORACLES = 2
#: KLoM's models per side (N originals and N oracles) of ``fedsec unlearn-eval``: the
#: protocol's default, and the N of every committed KLoM result.
DEFAULT_KLOM_MODELS = 50

#: ``--method`` -> ``method(UnlearnRequest) -> Unlearned`` (``methods``), imported on use.
METHODS = Registry(
    "--method",
    {
        "none": "fedsec.unlearning.methods:keep_model",
        "retrain": "fedsec.unlearning.methods:retrain",
        "dmm": "fedsec.unlearning.methods:datamodel_matching",
        "om": "fedsec.unlearning.methods:oracle_matching",
        "finetune": "fedsec.unlearning.methods:finetune",
        "gradient-ascent": "fedsec.unlearning.methods:gradient_ascent_method",
    },
    sort_names=False,
)
