"""Built-in RL tasks: disjoint held-out splits, labels that match the inputs, the task's own reward."""
import pytest

from nemoh.rl.rewards import RewardFn, is_correct, number_partial
from nemoh.rl.tasks import TASKS, task_reward


@pytest.mark.parametrize("name", sorted(TASKS))
def test_held_out_split_is_disjoint_and_scored_by_the_task_reward(name):
    task = TASKS[name]
    train, held = task(600, 0), task(100, 1, held_out=True)
    inputs = {p.prompt[0]["content"] for p in train}
    assert not inputs & {p.prompt[0]["content"] for p in held}
    reward = RewardFn(task_reward(f"builtin:{name}", "task"))
    for p in train[:50] + held[:50]:       # the label itself always scores as correct
        assert is_correct(reward([str(p.label)], p.label)[0]), p


def test_new_task_labels():
    ex = {p.prompt[0]["content"]: p.label for p in TASKS["last_letter"](50, 0)}
    assert all(label == w[-1] and w[0] not in "aeiou" for w, label in ex.items())
    ex = {p.prompt[0]["content"]: p.label for p in TASKS["count"](50, 0)}
    assert all(label == w.count("a") and set(w) <= {"a", "b"} for w, label in ex.items())
    for p in TASKS["two_step"](50, 0):
        a, rest = p.prompt[0]["content"].split("+")
        b, c = rest.split("-")
        assert p.label == int(a) + int(b) - int(c) >= 0


def test_partial_credit_and_task_reward_resolution():
    assert [number_partial(r, 7) for r in ("7", " 8", "5", "4", "x", "")] == [1.0, 0.5, 0.25, 0.0, 0.0, 0.0]
    assert not is_correct(0.5) and is_correct(1.0)
    assert task_reward("builtin:two_step", "task") == "number_partial"
    assert task_reward("my.jsonl", "task") == "exact_match" and task_reward("builtin:count", "math") == "math"


def test_held_out_accuracy_counts_only_full_credit_and_matches_the_trainer(tmp_path):
    from nemoh import LLM, SamplingParams
    from nemoh.rl.config import RLConfig
    from nemoh.rl.rollout import accuracy_of
    from nemoh.rl.trainer import RLTrainer
    from nemoh.train.config import load_config

    held = TASKS["two_step"](4, 10_000, held_out=True)
    reward = RewardFn("number_partial")
    texts = [str(held[0].label), str(held[1].label + 1), "x", str(held[3].label)]   # exact, off by one, junk, exact
    assert accuracy_of(texts, held, reward) == 0.5
    with pytest.raises(ValueError):     # one text per prompt, never silently truncated
        accuracy_of(texts[:3], held, reward)
    # before run(): what the benches call on a warm start or a saved checkpoint (no RL iteration runs)
    cfg = load_config(None, ["--checkpoint.dir", str(tmp_path), "--data.prompts", "builtin:two_step",
                             "--data.num_eval", "8"], cls=RLConfig)
    trainer = RLTrainer(cfg, show_progress=False)
    outs = LLM(trainer.model, tokenizer=trainer.tok).generate(
        [p.prompt for p in trainer.eval_prompts],
        SamplingParams(temperature=0, max_tokens=cfg.rollout.rollout_max_response_len),
        chat_template_kwargs={"enable_thinking": False})
    expected = accuracy_of([o.outputs[0].text for o in outs], trainer.eval_prompts, trainer.reward)
    assert trainer.held_out_accuracy() == expected
