"""The README tells the truth: every `nemoh` command line it shows parses (the subcommand and its flags exist; for
`sft`/`rl` the `--section.key` overrides name real settings of the right type), and its TOML example is a config
`nemoh sft` accepts; its Python API examples (the model and the engine) run as written against a tiny checkpoint
named as the README names it. The server examples need a running server and are exercised by tests/test_server.py."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from nemoh.cli.main import OVERRIDABLE, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
ROOT = README.parent


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _optional(m: re.Match) -> str:
    """`[--flag a|b]` -> `--flag a` (the first alternative); `[...]` and `...` drop out."""
    inner = m.group(1).strip()
    return "" if inner in ("...", "") else inner.split("|")[0]


def command_lines() -> list[str]:
    """Each `nemoh ...` (or `python -m nemoh.cli.main ...` under torchrun) command in the README's bash blocks,
    continuation lines joined, comments and background `&` removed, optional groups reduced to one choice."""
    out = []
    for block in _blocks("bash"):
        commands = [c for full in block.replace("\\\n", " ").splitlines()
                    for c in re.split(r"\s(?:&&|;|&)\s", re.sub(r"\s#.*$", "", full))]
        for line in commands:
            line = line.strip().rstrip("&").strip()
            if "nemoh.cli.main" in line:
                line = "nemoh " + line.split("nemoh.cli.main", 1)[1]
            if not line.startswith("nemoh "):
                continue
            while re.search(r"\[[^\[\]]*\]", line):
                line = re.sub(r"\[([^\[\]]*)\]", _optional, line)
            line = re.sub(r"\s\.\.\.(\s|$)", " ", line)
            out.append(line)
    return out


LINES = command_lines()


def test_the_readme_shows_commands():
    assert len(LINES) > 30  # every subcommand's section shows at least one line


@pytest.mark.parametrize("line", LINES)
def test_every_readme_command_parses(line):
    words = shlex.split(line)[1:]
    words = [w.split("|")[0] if "|" in w and not w.startswith("-") else w for w in words]  # a|b -> a
    words = ["2" if re.fullmatch(r"[A-Z]", w) else w for w in words]  # numeric placeholders: --gpus N, --tp T
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(words)
    except SystemExit as e:  # argparse's way of refusing: show the line
        raise AssertionError(f"README line does not parse: {line}") from e
    if args.command not in OVERRIDABLE:
        assert not extra, f"README line has flags `nemoh {args.command}` does not know: {extra}"
        return
    config = extra.pop(0) if extra and not extra[0].startswith("--") else None
    if config is not None and not (ROOT / config).exists():
        return  # a user's own file (my.toml): only the command itself is checked
    from nemoh.rl.config import RLConfig, translate_miles_flags
    from nemoh.train.config import SFTConfig, load_config
    path = None if config is None else ROOT / config
    if args.command == "rl":
        load_config(path, translate_miles_flags(extra), cls=RLConfig)
    else:
        load_config(path, extra, cls=SFTConfig)


def test_the_readme_toml_example_is_a_valid_config(tmp_path):
    from nemoh.train.config import SFTConfig, load_config
    examples = [b for b in _blocks("toml") if "[optim]" in b or "[model]" in b]
    assert examples
    for i, text in enumerate(examples):
        path = tmp_path / f"example{i}.toml"
        path.write_text(text)
        is_rl = "[rollout]" in text or "[algo]" in text
        if is_rl:
            from nemoh.rl.config import RLConfig
            load_config(path, [], cls=RLConfig)
        else:
            load_config(path, [], cls=SFTConfig)


def test_the_readme_python_api_examples_run(tmp_path, monkeypatch):
    """The model and engine blocks run verbatim in a folder holding `tiny-model` (what `nemoh init-tiny tiny-model`
    writes); `trained_model` in the engine block is the model from the first block, as an RL step would pass it."""
    from nemoh.model.tiny import init_tiny

    blocks = [b for b in _blocks("python") if not b.startswith(" ")]     # indented blocks are fragments
    model_block = next(b for b in blocks if "HybridCache(" in b)
    engine_block = next(b for b in blocks if "LLM(" in b)
    monkeypatch.chdir(tmp_path)
    init_tiny(tmp_path / "tiny-model")
    scope: dict = {}
    exec(compile(model_block, "README.md (model example)", "exec"), scope)
    assert (tmp_path / "my-copy" / "config.json").is_file()
    scope["trained_model"] = scope["model"]
    exec(compile(engine_block, "README.md (engine example)", "exec"), scope)
    assert scope["c"].finish_reason in ("stop", "length")
