"""The analytical estimator. Pure: never imports torch (tests/test_architecture.py).

- ``core``          ``estimate()``: specs in, ``Estimate`` out, for one configuration (searches: planner.plan)
- ``count/``        parameter counts per component and the ZeRO partition layout
- ``step/``         the simulated forward and backward (saved activations, gradients, scratch)
- ``states``        weights, gradients and optimizer states before sharding
- ``sharding``      what ZeRO 1-3 and offload divide or move per rank
- ``host_ram``      host RAM per rank under offload (pageable and pinned)
- ``temporaries``   optimizer-step scratch, mixed-precision copies, DeepSpeed buckets and buffers
- ``optim_rules``   per-tensor states and step of bitsandbytes' 8-bit/paged AdamW and Adafactor (paged memory)
- ``peak``          the phases of a steady-state step and which one peaks
- ``zero3_epilogue`` ZeRO-3's last bucket reduced at the end of backward (flat copies, what stays gathered)
- ``overhead``      GPU-only memory outside the tensors (CUDA context, allocator)
- ``quant``         bitsandbytes 4-bit storage
- ``qlora_shard``   that storage sharded across ranks (ZeRO-3, FSDP2: ``bnb_4bit_quant_storage`` in the compute dtype)
- ``result``        the frozen results
- ``throughput``    the per-phase step time, tokens/s, time and cost
- ``flops``         FLOPs per token, by pass (forward, backward, recomputation)
- ``traffic``       bytes a step moves (HBM outside matmuls, collectives, PCIe) and the exposed communication
"""
