"""A user's DeepSpeed JSON read into one frozen ``DeepSpeedSettings``, as DeepSpeed and the HF Trainer read it.

Defaults are DeepSpeed 0.19.8's own for every absent key (each constant in ``defaults`` cites the file and field
it copies; tests/test_deepspeed_config.py compares them with DeepSpeed's pydantic models instantiated empty).
``"auto"`` is resolved as transformers 5.24 resolves it (``integrations/deepspeed.py``,
``HfTrainerDeepSpeedConfig.trainer_config_process`` and ``trainer_config_finalize``): bucket sizes from the
model's hidden size; batch sizes, accumulation, clipping, precision and the optimizer's lr/betas/eps/weight
decay from the training arguments, kept here as ``None`` ("from the trainer", listed in ``from_trainer``).
An ``"auto"`` the Trainer does not fill inside a DeepSpeed pydantic section is dropped by DeepSpeed
(``config_utils.DeepSpeedConfigModel.__init__``), which then uses its default: so does this reader.

Every key is accounted for: ``used_keys`` (a settings field: it changes memory or time), ``noted_keys`` (read,
no memory effect, or a memory-relevant key left at DeepSpeed's default), ``unsupported_keys`` (DeepSpeed reads
it and it may change memory or time, planner does not model it: a note) and ``unknown_keys`` (DeepSpeed 0.19.8
does not know it: a note). A wrong type or an out-of-range value raises one-sentence ``PlannerError`` naming
the key. Pure: imports neither torch nor deepspeed. Types are stricter than pydantic's lax mode in one way:
a number written as a string ("5e8") or a bool written as 0/1 is refused rather than coerced.

The package:

- ``defaults``  DeepSpeed 0.19.8's defaults and the key tables: what is used, noted, unsupported or removed
- ``settings``  the frozen results: ``DeepSpeedSettings`` and its offload and loss-scaling parts
- ``sections``  ``SectionReader``: each section read key by key (ZeRO, offload, precision, optimizer, batch)
- ``read``      ``read_deepspeed_config``: the file, the top-level keys, the batch sizes DeepSpeed derives
"""

from planner.deepspeed_config.defaults import (
    AUTO,
    BF16_DEFAULTS,
    DEEPSPEED_OPTIMIZERS,
    FP16_DEFAULTS,
    GRADIENT_CLIPPING_DEFAULT,
    OFFLOAD_OPTIMIZER_DEFAULTS,
    OFFLOAD_PARAM_DEFAULTS,
    OFFLOAD_UNSUPPORTED,
    PRECISION_UNSUPPORTED,
    REMOVED_TOP_KEYS,
    REMOVED_ZERO_KEYS,
    TOP_NOTED,
    TOP_UNSUPPORTED,
    TRAINER_OPTIMIZER_PARAMS,
    ZERO_BOOL_FIELDS,
    ZERO_FIELD_NAMES,
    ZERO_FORCE_DS_CPU_OPTIMIZER_DEFAULT,
    ZERO_INT_FIELDS,
    ZERO_NOTED,
    ZERO_STAGE_DEFAULT,
    ZERO_UNSUPPORTED,
    OffloadDevice,
)
from planner.deepspeed_config.read import read_deepspeed_config
from planner.deepspeed_config.settings import (
    DeepSpeedSettings,
    Fp16LossScaling,
    OffloadOptimizer,
    OffloadParam,
)

__all__ = [
    "AUTO",
    "BF16_DEFAULTS",
    "DEEPSPEED_OPTIMIZERS",
    "FP16_DEFAULTS",
    "GRADIENT_CLIPPING_DEFAULT",
    "OFFLOAD_OPTIMIZER_DEFAULTS",
    "OFFLOAD_PARAM_DEFAULTS",
    "OFFLOAD_UNSUPPORTED",
    "PRECISION_UNSUPPORTED",
    "REMOVED_TOP_KEYS",
    "REMOVED_ZERO_KEYS",
    "TOP_NOTED",
    "TOP_UNSUPPORTED",
    "TRAINER_OPTIMIZER_PARAMS",
    "ZERO_BOOL_FIELDS",
    "ZERO_FIELD_NAMES",
    "ZERO_FORCE_DS_CPU_OPTIMIZER_DEFAULT",
    "ZERO_INT_FIELDS",
    "ZERO_NOTED",
    "ZERO_STAGE_DEFAULT",
    "ZERO_UNSUPPORTED",
    "DeepSpeedSettings",
    "Fp16LossScaling",
    "OffloadDevice",
    "OffloadOptimizer",
    "OffloadParam",
    "read_deepspeed_config",
]
