"""Scheduling for prompt-scope conditions: a request whose decision is read on its prompt gets its
whole prompt in one step.

A spec with ``"when": {"scope": "prompt", ...}`` that edits prompt tokens (``positions`` ``all`` or
``prompt``) decides on the prompt's tokens and edits them by that decision, as the HF hooks do in
one forward (:class:`saesteer.hf.conditions.Trigger`): the trigger reads its layer, before the edits
there, over every prompt token, and the edits at that layer and after it apply to every prompt token
when it fires. Under chunked prefill vLLM would process the first chunks of a prompt before its
last tokens are read, so their edits could not know the decision. The scheduler here
(:func:`steered_scheduler`, vLLM's ``scheduler_cls``) never splits the prompt of such a request:
it waits for a step with room for all of it, the rule vLLM applies to multimodal inputs that must
not be split (``disable_chunked_mm_input``). Requests without such a spec are scheduled exactly as
vLLM's own scheduler does (one integer comparison more per scheduled request). A recompute after
preemption reads the prompt in one step again; the worker keeps the first decision
(:class:`saesteer.vllm.reports.ConditionState`).

A prompt longer than the step budget (``max_num_batched_tokens``, or a lower
``long_prefill_token_threshold``) could then never be scheduled:
:func:`guard_prompt_budget` refuses it when the request is made (a ``VLLMValidationError`` naming
``prompt``, which the server answers with 400).

The front ends (:class:`saesteer.vllm.SteeredLLM`, ``saesteer serve``) mark such a request with
``extra_args["saesteer_whole_prompt"] = True`` (:func:`mark`), from the parsed specs
(:attr:`saesteer.steering.spec.SteerSpec.decides_on_prompt`).
"""

from __future__ import annotations

__all__ = ["SCHEDULER", "WHOLE", "mark", "steered_scheduler", "scheduler_class", "guard_prompt_budget",
           "check_scheduler_cls", "step_budget"]

#: vLLM's ``scheduler_cls`` for a steered engine (a factory: it picks the sync or async base).
SCHEDULER = "saesteer.vllm.scheduling.steered_scheduler"
#: the ``extra_args`` key that marks a request whose prompt must be read in one step
WHOLE = "saesteer_whole_prompt"


def mark(extra_args: dict, specs) -> dict:
    """``extra_args`` with :data:`WHOLE` set when one of ``specs`` decides on the prompt and edits it."""
    if any(s.decides_on_prompt for s in specs):
        extra_args[WHOLE] = True
    return extra_args


def _whole(request) -> bool:
    sp = request.sampling_params
    extra = None if sp is None else sp.extra_args
    return bool(extra and extra.get(WHOLE))


class _WholePrompt:
    """The scheduler rule, on top of a vLLM scheduler class. ``_reserve_prefill_lookahead`` is the
    last cut vLLM makes to a request's token count in both of its scheduling loops (running and
    waiting requests), right before it checks for zero ("cannot be scheduled in this step")."""

    def _reserve_prefill_lookahead(self, request, num_computed_tokens: int, num_new_tokens: int) -> int:
        n = super()._reserve_prefill_lookahead(request, num_computed_tokens, num_new_tokens)
        if n and num_computed_tokens + n < request.num_prompt_tokens and _whole(request):
            return 0  # a part of the prompt: wait for a step with room for all of it
        return n


_CLASSES: dict[bool, type] = {}


def scheduler_class(async_scheduling: bool) -> type:
    """vLLM's ``AsyncScheduler`` (``async_scheduling``) or ``Scheduler`` with the whole-prompt rule."""
    cls = _CLASSES.get(async_scheduling)
    if cls is None:
        if async_scheduling:
            from vllm.v1.core.sched.async_scheduler import AsyncScheduler as base
        else:
            from vllm.v1.core.sched.scheduler import Scheduler as base
        if not callable(getattr(base, "_reserve_prefill_lookahead", None)):
            import vllm

            from .version import TESTED

            raise RuntimeError(f"saesteer: this vLLM ({vllm.__version__}) has no {base.__name__}._reserve_prefill_lookahead, "
                               f"which saesteer's scheduler extends; it is tested with vllm{TESTED}")
        cls = _CLASSES[async_scheduling] = type("SAESteered" + base.__name__, (_WholePrompt, base),
                                                {"__module__": __name__})
    return cls


