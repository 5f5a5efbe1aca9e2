"""Result dataclasses of the estimator. Byte fields are int; nothing here computes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from planner.specs import Cluster, ModelSpec, TrainSpec

CATEGORIES = ("params", "grads", "optimizer_states", "activations", "temporaries", "overhead")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per category on one GPU (or one CPU rank) at one moment."""

    params_bytes: int = 0
    grads_bytes: int = 0
    optimizer_states_bytes: int = 0
    activations_bytes: int = 0
    temporaries_bytes: int = 0
    overhead_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return (
            self.params_bytes
            + self.grads_bytes
            + self.optimizer_states_bytes
            + self.activations_bytes
            + self.temporaries_bytes
            + self.overhead_bytes
        )

    @property
    def model_states_bytes(self) -> int:
        return self.params_bytes + self.grads_bytes + self.optimizer_states_bytes

    def by_category(self) -> dict[str, int]:
        return {c: getattr(self, f"{c}_bytes") for c in CATEGORIES}

    def to_dict(self) -> dict[str, int]:
        d = {f"{c}_bytes": v for c, v in self.by_category().items()}
        d["total_bytes"] = self.total_bytes
        return d


@dataclass(frozen=True)
class ModelStates:
    """Per-rank model states: what lives on the GPU, and what is offloaded to CPU RAM per rank."""

    gpu: MemoryBreakdown
    cpu_bytes_per_rank: int
    num_params: int
    num_trainable_params: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepBreakdown:
    """Where one optimizer step's time goes on a rank (seconds). The parts that add up to the step:
    ``gpu_compute_s`` (matmuls, attention, elementwise, 4-bit dequantization, the GPU optimizer step),
    ``exposed_communication_s`` and ``host_s`` (offload copies and CPU Adam). ``hidden_communication_s``
    runs behind compute (DDP and ZeRO-3 overlap) and adds nothing."""

    time_model: str  # "per-phase" (the default) or "mfu" (--mfu: every executed FLOP at one utilisation)
    matmul_s: float  # with --mfu: every executed FLOP
    attention_s: float
    elementwise_s: float  # norms, activations, residuals, rotary, the loss
    dequant_s: float
    optimizer_s: float
    exposed_communication_s: float
    hidden_communication_s: float
    offload_transfer_s: float
    cpu_optimizer_s: float

    @property
    def compute_s(self) -> float:
        """The forward and backward on the GPU: matmuls, attention, elementwise kernels, 4-bit dequantization."""
        return self.matmul_s + self.attention_s + self.elementwise_s + self.dequant_s

    @property
    def gpu_compute_s(self) -> float:
        return self.compute_s + self.optimizer_s

    @property
    def host_s(self) -> float:
        return self.offload_transfer_s + self.cpu_optimizer_s


@dataclass(frozen=True)
class Throughput:
    flops_per_token: float  # training FLOPs per token (forward + backward [+ recomputation])
    tokens_per_s_per_gpu: float
    step_time_s: float  # one optimizer step (all micro-batches of the global batch)
    mfu: float
    num_tokens: int  # tokens to train on (0 when not given)
    total_time_s: float
    cost: float  # in the currency of --price-per-gpu-hour; 0 when no price
    price_per_gpu_hour: float
    step: StepBreakdown | None = None  # where the step's time goes


@dataclass(frozen=True)
class Fit:
    """The largest micro-batch and the longest sequence (multiple of 256) that fit with the margin."""

    max_micro_batch: int  # 0 when not even micro-batch 1 fits
    max_seq_len: int  # 0 when not even 256 tokens fit


