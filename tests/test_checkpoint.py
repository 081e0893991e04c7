"""Hub-layout loading and saving: sharded files, FP8 dequantisation, clear errors, atomic writes."""
import json
from pathlib import Path

import pytest
import torch
from reference import save_reference
from safetensors.torch import load_file, save_file

from nemoh import NemotronHForCausalLM
from nemoh.checkpoint import io as ckpt_io


def _quantise_fp8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = t.abs().max().float() / 448.0
    return (t.float() / scale).to(torch.float8_e4m3fn), scale.reshape(())


def test_fp8_checkpoint_loads_dequantised(tmp_path):
    """ModelOpt per-tensor FP8 (weight + weight_scale + input_scale) on experts and Mamba projections, like Super."""
    save_reference(tmp_path / "ref", "MEM*E", moe_latent_size=16)
    sd = load_file(tmp_path / "ref" / "model.safetensors")
    fp8, deq = {}, {}
    for k, t in sd.items():
        if k.endswith(("up_proj.weight", "down_proj.weight", "in_proj.weight", "out_proj.weight")):
            q, s = _quantise_fp8(t)
            fp8[k], fp8[k[:-len("weight")] + "weight_scale"] = q, s
            fp8[k[:-len("weight")] + "input_scale"] = torch.tensor(1.0)
            deq[k] = q.float() * s
        else:
            fp8[k] = deq[k] = t
    fp8_dir = tmp_path / "fp8"
    fp8_dir.mkdir()
    save_file(fp8, fp8_dir / "model.safetensors")
    cfg = json.loads((tmp_path / "ref" / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "FP8"}
    (fp8_dir / "config.json").write_text(json.dumps(cfg))

    model = NemotronHForCausalLM.from_pretrained(fp8_dir, dtype=torch.float32)
    w = model.backbone.layers[1].mixer.experts.up_proj[3]
    assert torch.equal(w, deq["backbone.layers.1.mixer.experts.3.up_proj.weight"])
    assert torch.equal(model.backbone.layers[0].mixer.in_proj.weight, deq["backbone.layers.0.mixer.in_proj.weight"])
    assert not torch.equal(w, sd["backbone.layers.1.mixer.experts.3.up_proj.weight"])  # really quantised

    # logits equal the transformers reference run on the dequantised copy
    deq_dir = tmp_path / "deq"
    deq_dir.mkdir()
    save_file(deq, deq_dir / "model.safetensors")
    (deq_dir / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    from transformers import NemotronHForCausalLM as Ref
    ref = Ref.from_pretrained(deq_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, 96, (2, 11))
    ours = NemotronHForCausalLM.from_pretrained(fp8_dir, dtype=torch.float32, mamba_dt_clamp=True)
    with torch.no_grad():
        assert (ours(ids).logits - ref(ids).logits).abs().max() < 1e-4
    # saved back as plain weights, without the quantisation config
    ours.save_pretrained(tmp_path / "out")
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())


def test_save_layout_matches_hub_names(tmp_path):
    save_reference(tmp_path / "ref", "M*-E")
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "ref", dtype=torch.float32)
    model.save_pretrained(tmp_path / "out")
    theirs = load_file(tmp_path / "ref" / "model.safetensors")
    ours = load_file(tmp_path / "out" / "model.safetensors")
    assert set(theirs) == set(ours)
    assert all(theirs[k].shape == ours[k].shape and torch.equal(theirs[k], ours[k]) for k in theirs)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["hybrid_override_pattern"] == "M*-E" and cfg["layers_block_type"][0] == "linear_attention"


def test_bf16_save_and_shards(tmp_path):
    save_reference(tmp_path / "ref", "M*-E")
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "ref", dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "out", max_shard_size="10KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2
    back = NemotronHForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16)
    for (n, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), n
    assert back.backbone.layers[0].mixer.A_log.dtype == torch.float32


def test_missing_unexpected_misshaped_are_listed(tmp_path):
    save_reference(tmp_path / "ref", "M*-E")
    sd = load_file(tmp_path / "ref" / "model.safetensors")
    del sd["backbone.layers.3.mixer.experts.5.down_proj.weight"]
    del sd["backbone.layers.1.mixer.q_proj.weight"]
    sd["backbone.layers.9.mixer.bogus.weight"] = torch.zeros(2)
    sd["backbone.layers.2.mixer.up_proj.weight"] = torch.zeros(3, 3)
    save_file(sd, tmp_path / "ref" / "model.safetensors")
    with pytest.raises(ValueError) as e:
        NemotronHForCausalLM.from_pretrained(tmp_path / "ref")
    msg = str(e.value)
    for needle in ("missing tensors (2)", "experts.5.down_proj.weight", "layers.1.mixer.q_proj.weight",
                   "unexpected tensors (1)", "bogus", "mis-shaped tensors (1)", "layers.2.mixer.up_proj.weight"):
        assert needle in msg, needle


