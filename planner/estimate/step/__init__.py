"""The simulated training step: what PyTorch keeps alive and frees during one forward and backward, without torch.

- ``sim``           what the tape is made of: ``Sim`` (live bytes, each phase's peak), storages, fakes, nodes
- ``tape``          a symbolic autograd engine: ops recorded, saved tensors, backward and its gradient buffers
- ``ops``           the torch ops the families use: outputs, what autograd saves, what backward allocates
- ``layers``        transformers' building blocks (norms, attention, MLP) line by line, over ``linears``
- ``linears``       the step's ``Ctx``, nn.Linear with peft LoRA and a bitsandbytes 4-bit base, LoRA embeddings
- ``moe``           mixture-of-experts blocks (routers, grouped experts, peft ParamWrapper)
- ``logits``        the output head and the causal-LM loss
- ``family_weights`` each family's simulated weights (trainable or not, dtypes, LoRA adapters, 4-bit bases)
- ``family_layers`` each family's decoder layer and embeddings assembled from the blocks
- ``nearest``       an unknown causal family mapped onto the nearest validated layer
- ``simulate``      ``simulate_step``: one micro-batch's forward and backward, cached by ``StepInputs``
- ``inputs``        ``StepInputs``, exactly what a simulation reads (its cache key), and the TrainSpec field audit
- ``layer_runner``  one decoder layer, plain or checkpointed (recomputed at the first unpack), and backward hooks
- ``envelope``      exact lines in the micro-batch through two simulations
- ``offload``       activation offloading (save_on_cpu): saved tensors packed to the host, unpacked per node
- ``cpu_kernels``   the CPU kind of a validation run (oneDNN workspaces inside 16-bit matmuls)
- ``autocast``      torch.autocast (``--precision bf16-autocast``): matmul casts, the weight-cast cache
- ``in_backward``   the optimizer stepped in each gradient's hook (``--optimizer-in-backward``)
"""