@dataclass(frozen=True)
class Estimate:
    model: ModelSpec
    train: TrainSpec
    cluster: Cluster
    num_params: int
    num_trainable_params: int
    per_gpu: MemoryBreakdown  # breakdown at the moment of the allocated peak
    peak_phase: str  # "forward", "backward", "optimizer_step"
    reserved_bytes: int  # caching-allocator reserved at the peak
    device_bytes: int  # what nvidia-smi would show: reserved + context and libraries
    cpu_bytes_per_node: int  # host RAM for offload (states and pinned buffers), summed over the node's ranks
    capacity_bytes: int  # the GPU's CUDA-visible memory (GpuSpec.capacity_bytes; the nominal size where unknown)
    margin: float  # safety margin applied to the capacity (0.1 = keep 10% free)
    phases: dict[str, MemoryBreakdown] = field(default_factory=dict)
    throughput: Throughput | None = None
    fit: Fit | None = None
    notes: tuple[str, ...] = ()
    # the rank shown where ranks differ (ZeRO 1/2 partitions, zero_partition.py): the highest peak's, or the
    # one asked for; None when every rank is alike
    rank: int | None = None
    # device="cpu" on oneDNN: the matmul calls whose workspace the CPU kind did not list (cpu_kernels.py)
    unknown_matmuls: tuple = ()
    # part of cpu_bytes_per_node: page-locked, after PyTorch's power-of-two rounding (host_ram.py)
    cpu_pinned_bytes_per_node: int = 0
    # paged optimizers (optim_rules.py): optimizer states in CUDA unified memory, outside PyTorch's allocator (not
    # in per_gpu or reserved_bytes), counted resident in device_bytes and so in ``fits``; the driver may spill
    # them to host RAM but for the largest tensor's share, back on the GPU for that tensor's update
    paged_optimizer_bytes: int = 0
    paged_largest_tensor_bytes: int = 0
    # --task dpo (posttrain.py): one row per model the run holds (policy, reference), and the reference forward's
    # peak (activations and temporaries, part of the forward phase); empty and 0 for sft
    models: tuple = ()
    scoring_peak_bytes: int = 0

    @property
    def usable_bytes(self) -> int:
        return int(self.capacity_bytes * (1.0 - self.margin))

    @property
    def gpu_fits(self) -> bool:
        return self.device_bytes <= self.usable_bytes

    @property
    def host_fits(self) -> bool | None:
        """Whether the offload fits the node's host RAM (--host-ram); None when nothing is offloaded or the host
        RAM is not known (not checked)."""
        limit = self.cluster.host_memory_bytes_per_node
        if not self.cpu_bytes_per_node or limit is None:
            return None
        return self.cpu_bytes_per_node <= limit

    @property
    def fits(self) -> bool:
        return self.gpu_fits and self.host_fits is not False

    @property
    def fit_reason(self) -> str:
        """Why the row does not fit (empty when it does)."""
        gib = 2**30
        reasons = []
        if not self.gpu_fits:
            reasons.append(f"device peak {self.device_bytes / gib:,.2f} GiB exceeds the {self.usable_bytes / gib:,.2f} "
                           f"GiB usable ({self.capacity_bytes / gib:,.2f} GiB CUDA-visible minus the "
                           f"{self.margin:.0%} margin)")
        if not self.gpu_fits and self.paged_optimizer_bytes and self.device_bytes_paged_spilled <= self.usable_bytes:
            reasons.append(f"it would fit with the paged optimizer states spilled to host RAM (device peak "
                           f"{self.device_bytes_paged_spilled / gib:,.2f} GiB), which planner does not assume")
        if self.host_fits is False:
            reasons.append(f"offload needs {self.cpu_bytes_per_node / gib:,.1f} GiB of host RAM per node, more than "
                           f"the {self.cluster.host_memory_bytes_per_node / gib:,.1f} GiB of --host-ram")
        return "; ".join(reasons)

    @property
    def device_bytes_paged_spilled(self) -> int:
        """The device peak if the paged optimizer states spill to host RAM (equal to ``device_bytes`` without)."""
        return self.device_bytes - self.paged_optimizer_bytes + self.paged_largest_tensor_bytes

    @property
    def headroom_bytes(self) -> int:
        """Usable capacity minus the device peak (negative when it does not fit)."""
        return self.usable_bytes - self.device_bytes

    def row(self) -> dict:
        """The stable JSON row (schema documented in the README)."""
        row = {
            "method": self.train.method.value,
            "zero_stage": self.train.zero_stage,
            "offload": self.train.offload.value,
            "engine": self.train.parallelism.engine.value,
            **({"fsdp": self.train.parallelism.fsdp_config.to_dict()} if self.train.uses_fsdp2 else {}),
            "num_params": self.num_params,
            "num_trainable_params": self.num_trainable_params,
            "fits": self.fits,
            "fit_reason": self.fit_reason,
            "gpu_fits": self.gpu_fits,
            "host_fits": self.host_fits,
            "headroom_bytes": self.headroom_bytes,
            "per_gpu": self.per_gpu.to_dict(),
            "reserved_bytes": self.reserved_bytes,
            "device_bytes": self.device_bytes,
            "peak_phase": self.peak_phase,
            "cpu_bytes_per_node": self.cpu_bytes_per_node,
            "cpu_pinned_bytes_per_node": self.cpu_pinned_bytes_per_node,
            "host_ram_bytes_per_node": self.cluster.host_memory_bytes_per_node,
        }
        if self.paged_optimizer_bytes:
            row["paged_optimizer_bytes"] = self.paged_optimizer_bytes
            row["device_bytes_paged_spilled"] = self.device_bytes_paged_spilled
            row["fits_assumes"] = "paged optimizer states resident on the GPU"
            row["fits_if_paged_spilled"] = self.device_bytes_paged_spilled <= self.usable_bytes
        if self.models:
            row["task"] = self.train.task.to_dict()
            row["models"] = [m.to_dict() for m in self.models]
            row["scoring_peak_bytes"] = self.scoring_peak_bytes
        if self.fit is not None:
            row["max_micro_batch"] = self.fit.max_micro_batch
            row["max_seq_len"] = self.fit.max_seq_len
        if self.throughput is not None:
            row["throughput"] = asdict(self.throughput)
        row["notes"] = list(self.notes)
        return row
