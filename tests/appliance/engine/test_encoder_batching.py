"""Encoder calls in sub-batches within a token budget: same results, bounded memory, stoppable."""

import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from appliance.engine.classifier import Classifier, softmax
from appliance.engine.embedder import Embedder
from appliance.engine.encoder_session import EncodeStopped, plan_batches
from appliance.engine.providers import RuntimeOptions
from appliance.errors import InvalidRequest
from appliance.model_package import open_package
from appliance.registry import load_tokenizer
from tests.conftest import REPO

CPU = RuntimeOptions(intra_op_threads=1)
WORDS = ["order", "parcel", "refund", "delivery", "customer", "invoice", "address", "shipping", "the", "and",
         "of", "to", "my", "it", "has", "not", "arrived", "please", "订单", "退款"]


def texts_of(count: int, max_words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words))) for _ in range(count)]


# minilm_fp32 (tests/conftest.py): the real all-MiniLM-L6-v2 at fp32. int8's dynamic activation
# scales depend on the whole batch, so only fp32 results can be compared across batchings.


def open_embedder(package, max_batch_tokens: int) -> Embedder:
    return Embedder(package, open_package(package), load_tokenizer(package), CPU, max_batch_tokens)


@pytest.mark.parametrize("lengths,budget", [
    ([5, 300, 12, 512, 40, 40, 7, 200], 1024),
    ([3] * 100, 64),
    ([600, 10], 256),  # longer than the budget: runs alone
    ([1], 16),
])
def test_plan_batches_keeps_each_padded_batch_within_budget(lengths, budget):
    batches = plan_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= budget or len(batch) == 1
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)  # sorted, so little padding


def test_sub_batched_embeddings_equal_one_batch(minilm_fp32):
    texts = texts_of(32, 200)
    one, small = open_embedder(minilm_fp32, 10**9), open_embedder(minilm_fp32, 512)
    lengths = [len(t) for t in small.encoder.tokenize(texts)]
    assert len(plan_batches(lengths, 512)) > 10
    expected, expected_tokens = one.embed(texts, normalize=True)
    vectors, tokens = small.embed(texts, normalize=True)
    assert tokens == expected_tokens == sum(lengths)
    assert np.min(np.sum(vectors * expected, axis=1)) > 1 - 1e-5


def test_the_callers_tokenizer_keeps_its_padding_and_truncation(minilm_fp32):
    tokenizer = load_tokenizer(minilm_fp32)
    tokenizer.enable_padding(length=64)
    tokenizer.enable_truncation(8)
    embedder = Embedder(minilm_fp32, open_package(minilm_fp32), tokenizer, CPU)
    assert tokenizer.padding["length"] == 64 and tokenizer.truncation["max_length"] == 8
    assert len(tokenizer.encode(" ".join(WORDS)).ids) == 64  # cut at 8, padded to 64: still the caller's settings
    assert len(embedder.encoder.tokenize([" ".join(WORDS)])[0]) > 8  # ours: nothing cut


def test_a_text_longer_than_the_model_reads_is_refused_naming_it(minilm_fp32):
    embedder = open_embedder(minilm_fp32, 8192)
    with pytest.raises(InvalidRequest) as info:
        embedder.embed(["fits", "order " * 600], normalize=True)
    assert info.value.field == "texts[1]"
    assert "512" in info.value.reason and "order" not in str(info.value)
    vectors, _ = embedder.embed(["order " * 510], normalize=True)  # 512 tokens with [CLS] and [SEP]
    assert vectors.shape == (1, 384)


def test_stop_ends_the_work_between_sub_batches(minilm_fp32):
    embedder = open_embedder(minilm_fp32, 64)
    runs = []
    run = embedder.encoder.run
    embedder.encoder.run = lambda *args, **kw: runs.append(1) or run(*args, **kw)
    with pytest.raises(EncodeStopped):
        embedder.embed(texts_of(20, 40), normalize=True, stop=lambda: bool(runs))
    assert len(runs) == 1


def test_classifier_sub_batches_give_the_one_batch_probabilities(models_dir):
    package = models_dir / "intents"  # the tiny BERT text classifier, fp32
    manifest = open_package(package)
    classifier = Classifier(package, manifest, load_tokenizer(package), CPU, max_batch_tokens=64)
    texts = texts_of(24, 12, seed=1)
    logits, _ = classifier.logits(texts)  # one padded batch
    ranked, tokens = classifier.classify(texts)
    assert tokens == int(classifier.encode(texts)[1].sum())
    for row, labels in zip(softmax(logits.astype(np.float64)), ranked):
        assert {name: score for name, score in labels} == pytest.approx(
            dict(zip(manifest.labels, row.tolist())), abs=1e-5)


MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from appliance.engine.embedder import Embedder
    from appliance.engine.providers import RuntimeOptions
    from appliance.model_package import open_package
    from appliance.registry import load_tokenizer

    def status(field):
        return next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith(field + ":"))

    package, budget = Path(sys.argv[1]), int(sys.argv[2])
    embedder = Embedder(package, open_package(package), load_tokenizer(package), RuntimeOptions(intra_op_threads=1), budget)
    embedder.embed(["warm-up"], normalize=False)
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    embedder.embed(["order " * 480] * 24, normalize=True)
    print(json.dumps({"before": before, "peak": status("VmHWM"), "after": status("VmRSS")}))
""")


def test_a_big_call_takes_bounded_memory_and_gives_it_back(minilm_fp32):
    # 24 texts of 482 tokens in one batch grew RSS by about 700 MB and kept it (CPU arena).
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(minilm_fp32), "2048"], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rss = json.loads(done.stdout)
    assert rss["peak"] - rss["before"] < 300, rss
    assert rss["after"] - rss["before"] < 64, rss
