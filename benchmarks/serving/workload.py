"""The customer-service workload: one long shared system prompt, conversations that resend their
history, Poisson arrivals. Pure (numpy's seeded generator and a token counter passed in), so every
contender replays exactly the same requests and a test can check the shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

TokenCounter = Callable[[str], int]

PRODUCTS = ("the Aurora kettle", "the Nimbus router", "the Harbor desk lamp", "the Summit backpack",
            "the Breeze fan", "the Atlas office chair", "the Pixel photo printer", "the Orbit smart plug")
TOPICS = ("returns", "refunds", "shipping", "warranty repairs", "account security", "invoices",
          "exchanges", "gift cards", "store pickup", "damaged parcels")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
POLICY_SENTENCES = (
    "Customers may ask about {topic} for {product} within {n} days of delivery.",
    "Agents confirm the order number before they discuss {topic}, and never read out a full card number.",
    "{product} carries a warranty of {n} months; proof of purchase is the order confirmation email.",
    "Requests about {topic} received after 5 pm are answered by {day} noon at the latest.",
    "A replacement for {product} ships within {n} working days once the faulty unit is scanned at the depot.",
    "If a parcel with {product} arrives damaged, the customer sends two photos and keeps the packaging.",
    "Store credit for {topic} never expires, and it can be combined with one discount code per order.",
    "Escalate to a supervisor when a customer mentions {topic} for the third time in one conversation.",
    "{product} is sold out in the north warehouse until {day}; offer the south warehouse at no extra cost.",
    "Be brief and friendly, use the customer's first name once, and end with one clear next step.",
)
QUESTIONS = (
    "Hi, I bought {product} last week and it stopped working. Can I get {topic}?",
    "How long does {topic} take for {product}?",
    "My order with {product} has not arrived yet, what should I do?",
    "Can you explain your policy on {topic}? I am not sure I qualify.",
    "Is {product} back in stock before {day}?",
    "I was charged twice for {product}. Who handles {topic}?",
)
FOLLOW_UPS = ("Thanks. And what if it happens again after {n} days?", "Okay, can you do that before {day}?",
              "Does that also apply to {product}?", "Great, and how do I track {topic}?",
              "Sorry, one more thing: is there a fee for {topic}?")


@dataclass(frozen=True)
class WorkloadSpec:
    conversations: int = 40
    rate_per_s: float = 0.5           # new conversations per second (Poisson)
    seed: int = 0
    system_tokens: int = 1000
    turns: tuple[int, int] = (1, 4)
    user_tokens: tuple[int, int] = (10, 60)
    answer_tokens: tuple[int, int] = (32, 160)
    think_s: float = 0.0              # after an answer, before the next turn of its conversation


@dataclass(frozen=True)
class Turn:
    user: str
    answer_tokens: int


@dataclass(frozen=True)
class Conversation:
    index: int
    start_s: float                    # offset from the start of the run
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Workload:
    spec: WorkloadSpec
    system: str
    conversations: tuple[Conversation, ...]

    def requests(self) -> int:
        return sum(len(c.turns) for c in self.conversations)


def _fill(rng: np.random.Generator, template: str) -> str:
    return template.format(product=rng.choice(PRODUCTS), topic=rng.choice(TOPICS), day=rng.choice(DAYS),
                           n=int(rng.integers(2, 60)))


def grow_text(rng: np.random.Generator, templates: tuple[str, ...], target_tokens: int,
              count_tokens: TokenCounter, first: str = "") -> str:
    """Sentences from `templates` until the text reaches `target_tokens`, then cut word by word back
    to the target, so lengths follow the draw rather than the sentence grain."""
    text = first or _fill(rng, str(rng.choice(templates)))
    while count_tokens(text) < target_tokens:
        text += " " + _fill(rng, str(rng.choice(templates)))
    words = text.split(" ")
    while len(words) > 1 and count_tokens(" ".join(words[:-1])) >= target_tokens:
        words.pop()
    return " ".join(words)


def system_prompt(seed: int, target_tokens: int, count_tokens: TokenCounter) -> str:
    """Readable policy and product text; a different seed gives an unseen prefix of the same length
    (unseen from its first tokens on: the seed opens it, so no cached block of another matches)."""
    rng = np.random.default_rng([seed, 1])
    head = f"Policy sheet {seed}. You are the support assistant of Northwind Home, a small online shop."
    return grow_text(rng, POLICY_SENTENCES, target_tokens, count_tokens, first=head)


def poisson_arrivals(rng: np.random.Generator, rate_per_s: float, count: int) -> np.ndarray:
    """Arrival offsets (s) of a Poisson process: cumulative exponential gaps, the first at 0."""
    if rate_per_s <= 0:
        raise ValueError("rate_per_s must be positive")
    gaps = rng.exponential(1.0 / rate_per_s, count)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def make_workload(spec: WorkloadSpec, count_tokens: TokenCounter) -> Workload:
    """The same spec and counter always give the same workload: arrivals come from their own stream,
    so changing the rate moves the arrivals and nothing else."""
    arrivals = poisson_arrivals(np.random.default_rng([spec.seed, 2]), spec.rate_per_s, spec.conversations)
    rng = np.random.default_rng([spec.seed, 3])
    conversations = []
    for index, start in enumerate(arrivals):
        turns = []
        for turn in range(int(rng.integers(spec.turns[0], spec.turns[1] + 1))):
            target = int(rng.integers(spec.user_tokens[0], spec.user_tokens[1] + 1))
            user = grow_text(rng, QUESTIONS if turn == 0 else FOLLOW_UPS, target, count_tokens)
            turns.append(Turn(user, int(rng.integers(spec.answer_tokens[0], spec.answer_tokens[1] + 1))))
        conversations.append(Conversation(index, float(start), tuple(turns)))
    return Workload(spec, system_prompt(spec.seed, spec.system_tokens, count_tokens), tuple(conversations))


def history(system: str, turns: tuple[Turn, ...], answers: list[str]) -> list[tuple[str, str]]:
    """The messages of the next turn: the system prompt, every earlier turn with the answer the
    contender actually gave (as a chat client resends it), then the new question."""
    messages = [("system", system)]
    for turn, answer in zip(turns, answers):
        messages += [("user", turn.user), ("assistant", answer or " ")]
    messages.append(("user", turns[len(answers)].user))
    return messages
