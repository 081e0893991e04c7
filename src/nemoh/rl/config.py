"""RL job configuration (TOML + `--section.key value` overrides; miles/slime flat flags like `--eps-clip-high`
are accepted as aliases). Batch sizes follow miles' rule:
rollout_batch_size x n_samples_per_prompt = global_batch_size x num_steps_per_rollout."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..parallel.parallelize import ParallelConfig
from ..train.config import CheckpointConfig, ModelConfig, OptimConfig


@dataclass
class RLData:
    prompts: str = "builtin:addition"   # JSONL/Parquet with prompt/label rows, or builtin:addition
    eval_prompts: str = ""              # empty with builtin: the held-out split
    input_key: str = "prompt"
    label_key: str = "label"
    apply_chat_template: bool = True
    enable_thinking: bool = False
    num_eval: int = 64
    on_error: str = "skip"


@dataclass
class Rollout:
    n_samples_per_prompt: int = 8
    rollout_batch_size: int = 8         # prompts per rollout
    rollout_temperature: float = 1.0
    rollout_top_p: float = 1.0
    rollout_max_response_len: int = 8
    rollout_max_prompt_len: int = 512   # the engine's context is prompt + response
    max_num_seqs: int = 64              # engine slots
    backend: str = "engine"             # where rollouts run: a name in nemoh.rl.backends.ROLLOUT_BACKENDS
    engines: str = "rank0"              # backend "engine" under torchrun: rank0 (one engine, rollouts as in one
                                        # process) | data_ranks (one engine per data rank, each generating its share)
    urls: list[str] = field(default_factory=list)   # backends "sglang" | "vllm": running servers (or `nemoh serve`)
    concurrency: int = 16               # HTTP backends: requests in flight per server
    weight_sync_dir: str = ""           # HTTP backends: where weights go for the servers (default RUN_DIR/weights)
    launch: int = 0                     # HTTP backends: start this many servers (instead of urls) and stop them
                                        # at the end; logs in RUN_DIR/servers/
    launch_engine: str = "nemoh"        # what `launch` starts: nemoh (nemoh serve) | sglang | vllm (with --rl flags)
    launch_args: str = ""               # extra server flags for `launch`, one shell-quoted string
    max_off_policy_lag: int = 0         # optimizer steps a sample's weights may lag the policy being updated
                                        # (0: on-policy; a staler sample stops the run with a clear error)
    probe_tolerance: float = 1e-5       # HTTP backends: after every weight sync each server scores a fixed probe
                                        # sequence; its log-probs must equal the trainer's within this (fp32 on a
                                        # CPU: 1e-5; bf16 servers on GPUs need ~5e-2; 0 turns the check off)


@dataclass
class Algo:
    advantage_estimator: str = "grpo"   # grpo | gspo | reinforce_plus_plus | reinforce_plus_plus_baseline
    normalize_advantage_std: bool = True   # false = Dr.GRPO
    eps_clip: float = 0.2
    eps_clip_high: float = 0.28
    eps_clip_c: float = 0.0             # dual clip (0 = off); e.g. 3.0
    kl_loss_coef: float = 0.0
    kl_loss_type: str = "low_var_kl"    # k1 | k2 | low_var_kl
    log_kl: bool = False                # keep the warm-start policy as reference to log `kl` even with coef 0
    entropy_coef: float = 0.0
    loss_agg: str = "token-mean"        # token-mean | sequence-mean | constant-normaliser
    use_tis: bool = False
    tis_cap: float = 2.0
    dynamic_sampling: bool = False      # drop groups whose rewards all agree, over-sample to refill
    max_sampling_rounds: int = 4
    overlong: str = "none"              # none | mask | penalty
    overlong_penalty: float = -1.0
    use_rollout_routing_replay: bool = False


@dataclass
class RLTrain:
    rollouts: int = 30                  # RL iterations
    global_batch_size: int = 64
    micro_batch_size: int = 16
    num_steps_per_rollout: int = 1
    seed: int = 0
    eval_every: int = 10               # (gradient clipping is [optim] grad_clip, as in SFT)


@dataclass
class Reward:
    function: str = "number_match"      # math | dapo | exact_match | number_match | module:function


@dataclass
class WarmStart:
    """Optional SFT warm start on the task's training split before RL (the CPU demo uses it)."""
    steps: int = 0
    lr: float = 3e-3
    examples: int = 256


