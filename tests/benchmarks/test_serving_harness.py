"""The serving benchmark's pure parts: workload shape, arrivals, history resend, the stepping
driver's order of turns, the figures and the capacity search (benchmarks/serving/)."""

import numpy as np
import pytest

from benchmarks.serving.driver import replay_steps
from benchmarks.serving.report import comparison_lines
from benchmarks.serving.stats import RequestRecord, find_capacity, summarize, sustained
from benchmarks.serving.workload import WorkloadSpec, history, make_workload, poisson_arrivals, system_prompt


def words(text: str) -> int:
    return len(text.split())


def test_poisson_arrivals_start_at_zero_and_have_the_rate_s_mean_gap():
    arrivals = poisson_arrivals(np.random.default_rng(0), 4.0, 20_000)
    gaps = np.diff(arrivals)
    assert arrivals[0] == 0.0 and (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean (a fixed interval would give 0).
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.05)


def test_the_workload_is_seeded_and_shaped_as_specified():
    spec = WorkloadSpec(conversations=60, rate_per_s=1.0, seed=3)
    workload = make_workload(spec, words)
    assert workload == make_workload(spec, words)
    assert words(workload.system) == 1000
    turns = [t for c in workload.conversations for t in c.turns]
    assert {len(c.turns) for c in workload.conversations} == {1, 2, 3, 4}
    assert all(10 <= words(t.user) <= 60 for t in turns)  # cut back to the drawn length
    assert min(words(t.user) for t in turns) == 10 and max(words(t.user) for t in turns) >= 55
    assert all(32 <= t.answer_tokens <= 160 for t in turns)
    # Only the arrivals follow the rate: the conversations stay the same.
    faster = make_workload(WorkloadSpec(conversations=60, rate_per_s=2.0, seed=3), words)
    assert [c.turns for c in faster.conversations] == [c.turns for c in workload.conversations]
    assert faster.conversations[-1].start_s < workload.conversations[-1].start_s


def test_an_unseen_prefix_has_the_same_length_and_other_text():
    seen, unseen = system_prompt(0, 1000, words), system_prompt(1000, 1000, words)
    assert seen != unseen and words(seen) == words(unseen) == 1000
    # Readable text of the same kind, not ids, and different from the first words on (a prefix cache
    # keyed by blocks from the start must find nothing of one in the other).
    assert seen.split(".")[1] == unseen.split(".")[1] and seen.split()[:3] != unseen.split()[:3]


def test_each_turn_resends_the_whole_history_with_the_answers_given():
    workload = make_workload(WorkloadSpec(conversations=30, seed=1), words)
    conv = next(c for c in workload.conversations if len(c.turns) == 3)
    messages = history(workload.system, conv.turns, ["first answer", "second answer"])
    assert messages == [("system", workload.system), ("user", conv.turns[0].user), ("assistant", "first answer"),
                        ("user", conv.turns[1].user), ("assistant", "second answer"), ("user", conv.turns[2].user)]


class FakeEngine:
    """One token per running request per step; remembers what it was sent."""

    def __init__(self):
        self.running, self.sent = {}, []

    def add(self, key, token_ids, max_tokens):
        self.sent.append((key, list(token_ids)))
        self.running[key] = max_tokens

    def step(self):
        moved = []
        for key in list(self.running):
            self.running[key] -= 1
            moved.append((key, [7], self.running[key] == 0))
            if not self.running[key]:
                del self.running[key]
        return moved

    def busy(self):
        return bool(self.running)


def test_the_stepping_driver_sends_a_turn_after_the_previous_answer_with_it_in_the_history():
    spec = WorkloadSpec(conversations=3, rate_per_s=1000.0, seed=2, system_tokens=20, answer_tokens=(3, 5))
    workload = make_workload(spec, words)
    engine = FakeEngine()
    rendered = []

    def render(messages):
        rendered.append(messages)
        return [len(rendered)]

    records = replay_steps(workload, engine, render, lambda ids: f"answer of {len(ids)} tokens")
    assert len(records) == workload.requests() and all(r.ok for r in records)
    for record in records:
        turn = workload.conversations[record.conversation].turns[record.turn]
        assert record.tokens == turn.answer_tokens and len(record.gaps_s) == turn.answer_tokens - 1
    follow_ups = [m for m in rendered if len(m) > 2]
    assert follow_ups
    for messages in follow_ups:
        conv = next(c for c in workload.conversations if c.turns[0].user == messages[1][1])
        assert messages[2] == ("assistant", f"answer of {conv.turns[0].answer_tokens} tokens")
    for record in records:
        if record.turn:
            before = next(r for r in records if (r.conversation, r.turn) == (record.conversation, record.turn - 1))
            assert record.sent_s >= before.done_s


def test_summaries_count_failures_and_take_percentiles_over_requests_and_gaps():
    records = []
    for i in range(100):
        record = RequestRecord(i, 0, sent_s=0.0)
        record.token_arrived(0.001 * (i + 1), 1)       # TTFT 1..100 ms
        record.token_arrived(0.001 * (i + 1) + 0.02, 2)  # a chunk of two: two gaps of 10 ms
        records.append(record)
    records.append(RequestRecord(100, 0, 0.0, error="AioRpcError RESOURCE_EXHAUSTED"))
    summary = summarize(records, hit_rate=0.5)
    assert summary["completed"] == 100 and summary["failed"] == 1
    assert summary["ttft_p50_ms"] == pytest.approx(50.5) and summary["ttft_p99_ms"] == pytest.approx(99.01)
    assert summary["itl_p50_ms"] == pytest.approx(10.0) and summary["itl_p99_ms"] == pytest.approx(10.0)
    assert summary["tokens_per_s"] == pytest.approx(300 / 0.12)
    assert summary["errors"] == ["AioRpcError RESOURCE_EXHAUSTED"] and not sustained(summary)


def fake_measure(capacity):
    def measure(rate):
        return {"failed": 0, "completed": 10, "ttft_p99_ms": 1000.0 if rate <= capacity else 9000.0}
    return measure


def test_the_capacity_search_brackets_the_highest_sustained_rate():
    found, tried = find_capacity(fake_measure(1.0), start=0.1, steps=8)
    assert len(tried) == 8 and 0.8 < found <= 1.0
    found, tried = find_capacity(fake_measure(0.01), start=0.1, steps=8, floor=0.02)
    assert found is None and [rate for rate, _ in tried] == [0.1, 0.05, 0.025]


def test_the_comparison_states_the_issue_s_ratios():
    def result(capacity, ttft):
        return {"capacity": capacity, "at_genai_80": {"ttft_p50_ms": ttft}}
    lines = comparison_lines({"genai": result(0.2, 900.0), "daemon-cache": result(0.4, 300.0)})
    assert "capacity daemon-cache / genai: 2.00x" in lines[1]
    assert "TTFT p50 daemon-cache / genai: 0.33x" in lines[2]
    # Given rates, no search: no capacity is claimed.
    assert not any("capacity" in line for line in comparison_lines({"genai": {"runs": []}}))