def test_no_weights_is_a_clear_error(tmp_path):
    save_reference(tmp_path / "ref", "M")
    (tmp_path / "ref" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        NemotronHForCausalLM.from_pretrained(tmp_path / "ref")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_reference(tmp_path / "ref", "M*")
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "ref", dtype=torch.float32)
    model.save_pretrained(tmp_path / "out")
    before = load_file(tmp_path / "out" / "model.safetensors")
    calls = []

    def dying_save(tensors, filename, metadata=None):  # the process "dies" after writing one shard
        if calls:
            raise KeyboardInterrupt("killed during save")
        calls.append(filename)
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt_io, "save_file", dying_save)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "out", max_shard_size="5KB")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ref"]  # no temp dirs left behind


def _e2m1_value(code: torch.Tensor) -> torch.Tensor:
    """Reference e2m1 decoding from the bit fields (sign s, exponent e, mantissa m, bias 1), not a lookup table."""
    s, e, m = (code >> 3) & 1, (code >> 1) & 3, code & 1
    mag = torch.where(e == 0, m.float() * 0.5, (1 + m.float() * 0.5) * 2.0 ** (e.float() - 1))
    return torch.where(s == 1, -mag, mag)


def _quantise_nvfp4(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ModelOpt NVFP4: (packed uint8 (O, I/2), fp8 block scales (O, I/16), fp32 global scale, the dequantised
    weight computed element by element from the bit fields)."""
    O, I = t.shape
    blocks = t.float().reshape(O, I // 16, 16)
    global_scale = t.abs().max().float() / (6.0 * 448.0)
    scale = (blocks.abs().amax(-1) / 6.0 / global_scale).to(torch.float8_e4m3fn)       # (O, I/16)
    step = scale.float().unsqueeze(-1) * global_scale
    x = (blocks / torch.where(step == 0, torch.ones_like(step), step)).reshape(O, I)
    all_codes = torch.arange(16)
    values = _e2m1_value(all_codes)                                                   # (16,)
    codes = all_codes[(x.unsqueeze(-1) - values).abs().argmin(-1)]                    # nearest code, (O, I)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)                 # even element: low nibble
    deq = (_e2m1_value(codes).reshape(O, I // 16, 16) * step).reshape(O, I)
    return packed, scale, global_scale.reshape(()), deq


def test_nvfp4_checkpoint_loads_dequantised(tmp_path):
    """ModelOpt NVFP4 (packed e2m1 weight, fp8 per-16 block scales, fp32 global scale) on experts and Mamba
    projections, dequantised on load to exactly the reference decoding."""
    save_reference(tmp_path / "ref", "MEM*E")
    sd = load_file(tmp_path / "ref" / "model.safetensors")
    q, deq = {}, {}
    for k, t in sd.items():
        if k.endswith(("up_proj.weight", "down_proj.weight", "in_proj.weight", "out_proj.weight")) \
                and t.shape[-1] % 16 == 0:  # the shared expert's down_proj (24 inputs) stays unquantised
            stem = k[:-len("weight")]
            q[k], q[stem + "weight_scale"], q[stem + "weight_scale_2"], deq[k] = _quantise_nvfp4(t)
            q[stem + "input_scale"] = torch.tensor(1.0)
        else:
            q[k] = deq[k] = t
    for name, tensors in (("nvfp4", q), ("deq", deq)):
        (tmp_path / name).mkdir()
        save_file(tensors, tmp_path / name / "model.safetensors")
        cfg = json.loads((tmp_path / "ref" / "config.json").read_text())
        if name == "nvfp4":
            cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16}
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    model = NemotronHForCausalLM.from_pretrained(tmp_path / "nvfp4", dtype=torch.float32)
    key = "backbone.layers.1.mixer.experts.3.up_proj.weight"
    w = model.backbone.layers[1].mixer.experts.up_proj[3]
    assert q[key].dtype == torch.uint8 and q[key].shape == (w.shape[0], w.shape[1] // 2)
    # value x block scale x global scale, multiplied in another order than the loader's: 1 fp32 rounding apart
    ulp = dict(rtol=2 ** -23 * 2, atol=0.0)
    torch.testing.assert_close(w, deq[key], **ulp)
    torch.testing.assert_close(model.backbone.layers[0].mixer.in_proj.weight,
                               deq["backbone.layers.0.mixer.in_proj.weight"], **ulp)
    # 4-bit: close to the original (relative error of a few %), but really quantised
    assert not torch.equal(w, sd[key]) and (w - sd[key]).norm() < 0.2 * sd[key].norm()
    ref = NemotronHForCausalLM.from_pretrained(tmp_path / "deq", dtype=torch.float32)
    ids = torch.randint(0, 96, (2, 9))
    with torch.no_grad():  # weights 1 ulp apart through 5 small layers: far below 1e-5 on logits of size ~1
        assert (model(ids).logits - ref(ids).logits).abs().max() < 1e-5
    # a block scale missing is named
    del q["backbone.layers.0.mixer.in_proj.weight_scale_2"]
    save_file(q, tmp_path / "nvfp4" / "model.safetensors")
    with pytest.raises(ValueError, match=r"in_proj.weight is packed NVFP4 \(uint8\) but has no weight_scale_2"):
        NemotronHForCausalLM.from_pretrained(tmp_path / "nvfp4")


def _damaged(data: bytes) -> dict[str, bytes]:
    """Seven ways a safetensors file arrives broken."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    first = next(k for k in header if k != "__metadata__")
    bad_offsets = dict(header)
    bad_offsets[first] = {**header[first], "data_offsets": [0, 10**12]}
    bad_dtype = dict(header)
    bad_dtype[first] = {**header[first], "dtype": "Q7"}

    def with_header(h: dict) -> bytes:
        raw = json.dumps(h).encode()
        return len(raw).to_bytes(8, "little") + raw + data[8 + n:]
    return {"empty": b"", "short": data[:5], "huge_header_length": (10**15).to_bytes(8, "little") + data[8:],
            "header_not_json": n.to_bytes(8, "little") + b"{" * n + data[8 + n:],
            "truncated_data": data[: len(data) - 100], "offsets_past_end": with_header(bad_offsets),
            "unknown_dtype": with_header(bad_dtype)}


def test_corrupt_or_truncated_safetensors_name_the_file(tmp_path):
    save_reference(tmp_path / "ref", "M*")
    data = (tmp_path / "ref" / "model.safetensors").read_bytes()
    for name, broken in _damaged(data).items():
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
        (d / "model.safetensors").write_bytes(broken)
        with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file") as e:
            NemotronHForCausalLM.from_pretrained(d)
        assert str(d) in str(e.value), name


def test_a_device_this_machine_lacks_is_named(tmp_path):
    save_reference(tmp_path / "ref", "M")
    if torch.cuda.is_available():
        bad = f"cuda:{torch.cuda.device_count()}"
        match = "CUDA device"
    else:
        bad, match = "cuda", "CUDA is not available"
    with pytest.raises(ValueError, match=f"device: '{bad}' asked for, but {match}"):
        NemotronHForCausalLM.from_pretrained(tmp_path / "ref", device=bad)


def test_checkpoint_rotation_is_atomic_and_killed_runs_are_cleaned_at_start(tmp_path, monkeypatch):
    """A kill while an old checkpoint is deleted leaves it renamed away, never a half-deleted step_N; the next run's
    start removes that, a killed save's temp dir, and a killed export's `.final.tmp-*` (its writer is gone)."""
    import shutil
    import subprocess
    import sys

    from nemoh.model.presets import tiny
    from nemoh.train import state
    model = NemotronHForCausalLM.from_config(tiny(), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    run = tmp_path / "run"
    state.save_state(run, 1, model, opt, sched, {"epoch": 0, "index": 0}, keep=1)

    real_rmtree = shutil.rmtree

    def killed_rmtree(path, *a, **k):  # the process dies halfway through deleting a directory
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        for f in files[: len(files) // 2]:
            f.unlink()
        raise KeyboardInterrupt("killed mid-delete")
    monkeypatch.setattr(state.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        state.save_state(run, 2, model, opt, sched, {"epoch": 0, "index": 1}, keep=1)
    monkeypatch.setattr(state.shutil, "rmtree", real_rmtree)
    assert [p.name for p in state.checkpoints(run)] == ["step_000002"]  # the half-deleted one has no valid name
    assert (run / "checkpoints" / ".step_000001.old").is_dir()

    # leftovers of killed runs: a save's temp dir, two exports (dead writer; legacy name without a pid), and a
    # live writer's export in progress, which must survive
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "checkpoints" / ".step_000003.tmp").mkdir()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        stale = [run / f".final.tmp-{int(dead.stdout)}-ab12cd", run / ".final.tmp-k2j3h4g5"]
        busy = run / f".final.tmp-{live.pid}-zz99"
        for d in (*stale, busy):
            d.mkdir()
            (d / "model.safetensors").write_bytes(b"\0" * 100)
        state.prepare_run_dir(run)
        left = sorted(p.name for p in run.iterdir()) + sorted(p.name for p in (run / "checkpoints").iterdir())
        assert left == [busy.name, "checkpoints", "step_000002"]
    finally:
        live.kill()
        live.wait()
    # the export path cleans its own stale temps too, and a finished export leaves none
    model.save_pretrained(run / "final")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "final"]
    with pytest.raises(ValueError, match="checkpoint.dir: .* is a file"):
        state.prepare_run_dir(run / "final" / "config.json")
