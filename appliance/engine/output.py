"""What a sampled token becomes: the request's next TokenEvent, and whether it ends the request.

The output stage owns each request's sampler state, detokenizer and stop strings and the end rules
(end tokens, stop strings, max_tokens, the context's end, min_tokens), and samples a step's rows
together (batch_sampler.py). It never touches a runner or the scheduler, so a test drives it with a
tokenizer and hand-picked tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.batch_sampler import BatchSampler
from appliance.engine.detokenizer import IncrementalDetokenizer
from appliance.engine.request import FINISH_REASONS, GenerationRequest, RequestStatus, TokenEvent
from appliance.engine.sampling import Choice, RequestSampler
from appliance.engine.stop import StopStrings


@dataclass
class RequestStream:
    """Per-request output state: sampling, detokenizing, stop strings."""

    sampler: RequestSampler
    detok: IncrementalDetokenizer
    stops: StopStrings
    ends: tuple[int, ...]  # the tokens that would end the request, blocked until min_tokens


class OutputStage:
    def __init__(self, tokenizer: Tokenizer, eos_token_ids: frozenset[int], context_length: int):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.context_length = context_length
        self.sampler = BatchSampler()

    def open(self, request: GenerationRequest) -> None:
        params = request.params
        ends = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
        request.state = RequestStream(RequestSampler(params),
                                      IncrementalDetokenizer(self.tokenizer, request.prompt_ids),
                                      StopStrings(params.stop), tuple(sorted(ends)) if params.min_tokens else ())

    def blocked(self, request: GenerationRequest) -> tuple[int, ...]:
        """Tokens that would end the request before it has min_tokens."""
        return request.state.ends if len(request.output_ids) < request.params.min_tokens else ()

    def choose(self, requests: Sequence[GenerationRequest], logits: np.ndarray) -> list[Choice]:
        """Each request's next token; logits: [n, vocab], row i for requests[i]."""
        return self.sampler.sample(logits, [r.state.sampler for r in requests], [self.blocked(r) for r in requests])

    def accept(self, request: GenerationRequest, choice: Choice) -> TokenEvent:
        """The event for `choice`, already appended to request.output_ids; one with a finish_reason
        ends the request (FINISHED_STATES names the state)."""
        params, stream, token = request.params, request.state, choice.token_id
        now = time.monotonic_ns()
        request.timings.first_token_ns = request.timings.first_token_ns or now
        request.timings.last_token_ns = now
        logprobs = ((choice.logprob, choice.top_logprobs),) if choice.logprob is not None else ()
        if (token in self.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
            # The end token itself is not text; what was held back (a partial character or a
            # prefix of a stop string that never completed) is.
            return self._last(request, RequestStatus.FINISHED_STOPPED, (token,), logprobs, self._held(stream))
        text, stop_hit = stream.stops.push(stream.detok.push(token))
        if stop_hit is not None:
            return self._last(request, RequestStatus.FINISHED_STOPPED, (token,), logprobs, text)
        if len(request.output_ids) >= params.max_tokens or request.cached_tokens + 1 >= self.context_length:
            return self._last(request, RequestStatus.FINISHED_LENGTH, (token,), logprobs, text + self._held(stream))
        return TokenEvent((token,), text, logprobs=logprobs)

    def interrupted(self, request: GenerationRequest, status: RequestStatus) -> TokenEvent:
        """The last event of a request ended from outside (cancelled, past its deadline): what the
        stream held back is still the caller's text."""
        stream = request.state
        text = self._held(stream) if stream is not None else ""
        return self._last(request, status, (), (), text)

    @staticmethod
    def failed(error: Exception) -> TokenEvent:
        return TokenEvent((), "", finish_reason=FINISH_REASONS[RequestStatus.FINISHED_ERROR], error=error)

    @staticmethod
    def _held(stream: RequestStream) -> str:
        return stream.stops.push(stream.detok.flush())[0] + stream.stops.flush()

    @staticmethod
    def _last(request: GenerationRequest, status: RequestStatus, last_ids: tuple[int, ...], logprobs,
              text: str) -> TokenEvent:
        return TokenEvent(last_ids, text, finish_reason=FINISH_REASONS[status],
                          prompt_tokens=len(request.prompt_ids), completion_tokens=len(request.output_ids),
                          timings=request.timings, logprobs=logprobs)
