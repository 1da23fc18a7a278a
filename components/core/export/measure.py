"""Figures every exported format is judged by: accuracy drop gate, agreement with the
Keras model, batch-1 and batch-32 latency.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from components.core.config.schema import RECOMMEND_POLICIES


def gate(reference_accuracy: float, variants: dict, max_drop_points: float,
         min_agreement: float = 0.0) -> None:
    """Marks each of `variants` ({name: {"test_accuracy", "size_bytes", "top1_agreement",
    ...}}) "accepted" or "rejected" in place, with its accuracy drop in percentage points below
    `reference_accuracy` (the float model's test accuracy in [0, 1]) and, when rejected, the
    "reason". A variant is rejected when it drops more than `max_drop_points`, or when its top-1
    agreement with the float Keras model (share of test images given the same class, in [0, 1])
    is below `min_agreement`: accuracy alone can hide a model that swaps many predictions both
    ways. ValueError when none is accepted."""
    for figures in variants.values():
        drop = round((reference_accuracy - figures["test_accuracy"]) * 100, 4)
        figures["accuracy_drop_points"] = drop
        reasons = []
        if drop > max_drop_points:
            reasons.append(f"{drop:g} points below the float model's accuracy (at most "
                           f"{max_drop_points:g}: export.max_accuracy_drop)")
        if figures.get("top1_agreement", 1.0) < min_agreement:
            reasons.append(f"agrees with the float model on {figures['top1_agreement']:.1%} of "
                           f"test images (at least {min_agreement:.0%}: export.min_agreement)")
        figures["status"] = "rejected" if reasons else "accepted"
        if reasons:
            figures["reason"] = "; ".join(reasons)
    if not any(figures["status"] == "accepted" for figures in variants.values()):
        raise ValueError(f"every variant lost more than {max_drop_points} points or agrees "
                         f"with the float model less than export.min_agreement; raise "
                         f"export.max_accuracy_drop, lower export.min_agreement or include the "
                         f"float32 reference")


def recommend(variants: dict, policy: str, reference: str, max_slowdown: float
              ) -> tuple[str, str]:
    """The accepted variant (see `gate`) to ship, by `policy`, and why, in one sentence:
    - "balanced": the smallest whose median latency is at most `max_slowdown` (>= 1) times
      the float `reference` variant's (a quantized model 30x slower than the float one is not
      worth the bytes it saves); the fastest accepted one if none is that fast;
    - "smallest": the smallest (ties: the more accurate);
    - "fastest": the lowest median latency (ties: the smaller).
    Latencies are batch-1 on the CPU of the machine that ran the step."""
    if policy not in RECOMMEND_POLICIES:
        raise ValueError(f"unknown export.recommend {policy!r}; use one of "
                         f"{RECOMMEND_POLICIES}")
    accepted = {name: figures for name, figures in variants.items()
                if figures["status"] == "accepted"}

    def size(name):
        return accepted[name]["size_bytes"], -accepted[name]["test_accuracy"]

    def speed(name):
        return accepted[name]["latency_ms_median"], accepted[name]["size_bytes"]

    if policy == "smallest":
        return (min(accepted, key=size),
                "the smallest accepted variant (export.recommend: smallest)")
    fastest = min(accepted, key=speed)
    if policy == "fastest":
        return fastest, "the fastest accepted variant (export.recommend: fastest)"
    limit = max_slowdown * variants[reference]["latency_ms_median"]
    quick = [name for name in accepted if accepted[name]["latency_ms_median"] <= limit]
    if not quick:
        return fastest, (f"no accepted variant is within {max_slowdown:g}x the {reference} "
                         f"model's latency: the fastest one (export.recommend: balanced)")
    return min(quick, key=size), (
        f"the smallest accepted variant at most {max_slowdown:g}x as slow as {reference} "
        f"({limit:.2f} ms/image here; export.recommend: balanced, export.max_slowdown)")


def latency_summary(latencies_ms: np.ndarray) -> dict:
    """Median and 90th percentile of per-image latencies (milliseconds)."""
    return {"latency_ms_median": float(np.median(latencies_ms)),
            "latency_ms_p90": float(np.percentile(latencies_ms, 90))}


def timed(classify_one, images) -> tuple[np.ndarray, np.ndarray]:
    """Runs `classify_one` (uint8 image (H, W, 3) -> probabilities (C,)) on each image of
    `images` (an array or any iterable of images, e.g. a cache.SplitImages) after one warm-up
    call on the first. Returns (probabilities (N, C), latency per image in ms (N,))."""
    remaining = iter(images)
    first = next(remaining)
    classify_one(first)
    outputs, latencies = [], []
    for image in itertools.chain([first], remaining):
        started = time.perf_counter()
        outputs.append(classify_one(image))
        latencies.append((time.perf_counter() - started) * 1000)
    return np.stack(outputs), np.array(latencies)


def batch_latency(classify, images: np.ndarray, batch_size: int = 32, repeats: int = 5) -> float:
    """Median wall time in milliseconds of `classify` (uint8 images (N, H, W, 3) -> (N, C)) on
    one batch of `batch_size` images (the first ones, repeated if there are fewer), over
    `repeats` runs after one warm-up run."""
    batch = np.ascontiguousarray(np.resize(images[:batch_size],
                                           (batch_size, *images.shape[1:])))
    classify(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        classify(batch)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """How closely `candidate` probabilities (N, C) follow `reference`: top-1 agreement in [0, 1]
    and the maximum absolute difference."""
    return {"top1_agreement": float(np.mean(reference.argmax(1) == candidate.argmax(1))),
            "max_abs_diff": float(np.max(np.abs(reference - candidate)))}


KERAS_TIMED_IMAGES = 50  # the Keras model's latency: its median over the first 50 is enough


def runtime_figures(classify, images, labels: np.ndarray, reference: np.ndarray,
                    **facts) -> dict:
    """Test accuracy, agreement with the Keras `reference`, batch-1 latency (median, p90) and
    batch-32 latency (median) of `classify` (uint8 images (B, H, W, 3) -> probabilities (B, C))
    on `images` (N, H, W, 3: an array or a cache.SplitImages, read in batches), merged with
    `facts`."""
    probabilities = in_batches(classify, images)
    _, latency = timed(lambda image: classify(image[None])[0], images)
    return {**facts, "test_accuracy": accuracy(probabilities, labels),
            **agreement(reference, probabilities), **latency_summary(latency),
            "latency_ms_batch32_median": batch_latency(classify, images, 32)}


def in_batches(classify, images, batch_size: int = 256) -> np.ndarray:
    """`classify` (uint8 (B, H, W, 3) -> (B, C)) over `images` (an array, or a
    cache.SplitImages read from disk one batch at a time), `batch_size` images per call;
    returns (N, C)."""
    if hasattr(images, "batches"):
        chunks = images.batches(batch_size)
    else:
        chunks = (images[start:start + batch_size] for start in range(0, len(images), batch_size))
    return np.concatenate([classify(batch) for batch in chunks])


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1] of probabilities (N, C) against integer labels (N,)."""
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))
