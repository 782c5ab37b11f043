"""The scheduler alone: row layout, token budget, chunking, compaction."""

from appliance.engine.request import GenerationRequest, RequestStatus
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import MoveRow, ReleaseRow, Scheduler, SchedulerConfig


def request(name, prompt_len):
    return GenerationRequest(name, [1] * prompt_len, SamplingParams(max_tokens=10))


def run_step(scheduler):
    batch = scheduler.schedule()
    for r in batch.decode:
        r.output_ids.append(0)
    scheduler.commit(batch)
    for chunk in batch.prefills:
        if chunk.completes_prompt:
            chunk.request.output_ids.append(0)
    return batch


def test_budget_limits_prefill_and_a_long_prompt_is_chunked():
    scheduler = Scheduler(SchedulerConfig(max_batch=4, max_step_tokens=10, prefill_chunk=6))
    long, short = request("long", 14), request("short", 3)
    scheduler.add(long)
    scheduler.add(short)
    first = run_step(scheduler)
    assert [(c.request.request_id, c.start, len(c.tokens)) for c in first.prefills] == [("long", 0, 6)]
    assert scheduler.prefilling is long and long.row == 0 and short.status is RequestStatus.WAITING
    second = run_step(scheduler)
    assert [(c.request.request_id, c.start, len(c.tokens)) for c in second.prefills] == [("long", 6, 6)]
    third = run_step(scheduler)
    # The long prompt's last 2 tokens, then the short prompt fits the remaining budget.
    assert [(c.request.request_id, c.start, len(c.tokens)) for c in third.prefills] == [("long", 12, 2), ("short", 0, 3)]
    assert scheduler.running == [long, short] and (long.row, short.row) == (0, 1)
    fourth = run_step(scheduler)
    assert fourth.decode == [long, short] and not fourth.prefills


def test_finishing_a_middle_row_moves_the_last_row_into_it():
    scheduler = Scheduler(SchedulerConfig(max_batch=4, max_step_tokens=64))
    requests = [request(str(i), 2) for i in range(3)]
    for r in requests:
        scheduler.add(r)
    run_step(scheduler)
    run_step(scheduler)
    assert [r.row for r in requests] == [0, 1, 2]
    plan = scheduler.finish(requests[0], RequestStatus.FINISHED_CANCELLED)
    assert plan == [MoveRow(2, 0, requests[2].cached_tokens), ReleaseRow(2)]
    assert scheduler.running == [requests[2], requests[1]] and requests[2].row == 0 and requests[0].row == -1


def test_a_prefilling_row_slides_down_behind_the_running_ones():
    scheduler = Scheduler(SchedulerConfig(max_batch=4, max_step_tokens=8, prefill_chunk=4))
    a, b = request("a", 2), request("b", 20)
    scheduler.add(a)
    scheduler.add(b)
    run_step(scheduler)
    assert scheduler.running == [a] and scheduler.prefilling is b and b.row == 1
    plan = scheduler.finish(a, RequestStatus.FINISHED_STOPPED)
    assert plan == [MoveRow(1, 0, b.prefilled), ReleaseRow(1)] and b.row == 0


def test_no_more_rows_than_max_batch():
    scheduler = Scheduler(SchedulerConfig(max_batch=2, max_step_tokens=100))
    for i in range(5):
        scheduler.add(request(str(i), 2))
    run_step(scheduler)
    assert len(scheduler.running) == 2 and len(scheduler.waiting) == 3


def _cuts(scheduler, target, steps=12):
    cuts = []
    for _ in range(steps):
        batch = run_step(scheduler)
        cuts += [(c.start, len(c.tokens)) for c in batch.prefills if c.request is target]
    return cuts


def test_a_prompt_is_cut_at_the_same_places_alone_and_beside_others():
    # Kernels round a chunk of S tokens differently from smaller pieces, so cuts shaped by the
    # budget that other requests leave would change a request's tokens when it is batched.
    config = SchedulerConfig(max_batch=4, max_step_tokens=12, prefill_chunk=8)
    alone = Scheduler(config)
    target = request("target", 19)
    alone.add(target)
    expected = _cuts(alone, target)
    assert expected == [(0, 8), (8, 8), (16, 3)]
    for others in ([5], [3, 2], [7, 7, 1]):
        busy = Scheduler(config)
        for i, length in enumerate(others):
            busy.add(request(f"other{i}", length))
        target = request("target", 19)
        busy.add(target)
        assert _cuts(busy, target) == expected, others


def test_the_first_chunk_of_a_step_runs_even_when_decode_rows_use_the_budget():
    scheduler = Scheduler(SchedulerConfig(max_batch=8, max_step_tokens=16, prefill_chunk=8))
    for i in range(6):
        scheduler.add(request(str(i), 2))
    run_step(scheduler)
    late = request("late", 12)
    scheduler.add(late)
    batch = run_step(scheduler)  # 6 decode rows leave 10 tokens: the 8-token chunk fits
    assert [(c.start, len(c.tokens)) for c in batch.prefills] == [(0, 8)]
    crowded = Scheduler(SchedulerConfig(max_batch=20, max_step_tokens=16, prefill_chunk=8))
    for i in range(16):
        crowded.add(request(str(i), 1))
    for _ in range(4):
        run_step(crowded)
    assert len(crowded.running) == 16
    crowded.add(request("late", 12))
    batch = run_step(crowded)  # 16 decode rows leave no budget; one chunk still progresses
    assert [(c.start, len(c.tokens)) for c in batch.prefills] == [(0, 8)]


def test_a_waiting_request_leaves_the_queue_with_no_row_operations():
    scheduler = Scheduler(SchedulerConfig(max_batch=1, max_step_tokens=64))
    running, waiting = request("running", 2), request("waiting", 2)
    scheduler.add(running)
    scheduler.add(waiting)
    run_step(scheduler)
    assert scheduler.finish(waiting, RequestStatus.FINISHED_CANCELLED) == []
    assert scheduler.finish(running, RequestStatus.FINISHED_STOPPED) == [ReleaseRow(0)]
    assert not scheduler.has_work
