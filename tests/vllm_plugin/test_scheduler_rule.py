"""saesteer's scheduler rule without an engine: vLLM's own scheduler classes with the rule added,
asked how many tokens to give a request (the one method the rule extends), and the step budget a
whole prompt must fit."""

from __future__ import annotations

import types

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make venv-vllm; make test-vllm)")

from vllm.config import SchedulerConfig  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402

from saesteer.steering.spec import SpecError  # noqa: E402
from saesteer.vllm.scheduling import SCHEDULER, WHOLE, check_scheduler_cls, scheduler_class, step_budget  # noqa: E402


def _bare(cls):
    s = object.__new__(cls)  # the method reads one attribute of the scheduler
    s.num_prefill_lookahead = 0
    return s


def _request(prompt: int, done: int, marked: bool):
    sp = vllm.SamplingParams(extra_args={WHOLE: True} if marked else None)
    return types.SimpleNamespace(num_prompt_tokens=prompt, num_tokens=done, sampling_params=sp)


@pytest.mark.parametrize("asynchronous, base", [(False, Scheduler), (True, AsyncScheduler)])
def test_a_marked_prompt_is_never_split_and_nothing_else_changes(asynchronous, base):
    cls = scheduler_class(asynchronous)
    assert issubclass(cls, base)
    s, ref = _bare(cls), _bare(base)
    cases = [  # (prompt tokens, tokens so far, computed, offered, marked) -> what saesteer gives
        ((30, 30, 0, 30, True), 30),  # the whole prompt fits: scheduled
        ((30, 30, 0, 12, True), 0),  # a part of it: waits
        ((30, 30, 18, 12, True), 12),  # the rest of a prompt (a cache hit): scheduled
        ((30, 35, 0, 32, True), 32),  # a recompute that covers the prompt
        ((30, 35, 0, 20, True), 0),  # a recompute that would split it
        ((30, 41, 40, 1, True), 1),  # a decode step
        ((30, 30, 0, 12, False), 12),  # unmarked: as vLLM
    ]
    for (prompt, total, done, offered, marked), want in cases:
        req = _request(prompt, total, marked)
        assert s._reserve_prefill_lookahead(req, done, offered) == want
        if not marked or want:
            assert want == ref._reserve_prefill_lookahead(req, done, offered)


def test_the_step_budget_and_the_scheduler_setting():
    cfg = SchedulerConfig.default_factory(max_num_batched_tokens=64, max_num_seqs=8, max_model_len=256)
    assert step_budget(types.SimpleNamespace(scheduler_config=cfg)) == (64, "max_num_batched_tokens")
    cfg = SchedulerConfig.default_factory(max_num_batched_tokens=64, max_num_seqs=8, max_model_len=256,
                                          long_prefill_token_threshold=16)
    assert step_budget(types.SimpleNamespace(scheduler_config=cfg)) == (16, "long_prefill_token_threshold")
    assert check_scheduler_cls(None) == check_scheduler_cls(SCHEDULER) == SCHEDULER
    with pytest.raises(SpecError, match=r"^--scheduler-cls: a steered engine runs saesteer's scheduler"):
        check_scheduler_cls("vllm.v1.core.sched.scheduler.Scheduler", "--scheduler-cls")
