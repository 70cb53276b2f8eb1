"""pefthub.protocol.peft: which modules a ``target_modules`` names, as peft matches them, in bounded work."""

from __future__ import annotations

import re
import time

import pytest

from pefthub.protocol.limits import MAX_TARGET_REGEX_LENGTH
from pefthub.protocol.peft import target_regex_problem, unmatched_target

LLAMA = [f"model.layers.{i}.{part}" for i in range(2) for part in
         ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")] + ["lm_head"]


@pytest.mark.parametrize(("targets", "missing"), [
    (None, None), ("all-linear", None),
    (["q_proj", "v_proj"], None), (["self_attn.q_proj"], None), (["model.layers.1.mlp.down_proj"], None),
    (["lm_head", "q_proj", "q_proj"], None),
    (["q_proj", "o_proj"], "o_proj"), (["proj"], "proj"), (["attn.q_proj"], "attn.q_proj"),
    (["layers.0.self_attn.q_proj.extra"], "layers.0.self_attn.q_proj.extra"),
    (r".*\.(q|v)_proj", None), (r"model\.layers\.0\..*", None), (r"q_proj", "q_proj"), (r".*\.o_proj", r".*\.o_proj"),
])
def test_unmatched_target_follows_peft(targets, missing) -> None:
    """A list entry is a module's name or its last dotted parts; a string is a regex over the full name."""
    assert unmatched_target(targets, LLAMA) == missing


def test_a_regex_is_matched_with_the_callers_fullmatch() -> None:
    calls = []

    def fullmatch(pattern: str, name: str):
        calls.append(name)
        return re.fullmatch(pattern, name)

    assert unmatched_target(r".*lm_head", LLAMA, fullmatch=fullmatch) is None
    assert calls == LLAMA  # stops at the first module that matches

    def too_slow(pattern: str, name: str):
        raise TimeoutError(pattern)

    with pytest.raises(TimeoutError):  # the caller's bound, passed through for it to report
        unmatched_target(r"((.*.*)*)?(?!)", LLAMA, fullmatch=too_slow)


def test_a_long_list_against_a_large_base_takes_linear_time() -> None:
    """Matching is a set lookup per module name, not every target against every module."""
    modules = [f"model.layers.{i}.block.proj_{j}" for i in range(400) for j in range(50)]  # 20,000 modules
    targets = [f"{i}.block.proj_{j}" for i in range(400) for j in range(50)][::-1] * 2  # each matches one module
    started = time.perf_counter()
    assert unmatched_target(targets, modules) is None
    assert unmatched_target([*targets, "nowhere"], modules) == "nowhere"
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize(("pattern", "words"), [
    ("x" * (MAX_TARGET_REGEX_LENGTH + 1), f"{MAX_TARGET_REGEX_LENGTH + 1} characters long; the limit is "
                                          f"{MAX_TARGET_REGEX_LENGTH}"),
    ("(q_proj", "not a valid regular expression"),
])
def test_target_regex_problem(pattern: str, words: str) -> None:
    assert words in target_regex_problem(pattern)


def test_target_regex_problem_accepts_usual_patterns() -> None:
    for pattern in (r".*\.(q_proj|v_proj)", r"model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj", "x" * MAX_TARGET_REGEX_LENGTH):
        assert target_regex_problem(pattern) is None
