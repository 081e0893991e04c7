"""RL with rollouts on servers (`[rollout] backend = "sglang"`): two real `nemoh serve` processes on 127.0.0.1 speak
SGLang's native protocol; the run must equal the in-process engine's run on the same base, and a broken server
reply must be a clear error naming the server."""
import json
import shutil

import httpx
import pytest
from net import free_port
from test_sglang_api import start_server

from nemoh.rl.backends.sglang import ServerReplyError
from nemoh.rl.config import RLConfig
from nemoh.rl.trainer import RLTrainer
from nemoh.train.config import load_config
from nemoh.train.metrics import read_metrics

pytestmark = pytest.mark.slow  # two server processes and two short RL runs

ARGS = ["--train.eval_every", "0", "--data.num_eval", "4", "--rollout.n_samples_per_prompt", "4",
        "--rollout.rollout_batch_size", "4", "--train.global_batch_size", "16", "--train.micro_batch_size", "8",
        "--train.rollouts", "3", "--rollout.rollout_max_response_len", "6", "--algo.use_rollout_routing_replay",
        "true", "--warm_start.steps", "3", "--reward.function", "rl_helpers:lowercase_share", "--optim.lr", "1e-2"]


def _run(run_dir, *extra):
    cfg = load_config(None, ["--checkpoint.dir", str(run_dir), *ARGS, *extra], cls=RLConfig)
    RLTrainer(cfg, show_progress=False).run()
    return [r for r in read_metrics(run_dir) if "reward_mean" in r]


def test_rl_on_two_nemoh_serve_processes_equals_the_in_process_engine(tmp_path):
    engine = _run(tmp_path / "engine")
    servers = [start_server(tmp_path / "engine" / "base", free_port()) for _ in range(2)]
    try:
        run = tmp_path / "sglang"
        run.mkdir()
        shutil.copytree(tmp_path / "engine" / "base", run / "base")   # the same starting weights
        urls = json.dumps([base for _, base in servers])
        http = _run(run, "--rollout.backend", "sglang", "--rollout.urls", urls)
        # the servers loaded every update from disk: their weight version is the trainer's optimizer step count
        for _, base in servers:
            assert httpx.get(base + "/get_weight_version").json()["weight_version"] == "3"
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(timeout=10)
    assert len(engine) == len(http) == 3
    for a, b in zip(engine, http):
        # sample j of a prompt is seeded seed + j on both sides, and the weights are equal (fp32 on disk), so the
        # tokens and hence the rewards are identical; R3 keeps the train/rollout gap at float32 noise (1e-4 is the
        # in-process bound of test_rl.py, over log-softmax of logits ~10)
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-6)
        assert b["logprob_diff_max"] < 1e-4, b["logprob_diff_max"]
    assert list((run / "weights").glob("v*")) == [run / "weights" / "v000003"]  # older versions removed


def test_a_dead_server_list_and_a_bad_reply_are_clear_errors(tmp_path):
    cfg = load_config(None, ["--checkpoint.dir", str(tmp_path / "r"), *ARGS, "--rollout.backend", "sglang"],
                      cls=RLConfig)
    with pytest.raises(ValueError, match="rollout.urls"):
        RLTrainer(cfg, show_progress=False).run()
    # a server that answers 404 JSON to /update_weights_from_disk (not SGLang): the error names the server
    proc, base = start_server(_tiny(tmp_path), free_port())
    try:
        cfg = load_config(None, ["--checkpoint.dir", str(tmp_path / "r2"), *ARGS, "--rollout.backend", "sglang",
                                 "--rollout.urls", json.dumps([base + "/v1"])], cls=RLConfig)
        with pytest.raises(ServerReplyError, match=base):
            RLTrainer(cfg, show_progress=False).run()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _tiny(tmp_path):
    from nemoh.model.tiny import init_tiny
    return init_tiny(tmp_path / "tiny", seed=0)


