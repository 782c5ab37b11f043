"""Driving a GenerationEngine from tests: run jobs concurrently, read their events."""

import asyncio


def collect_many(engine, jobs):
    """Runs (prompt_ids, params) jobs concurrently; returns each job's events."""
    async def run_all():
        async def one(ids, params):
            return [e async for e in engine.generate(ids, params)]
        return await asyncio.gather(*(one(ids, params) for ids, params in jobs))

    return asyncio.run(run_all())


def tokens_of(events):
    return [t for e in events for t in e.token_ids]
