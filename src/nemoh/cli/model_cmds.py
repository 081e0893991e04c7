"""Model subcommands: init-tiny (write a tiny random checkpoint), demo (the first run), info, presets."""
from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from ..model import NemotronHForCausalLM, get_preset
from ..model.config import NemotronHConfig
from ..model.generate import greedy_generate
from ..model.presets import PRESETS
from ..model.tiny import init_tiny

console = Console()
ROUTED_EXPERTS = (".experts.up_proj", ".experts.down_proj")  # stacked (E, F, L) routed-expert weights


def add_init_tiny_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="directory to write (replaced atomically if it exists)")
    p.add_argument("--preset", default="tiny", choices=[k for k in PRESETS if k.startswith("tiny")])
    p.add_argument("--seed", type=int, default=0)


def run_init_tiny(args: argparse.Namespace) -> int:
    """Write a tiny random checkpoint plus the built-in tokenizer."""
    out = init_tiny(args.out_dir, args.preset, args.seed)
    console.print(f"wrote {out} ({', '.join(sorted(f.name for f in out.iterdir()))})")
    return 0


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="tiny-model", help="where to write the tiny checkpoint")
    p.add_argument("--prompt", default="Hello, Nemotron!")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--preset", default="tiny", choices=[k for k in PRESETS if k.startswith("tiny")])


def run_demo(args: argparse.Namespace) -> int:
    """The first run: create a tiny checkpoint, load it, run a forward and a short greedy continuation."""
    from tokenizers import Tokenizer
    t0 = time.perf_counter()
    path = init_tiny(args.out, args.preset)
    console.print(f"[bold]1. wrote[/] a tiny random checkpoint to {path}/ in {time.perf_counter() - t0:.2f}s")
    model = NemotronHForCausalLM.from_pretrained(path, dtype=torch.float32)
    c = model.config
    console.print(f"[bold]2. loaded[/] pattern {c.hybrid_override_pattern} ({c.num_hidden_layers} layers), "
                  f"{model.num_parameters():,} parameters, {c.n_routed_experts} experts top-{c.num_experts_per_tok}")
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    ids = torch.tensor([tok.encode(args.prompt).ids])
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(ids, return_routing=True)
        dt = time.perf_counter() - t0
    logp = torch.log_softmax(out.logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).mean().item()
    console.print(f"[bold]3. forward[/] {ids.shape[1]} tokens in {dt * 1e3:.1f} ms: logits {tuple(out.logits.shape)}, "
                  f"mean log-prob of the prompt {logp:.3f} "
                  f"(random weights: about -ln(V) = {-torch.log(torch.tensor(float(c.vocab_size))).item():.3f})")
    if out.routed_experts is not None:
        console.print(f"   routed experts per MoE layer for the first 6 tokens: "
                      f"{out.routed_experts[:, 0, :6].tolist()}")
    t0 = time.perf_counter()
    new = greedy_generate(model, ids, args.max_new_tokens, c.eos_token_ids)
    dt = time.perf_counter() - t0
    text = tok.decode(new[0].tolist(), skip_special_tokens=False)
    console.print(f"[bold]4. greedy[/] {new.shape[1]} new tokens in {dt:.2f}s ({new.shape[1] / dt:.0f} tok/s) with the "
                  f"hybrid KV + Mamba-state cache: {new[0].tolist()}")
    console.print(f"   decoded: {text!r}  (random weights, so the text is noise; the cache made it in one pass)")
    return 0


def add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="checkpoint directory or config.json")


def run_info(args: argparse.Namespace) -> int:
    """Print a checkpoint's architecture summary (reads only config.json)."""
    _print_config(NemotronHConfig.from_pretrained(args.path), str(args.path))
    return 0


def run_presets(args: argparse.Namespace) -> int:
    """List the built-in presets (the published Nemotron-3 configs and the tiny debug models)."""
    for name in PRESETS:
        _print_config(get_preset(name), name)
    return 0


def parameter_counts(c: NemotronHConfig) -> tuple[int, int]:
    """(total, active per token) parameters of a config, counted on a meta-device model (nothing allocated): the
    active count takes num_experts_per_tok of the n_routed_experts routed experts of each MoE layer."""
    with torch.device("meta"):
        model = NemotronHForCausalLM(c)
    total = active = 0
    for name, p in model.named_parameters():
        n = p.numel()
        total += n
        active += n * c.num_experts_per_tok // c.n_routed_experts if name.endswith(ROUTED_EXPERTS) else n
    return total, active


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n > 1e8 else f"{n:,}"


def _print_config(c: NemotronHConfig, title: str) -> None:
    total, active = parameter_counts(c)
    t = Table(title=title, show_header=False)
    t.add_row("pattern", f"{c.hybrid_override_pattern} ({c.num_hidden_layers} layers)")
    t.add_row("parameters", _count(total) + (f" total, {_count(active)} active per token" if active != total else ""))
    t.add_row("hidden / vocab", f"{c.hidden_size} / {c.vocab_size}")
    t.add_row("attention heads / kv / dim", f"{c.num_attention_heads} / {c.num_key_value_heads} / {c.head_dim}")
    t.add_row("mamba H x P, G, N", f"{c.mamba_num_heads} x {c.mamba_head_dim}, {c.n_groups}, {c.ssm_state_size}")
    if "moe" in c.block_types:
        t.add_row("experts / top-k / scale",
                  f"{c.n_routed_experts} / {c.num_experts_per_tok} / {c.routed_scaling_factor}")
        t.add_row("latent / groups", f"{c.moe_latent_size} / n_group={c.n_group} topk_group={c.topk_group}")
    if c.num_nextn_predict_layers:
        mtp = ''.join('*' if b == 'attention' else 'E' if b == 'moe' else 'M' if b == 'mamba' else '-'
                      for b in c.mtp_block_types)
        t.add_row("MTP", f"{c.num_nextn_predict_layers} x {mtp}")
    console.print(t)