def steered_scheduler(*args, vllm_config, **kwargs):
    """vLLM's scheduler (``AsyncScheduler`` when the engine schedules asynchronously, else
    ``Scheduler``) with the whole-prompt rule. vLLM calls its ``scheduler_cls`` with these arguments."""
    return scheduler_class(bool(vllm_config.scheduler_config.async_scheduling))(*args, vllm_config=vllm_config, **kwargs)


def check_scheduler_cls(value, where: str = "scheduler_cls"):
    """The ``scheduler_cls`` a steered engine runs: saesteer's; any other is refused (its conditions
    would not be exact under chunked prefill)."""
    from ..steering.spec import SpecError

    if value not in (None, "", SCHEDULER) and value is not steered_scheduler:
        raise SpecError(f"{where}: a steered engine runs saesteer's scheduler ({SCHEDULER}), got {value!r}")
    return SCHEDULER


_OVER_BUDGET: list[type] = []


def _over_budget() -> type:
    """The error of a prompt over the step budget: a :class:`~saesteer.steering.spec.SpecError`
    (what :class:`saesteer.vllm.SteeredLLM` raises for a bad request) and vLLM's own
    ``VLLMValidationError`` (which vLLM's server answers with 400, ``param: prompt``)."""
    if not _OVER_BUDGET:
        from vllm.exceptions import VLLMValidationError

        from ..steering.spec import SpecError

        class PromptOverBudget(SpecError, VLLMValidationError):
            def __init__(self, msg: str, n: int):
                VLLMValidationError.__init__(self, msg, parameter="prompt", value=n)
                self.msg = msg

            def __str__(self):
                return self.msg

        _OVER_BUDGET.append(PromptOverBudget)
    return _OVER_BUDGET[0]


def guard_prompt_budget(input_processor, budget: tuple[int, str]) -> None:
    """Make ``input_processor`` (vLLM's, of an ``LLM`` or an ``AsyncLLM``) refuse a marked request
    whose prompt has more tokens than ``budget`` (:func:`step_budget`), which would never be scheduled."""
    from vllm.utils.async_utils import make_async

    if getattr(input_processor, "_saesteer_budget", None) is not None:
        input_processor._saesteer_budget = budget
        return
    process = input_processor.process_inputs

    def process_inputs(*args, **kwargs):
        req = process(*args, **kwargs)
        n = len(req.prompt_token_ids or ())
        limit, setting = input_processor._saesteer_budget
        if n > limit and _whole(req):
            flag = "--" + setting.replace("_", "-")
            raise _over_budget()(
                f"prompt: {n} tokens, more than the engine's step budget ({setting}={limit}); a saesteer spec whose "
                "when has scope 'prompt' edits the prompt by a decision read on all of it, so the prompt must fit one "
                f"step: shorten it, start the engine with a larger {flag}, or use positions 'generated'", n)
        return req

    input_processor._saesteer_budget = budget
    input_processor.process_inputs = process_inputs
    executor = getattr(getattr(input_processor, "renderer", None), "_executor", None)
    input_processor.process_inputs_async = make_async(process_inputs, executor=executor)


def step_budget(vllm_config) -> tuple[int, str]:
    """The most prompt tokens one step may give a request, and the setting that sets it: vLLM's
    ``max_num_scheduled_tokens`` (``max_num_batched_tokens``), or ``long_prefill_token_threshold``
    when that is set and lower (vLLM cuts a prompt to it whenever other requests are waiting or
    running, so a longer whole prompt would wait for an idle engine)."""
    sc = vllm_config.scheduler_config
    budget = (int(getattr(sc, "max_num_scheduled_tokens", None) or sc.max_num_batched_tokens), "max_num_batched_tokens")
    cap = int(getattr(sc, "long_prefill_token_threshold", 0) or 0)
    return (cap, "long_prefill_token_threshold") if 0 < cap < budget[0] else budget
