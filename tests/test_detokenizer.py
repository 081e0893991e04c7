"""Incremental detokenisation equals a full re-decode (the old, quadratic way) on tricky token streams, and stop
strings found on the new text only equal those found by re-decoding everything after every token."""
import random

import pytest
import torch

from nemoh import LLM, NemotronHForCausalLM, SamplingParams
from nemoh.cli.model_cmds import init_tiny
from nemoh.engine.detokenizer import IncrementalDetokenizer, find_stop, special_skip_ids
from nemoh.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("detok") / "tiny"
    init_tiny(path, seed=3)
    model = NemotronHForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # peaked distributions: long repeated stretches, stops get hit
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok(ckpt):
    return Tokenizer.from_pretrained(ckpt)


def _ref_stop(tok, ids, stops, include, skip=True):
    """The old engine: re-decode the whole output after every token and search near its end."""
    text = ""
    for n in range(1, len(ids) + 1):
        full = tok.decode(ids[:n], skip_special_tokens=skip)
        for s in stops:
            at = full.find(s, max(0, len(text) - len(s)))
            if at >= 0:
                return n, (full[: at + len(s)] if include else full[:at]), s
        text = full
    return len(ids), tok.decode(ids, skip_special_tokens=skip), None


def _inc_stop(tok, ids, stops, include, skip=True):
    d = IncrementalDetokenizer(tok, special_skip_ids(tok) if skip else frozenset())
    for n, t in enumerate(ids, 1):
        before = len(d.text)
        d.add(t)
        hit = find_stop(d.text, len(d.text) - before, stops)
        if hit is not None:
            at, s = hit
            return n, (d.text[: at + len(s)] if include else d.text[:at]), s
    d.flush()
    return len(ids), d.text, None


def _streams(tok):
    enc = tok.encode
    euro, emoji = enc("€"), enc("😀")                                        # 3 and 4 byte tokens
    think, end = tok.think_start_id, tok.think_end_id
    yield enc("plain ascii text")
    yield enc("a€b😀c") + euro[:2]                                           # ends inside a character
    yield euro[:1] + enc("x") + euro                                          # a broken lead byte, then a whole one
    yield [euro[1]] * 6 + enc("ok")                                           # a run of stray continuation bytes
    yield [think] + enc("héllo") + [end] + enc("wörld") + emoji[:3]         # specials between multi-byte text
    rng = random.Random(0)
    for _ in range(30):                                                       # random bytes and specials
        yield [rng.randrange(0, tok.vocab_size) for _ in range(rng.randrange(1, 40))]


def test_incremental_text_equals_full_decode(tok):
    for ids in _streams(tok):
        for skip in (True, False):
            d = IncrementalDetokenizer(tok, special_skip_ids(tok) if skip else frozenset())
            deltas = "".join(d.add(t) for t in ids)
            assert deltas == d.text
            deltas += d.flush()
            assert d.text == deltas == tok.decode(ids, skip_special_tokens=skip), ids
            assert d.read - d.prefix <= len(ids)


def test_look_back_stays_bounded(tok):
    d = IncrementalDetokenizer(tok)
    for t in tok.encode("é€😀 long text " * 200):
        d.add(t)
        assert len(d.ids) - d.prefix <= 8   # a window of a few tokens, never the whole output


@pytest.mark.parametrize("include", [False, True])
def test_stop_strings_equal_full_redecode(tok, include):
    text = "the café costs 3€ 😀 then stop here, ok?"
    ids = tok.encode(text)
    stops_list = [["€ 😀"], ["é c"], ["😀"], ["stop", "ok"], ["ok", "stop"], ["absent"], ["?"], ["€"], ["t"],
                  ["costs 3", "café"]]
    for stops in stops_list:
        assert _inc_stop(tok, ids, stops, include) == _ref_stop(tok, ids, stops, include), stops
    rng = random.Random(1)
    for _ in range(40):  # stop strings cut from the text at random, over random byte streams
        a = rng.randrange(len(text))
        stops = [text[a: a + rng.randrange(1, 6)]]
        assert _inc_stop(tok, ids, stops, include) == _ref_stop(tok, ids, stops, include), stops


def test_engine_stops_equal_full_redecode(ckpt):
    """End to end: the engine's stop-string cut equals re-decoding its greedy output after every token."""
    llm = LLM(ckpt, max_num_seqs=2, max_model_len=128)
    tok = llm.tokenizer
    base = llm.generate("stop strings", SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))[0].outputs[0]
    assert base.text == tok.decode(base.token_ids)
    text = base.text
    rng = random.Random(2)
    for _ in range(6):
        a = rng.randrange(max(1, len(text) - 3))
        stop = text[a: a + rng.randrange(2, 5)]
        if not stop or "\ufffd" in stop:
            continue
        for include in (False, True):
            sp = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop],
                                include_stop_str_in_output=include)
            out = llm.generate("stop strings", sp)[0].outputs[0]
            n, want, s = _ref_stop(tok, base.token_ids, [stop], include)
            assert (len(out.token_ids), out.text, out.stop_reason) == (n, want, s)