def test_a_server_that_did_not_load_the_trainers_weights_is_caught_at_the_sync(tmp_path):
    """The probe after every sync (vLLM once dropped Mamba's D on reload: NaN logits): here the server is made to
    load a checkpoint whose D differs from the trainer's, as a buggy reload would leave it."""
    import torch

    from nemoh.rl.backends import BackendContext, build_backend

    trainer = RLTrainer(load_config(None, ["--checkpoint.dir", str(tmp_path / "r"), *ARGS], cls=RLConfig),
                        show_progress=False)
    proc, base = start_server(trainer.run_.base_path, free_port())
    try:
        trainer.cfg.rollout.urls = [base]
        ctx = BackendContext(trainer.cfg, trainer.reward, trainer.tok, trainer.chat_kwargs, trainer.model)
        backend = build_backend("sglang", ctx)          # syncs version 0 and probes it: equal weights pass
        bad = tmp_path / "bad"
        with torch.no_grad():
            mixer = trainer.model.backbone.layers[0].mixer
            saved = mixer.D.clone()
            mixer.D.zero_()
            trainer.model.save_pretrained(bad)
            mixer.D.copy_(saved)
        reload = backend._reload
        backend._reload = lambda url, path, version: reload(url, bad, version)   # the server loads something else
        with pytest.raises(ServerReplyError, match=f"{base}: after loading weight version 1 .*probe"):
            backend.sync_weights(trainer.model, 1)
        backend._reload = reload
        backend.sync_weights(trainer.model, 2)          # a correct reload passes again
        backend.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_server_killed_mid_rollout_loses_and_duplicates_no_sample(tmp_path):
    """Two servers; one is SIGKILLed while the rollout's requests are in flight. Every sample is still answered
    exactly once (requests that met the dead server are retried on the other with the same seed), so the groups
    equal a clean rollout on the surviving server alone, sample for sample."""
    from nemoh.rl.backends import BackendContext, build_backend

    trainer = RLTrainer(load_config(None, ["--checkpoint.dir", str(tmp_path / "r"), *ARGS], cls=RLConfig),
                        show_progress=False)
    survivor, victim = (start_server(trainer.run_.base_path, free_port()) for _ in range(2))
    prompts = trainer.train_prompts[:6]

    def rollout(urls, kill_after=None):
        cfg = trainer.cfg
        cfg.rollout.urls = urls
        backend = build_backend("sglang", BackendContext(cfg, trainer.reward, trainer.tok, trainer.chat_kwargs,
                                                         trainer.model))
        if kill_after is not None:
            calls, post = [0], backend._post

            def counting_post(path, body, first):
                calls[0] += path == "/generate"
                if calls[0] == kill_after:
                    victim[0].kill()                    # while earlier requests are still being answered
                return post(path, body, first)
            backend._post = counting_post
        try:
            groups, _ = backend.generate(prompts, seed=11)
        finally:
            backend.close()
        return [[(s.response_ids, s.reward) for s in g] for g in groups]

    try:
        hit = rollout([victim[1], survivor[1]], kill_after=5)
        assert victim[0].wait(timeout=30) is not None   # it did die during the rollout
        clean = rollout([survivor[1]])
    finally:
        for proc, _ in (survivor, victim):
            proc.kill()
            proc.wait(timeout=10)
    n = trainer.cfg.rollout.n_samples_per_prompt
    assert [len(g) for g in hit] == [n] * len(prompts)
    assert hit == clean


def _alive(marker: str) -> list[str]:
    import subprocess
    r = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return r.stdout.split()


def test_launch_starts_the_servers_and_stops_them(tmp_path):
    """`rollout.launch = 2`: the trainer starts two `nemoh serve` processes on its warm-started weights, trains
    against them (probe checks included) and leaves no process behind; a server that cannot start is an error
    naming its log file, and the ones already started are stopped too."""
    run = tmp_path / "launch"
    rows = _run(run, "--rollout.backend", "sglang", "--rollout.launch", "2", "--train.rollouts", "2")
    assert len(rows) == 2 and all(r["weight_version_lag"] == 0 for r in rows)
    assert sorted(p.name for p in (run / "servers").iterdir()) == ["server0.log", "server1.log"]
    assert _alive(str(run / "weights")) == []
    bad = tmp_path / "bad"
    cfg = load_config(None, ["--checkpoint.dir", str(bad), *ARGS, "--rollout.backend", "sglang",
                             "--rollout.launch", "2", "--rollout.launch_args", "--no-such-flag"], cls=RLConfig)
    with pytest.raises(RuntimeError, match=r"rollout.launch: the server for http://127.0.0.1:\d+ exited .*server0.log"):
        RLTrainer(cfg, show_progress=False).run()
    assert _alive(str(bad / "weights")) == []