@dataclass
class RLConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: RLData = field(default_factory=RLData)
    rollout: Rollout = field(default_factory=Rollout)
    algo: Algo = field(default_factory=Algo)
    train: RLTrain = field(default_factory=RLTrain)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=0, schedule="constant"))
    reward: Reward = field(default_factory=Reward)
    warm_start: WarmStart = field(default_factory=WarmStart)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(dir="runs/rl"))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        from .algorithms import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS
        from .backends import ROLLOUT_BACKENDS
        from .backends.engine import PLACEMENTS
        r, t, a = self.rollout, self.train, self.algo
        if r.rollout_batch_size * r.n_samples_per_prompt != t.global_batch_size * t.num_steps_per_rollout:
            raise ValueError(
                f"batch sizes: rollout_batch_size x n_samples_per_prompt = {r.rollout_batch_size} x "
                f"{r.n_samples_per_prompt} = {r.rollout_batch_size * r.n_samples_per_prompt} must equal "
                f"global_batch_size x num_steps_per_rollout = {t.global_batch_size} x {t.num_steps_per_rollout}")
        if t.global_batch_size % t.micro_batch_size:
            raise ValueError(f"train.micro_batch_size: {t.micro_batch_size} does not divide global_batch_size="
                             f"{t.global_batch_size}")
        for name, value, allowed in (("algo.advantage_estimator", a.advantage_estimator, ADVANTAGES),
                                     ("algo.kl_loss_type", a.kl_loss_type, KL_ESTIMATORS),
                                     ("algo.loss_agg", a.loss_agg, AGGREGATIONS),
                                     ("algo.overlong", a.overlong, ("none", "mask", "penalty")),
                                     ("rollout.backend", r.backend, ROLLOUT_BACKENDS),
                                     ("rollout.engines", r.engines, PLACEMENTS),
                                     ("rollout.launch_engine", r.launch_engine, ("nemoh", "sglang", "vllm"))):
            if value not in allowed:
                raise ValueError(f"{name}: unknown {value!r}; choose one of {sorted(allowed)}")
        if r.launch < 0:
            raise ValueError(f"rollout.launch: expected a number of servers >= 0, got {r.launch}")
        if a.advantage_estimator in ("grpo", "gspo") and r.n_samples_per_prompt < 2:
            raise ValueError("rollout.n_samples_per_prompt: group advantages need at least 2 samples per prompt")


# miles / slime flat flag -> section.key
MILES_ALIASES = {
    "--n-samples-per-prompt": "--rollout.n_samples_per_prompt", "--rollout-batch-size": "--rollout.rollout_batch_size",
    "--rollout-temperature": "--rollout.rollout_temperature", "--rollout-top-p": "--rollout.rollout_top_p",
    "--rollout-max-response-len": "--rollout.rollout_max_response_len",
    "--rollout-max-prompt-len": "--rollout.rollout_max_prompt_len",
    "--advantage-estimator": "--algo.advantage_estimator", "--eps-clip": "--algo.eps_clip",
    "--eps-clip-high": "--algo.eps_clip_high", "--eps-clip-c": "--algo.eps_clip_c",
    "--kl-loss-coef": "--algo.kl_loss_coef", "--kl-loss-type": "--algo.kl_loss_type",
    "--entropy-coef": "--algo.entropy_coef", "--use-tis": "--algo.use_tis",
    "--use-rollout-routing-replay": "--algo.use_rollout_routing_replay",
    "--global-batch-size": "--train.global_batch_size", "--num-steps-per-rollout": "--train.num_steps_per_rollout",
    "--input-key": "--data.input_key", "--label-key": "--data.label_key", "--prompt-data": "--data.prompts",
    "--lr": "--optim.lr", "--num-rollout": "--train.rollouts",
}


def translate_miles_flags(args: list[str]) -> list[str]:
    """Map miles flags to section.key overrides; a bare boolean flag (`--use-tis`) means true."""
    out, i = [], 0
    while i < len(args):
        flag = args[i]
        if flag in MILES_ALIASES:
            out.append(MILES_ALIASES[flag])
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or nxt.startswith("--"):
                out.append("true")
            else:
                out.append(nxt)
                i += 1
        else:
            out.append(flag)
        i += 1
    return out
