"""The dynamic batcher of `lanmt serve` on its own, with a plain decoding function that
records its batches: budgets, waiting, order, fairness, cancellation and a full queue."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lanmt_cli.serving.batcher import Batcher, QueueFull, Stopping


class Recorder:
    """A decoding function: upper-cases each line, after `seconds`; remembers its batches
    and the thread it ran on."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds
        self.batches: list[tuple[str, list[str]]] = []
        self.threads: set[int] = set()

    def __call__(self, key, lines):
        self.threads.add(threading.get_ident())
        self.batches.append((key, list(lines)))
        time.sleep(self.seconds)
        return [line.upper() for line in lines]


def run(coro):
    return asyncio.run(coro)


def texts(done) -> list[str]:
    return [d.result for d in done]


def test_requests_that_arrive_together_share_one_batch_and_get_their_own_results():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_tokens=100, max_wait=0.2)
        answers = await asyncio.gather(
            b.submit("k", ["a", "b"], [1, 1]), b.submit("k", ["c"], [1]), b.submit("k", [], [])
        )
        await b.close()
        return answers

    first, second, empty = run(main())
    assert texts(first) == ["A", "B"] and texts(second) == ["C"] and empty == []
    assert rec.batches == [("k", ["a", "b", "c"])]
    assert first[0].batch_sentences == 3 and first[0].decode_seconds >= 0
    assert threading.get_ident() not in rec.threads  # decoded off the event loop


def test_a_batch_is_cut_at_the_token_budget_and_a_long_sentence_goes_alone():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_tokens=5, max_wait=0.1)
        done = await b.submit("k", ["s1", "s2", "long", "s3"], [2, 2, 9, 2])
        await b.close()
        return done

    assert texts(run(main())) == ["S1", "S2", "LONG", "S3"]  # in order
    assert [lines for _, lines in rec.batches] == [["s1", "s2"], ["long"], ["s3"]]


def test_decoders_are_never_mixed_in_a_batch():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_tokens=100, max_wait=0.1)
        await asyncio.gather(
            b.submit("one-shot", ["a"], [1]),
            b.submit("refine", ["b"], [1]),
            b.submit("one-shot", ["c"], [1]),
        )
        await b.close()

    run(main())
    assert sorted(rec.batches) == [("one-shot", ["a", "c"]), ("refine", ["b"])]


def test_a_large_request_delays_a_small_one_by_one_batch_only():
    rec = Recorder(seconds=0.05)

    async def main():
        b = Batcher(rec, max_tokens=4, max_wait=0.0)
        large = asyncio.ensure_future(b.submit("k", [f"l{i}" for i in range(12)], [1] * 12))
        await asyncio.sleep(0.01)  # the large one is decoding its first batch
        small = await b.submit("k", ["s"], [1])
        finished_early = not large.done()
        await large
        await b.close()
        return small, finished_early

    small, finished_early = run(main())
    assert texts(small) == ["S"] and finished_early
    assert any("s" in lines for _, lines in rec.batches[:2])  # in the second batch at most


def test_without_company_a_request_waits_at_most_max_wait():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_tokens=100, max_wait=0.05)
        start = time.perf_counter()
        done = await b.submit("k", ["a"], [1])
        took = time.perf_counter() - start
        await b.close()
        return done, took

    done, took = run(main())
    assert 0.05 <= took < 2 and done[0].queue_seconds >= 0.05


def test_a_full_queue_refuses_at_once_and_says_when_to_retry():
    rec = Recorder(seconds=0.05)

    async def main():
        b = Batcher(rec, max_tokens=100, max_wait=0.2, max_queue=3)
        first = asyncio.ensure_future(b.submit("k", ["a", "b"], [1, 1]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            await b.submit("k", ["c", "d"], [1, 1])
        assert refused.value.retry_after >= 1
        third = await b.submit("k", ["e"], [1])  # still fits
        await first
        await b.close()
        return third

    assert texts(run(main())) == ["E"]


def test_a_cancelled_request_is_never_decoded():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_tokens=100, max_wait=0.1)
        gone = asyncio.ensure_future(b.submit("k", ["gone"], [1]))
        await asyncio.sleep(0.01)
        gone.cancel()
        kept = await b.submit("k", ["kept"], [1])
        await b.close()
        return kept, b.queued

    kept, queued = run(main())
    assert texts(kept) == ["KEPT"] and queued == 0
    assert rec.batches == [("k", ["kept"])]


def test_a_failing_decoder_fails_its_batch_only_and_closing_refuses_new_work():
    def flaky(key, lines):
        if key == "bad":
            raise RuntimeError("the decoder broke")
        return lines

    async def main():
        b = Batcher(flaky, max_tokens=100, max_wait=0.0)
        with pytest.raises(RuntimeError, match="the decoder broke"):
            await b.submit("bad", ["x"], [1])
        good = await b.submit("good", ["y"], [1])
        await b.close()
        with pytest.raises(Stopping):
            await b.submit("good", ["z"], [1])
        return good

    assert texts(run(main())) == ["y"]


class Overlap(Recorder):
    """A Recorder that also counts how many batches it decodes at the same time."""

    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.now = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, key, lines):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return super().__call__(key, lines)
        finally:
            with self.lock:
                self.now -= 1


def test_two_workers_decode_two_batches_at_once_and_closing_waits_for_both():
    rec = Overlap(0.2)

    async def main():
        b = Batcher(rec, max_tokens=1, max_wait=0.0, workers=2)
        asked = [asyncio.ensure_future(b.submit("k", [c], [1])) for c in "abcdef"]
        await asyncio.sleep(0.05)
        assert b.decoding == 2  # two batches of one sentence in flight at once
        await b.close()  # takes no more, finishes the queue and both workers' batches
        return [texts(await a) for a in asked]

    start = time.perf_counter()
    assert run(main()) == [[c.upper()] for c in "abcdef"]
    assert rec.most == 2 and len(rec.threads) == 2
    assert sorted(line for _, lines in rec.batches for line in lines) == list("abcdef")
    assert time.perf_counter() - start < 0.2 * 6  # not one batch after another


def test_with_one_worker_batches_never_overlap():
    rec = Overlap(0.02)

    async def main():
        b = Batcher(rec, max_tokens=1, max_wait=0.0)
        done = await asyncio.gather(*(b.submit("k", [c], [1]) for c in "abcd"))
        await b.close()
        return done

    assert [texts(d) for d in run(main())] == [["A"], ["B"], ["C"], ["D"]]
    assert rec.most == 1
