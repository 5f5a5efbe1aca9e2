"""Parameter counting: exact counts per component and how DeepSpeed lays them out.

- ``inventory``       the shared types (module groups, linear groups, ParamCounts) and each module's layer
- ``inventories``     the analytical module inventory of each known family, as transformers builds it
- ``params``          ``count_params`` (analytical, else planner.meta on the meta device) and the split by method
- ``causal``          what is refused: a model that is not a causal LM
- ``zero_partition``  the ZeRO layout an estimate reads: ZeRO 1/2 partitions, ZeRO-3 persistent parameters
- ``rank_partitions`` DeepSpeed ZeRO 1/2 rank partitions and gradient buffers, per tensor boundary
- ``flat_order``      DeepSpeed's flat order of trainable tensors (``model.parameters()``), as layer blocks
"""
