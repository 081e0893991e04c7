"""Chat tokenisation with loss masks, packing, prompt/label rows, malformed rows."""

import json

import pytest
import torch
import torch.nn.functional as F

from nemoh import NemotronHForCausalLM
from nemoh.data import (
    DataError,
    ErrorLog,
    collate,
    load_chat_examples,
    load_prompt_examples,
    pack,
    read_rows,
    tokenize_chat,
    write_jsonl_atomic,
)
from nemoh.model.tiny import init_tiny
from nemoh.tokenizer import Tokenizer

TOOL = {
    "type": "function",
    "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}},
}
CONV = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "yo", "reasoning_content": "hmm"},
    {"role": "user", "content": "q"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}],
    },
    {"role": "tool", "content": "r"},
    {"role": "assistant", "content": "done"},
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return init_tiny(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def tok(ckpt):
    return Tokenizer.from_pretrained(ckpt)


def _trained_spans(tok, ids, mask):
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur, skip_special_tokens=False))
            cur = []
    if cur:
        spans.append(tok.decode(cur, skip_special_tokens=False))
    return spans


def test_mask_covers_exactly_the_assistant_turns(tok):
    ids, mask = tokenize_chat(tok, CONV, tools=[TOOL])
    assert ids == tok.encode(tok.apply_chat_template(CONV, tools=[TOOL], add_generation_prompt=False))
    assert _trained_spans(tok, ids, mask) == [
        "hmm\n</think>\nyo<|im_end|>",
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</function>\n</tool_call><|im_end|>",
        "done<|im_end|>",
    ]


def test_thinking_can_be_left_untrained(tok):
    ids, mask = tokenize_chat(tok, CONV, tools=[TOOL], train_on_thinking=False)
    spans = _trained_spans(tok, ids, mask)
    assert spans[0] == "\nyo<|im_end|>" and "hmm" not in "".join(spans)


def test_packing_equals_unpacked_loss(ckpt, tok):
    model = NemotronHForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    convs = [CONV, CONV[1:3], [{"role": "user", "content": "x"}, {"role": "assistant", "content": "longer answer"}]]
    from nemoh.data.readers import Row

    errors = ErrorLog()
    examples = load_chat_examples(
        [Row({"messages": c, "tools": [TOOL]}, f"r{i}") for i, c in enumerate(convs)], tok, errors
    )
    rows = pack(examples, seq_len=sum(len(e.input_ids) for e in examples) + 5)
    assert len(rows) == 1 and len(rows[0]) == 3
    batch = collate(rows, rows and sum(len(e.input_ids) for e in examples) + 5)
    with torch.no_grad():
        logits = model(batch.input_ids, seq_idx=batch.seq_idx).logits
        packed = F.cross_entropy(logits[0], batch.labels[0], ignore_index=-100, reduction="sum")
        alone = 0.0
        for e in examples:
            ids = torch.tensor([e.input_ids])
            lab = torch.tensor(e.input_ids[1:] + [0])
            lab[~torch.tensor(e.loss_mask[1:] + [0], dtype=torch.bool)] = -100
            alone += F.cross_entropy(model(ids).logits[0], lab, ignore_index=-100, reduction="sum")
    assert batch.num_tokens == sum(sum(e.loss_mask[1:]) for e in examples)
    assert abs(float(packed) - float(alone)) < 1e-3 * max(1.0, float(alone))


def test_malformed_rows_are_reported_with_place_and_reason(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"messages": CONV[1:3]}),
        "{not json",
        json.dumps({"msgs": []}),
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"role": "user", "content": 5}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:line 2: not valid JSON"):
        list(read_rows(path, ErrorLog("raise")))
    errors = ErrorLog("skip")
    examples = load_chat_examples(list(read_rows(path, errors)), tok, errors)
    assert len(examples) == 1
    reasons = "\n".join(errors.skipped)
    for needle in (
        "line 2: not valid JSON",
        "line 3: missing key 'messages'",
        "line 4: 'messages' must be a non-empty list",
        "line 5: messages[0].content: must be a string",
        "line 6: no assistant message",
    ):
        assert needle in reasons
    with pytest.raises(DataError, match="line 3: missing key 'messages'"):
        rows = [r for r in read_rows(path, ErrorLog("skip"))]
        load_chat_examples(rows, tok, ErrorLog("raise"))


def test_parquet_and_prompt_label_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": ["What is 1+1?", ""], "label": ["2", "3"]})
    pq.write_table(table, tmp_path / "p.parquet")
    errors = ErrorLog("skip")
    ex = load_prompt_examples(list(read_rows(tmp_path / "p.parquet", errors)), errors)
    assert [e.label for e in ex] == ["2"] and "p.parquet:row 1" in errors.skipped[0]
    write_jsonl_atomic(tmp_path / "m.jsonl", [{"question": [{"role": "user", "content": "hi"}], "answer": 4}])
    ex = load_prompt_examples(
        list(read_rows(tmp_path / "m.jsonl", errors)), errors, input_key="question", label_key="answer"
    )
    assert ex[0].prompt[0]["content"] == "hi" and ex[0].label == 4
