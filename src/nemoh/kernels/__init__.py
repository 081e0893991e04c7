"""KernelBench pipeline: problems -> generate (any OpenAI-compatible endpoint) -> verify (sandboxed) -> report ->
export (an SFT dataset); the verifier is also an RL reward (`kernelbench`)."""
from .export import build_dataset, export
from .generate import GenerateConfig, generate
from .judge import verify_code
from .problems import Problem, builtin_solution, load_problems
from .report import pass_at_k, summarize
from .reward import kernelbench_reward, score
from .sandbox import SandboxConfig
from .shrink import shrink_problem
from .taxonomy import FAILURE_CLASSES, Verdict
from .verify import clear_speedup, read_traces, read_verdicts, verify_traces

__all__ = ["build_dataset", "export", "GenerateConfig", "generate", "Problem", "builtin_solution", "load_problems",
           "kernelbench_reward", "score", "pass_at_k", "summarize", "SandboxConfig", "verify_code",
           "FAILURE_CLASSES", "Verdict", "read_traces", "read_verdicts", "verify_traces", "shrink_problem",
           "clear_speedup"]
