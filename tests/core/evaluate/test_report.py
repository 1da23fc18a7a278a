"""The HTML report, the model card and the terminal summary, rendered from an evaluation record
of real predictions on real images; the HTML also in headless Chromium."""

import re

import numpy as np
import pytest
from sklearn.datasets import load_digits

from components.core.config.schema import EvaluateConfig
from components.core.data import report as data_report
from components.core.evaluate import blessing, card, charts, metrics as evaluation, report
from tests import chromium


@pytest.fixture(scope="module")
def record():
    """What the evaluate step records, for 3 digit classes with 80% right predictions, plus the
    exported formats the report step adds."""
    digits = load_digits()
    keep = digits.target < 3
    images = np.repeat(np.round(digits.images[keep] * 255 / 16).astype(np.uint8)[..., None],
                       3, -1)[:120]
    labels = digits.target[keep][:120]
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), len(labels))
    probabilities[np.arange(96), labels[:96]] += 3
    probabilities /= probabilities.sum(1, keepdims=True)
    classes = ["zero", "one", "two"]
    metrics = evaluation.classification_metrics(labels, probabilities, classes)
    blessed, checks = blessing.bless(metrics, EvaluateConfig(min_accuracy=0.7))
    return {
        "classes": classes, "metrics": metrics,
        "intervals": {**evaluation.bootstrap_intervals(labels, probabilities, 200),
                      "samples": 200},
        "blessed": blessed, "checks": checks,
        "blessing_reason": blessing.blessing_reason(blessed, checks), "baseline": None,
        "roc": None,
        "data": {"source": "/data/digits <&>", "fingerprint": "abc123",
                 "counts": {"train": {c: 40 for c in classes}, "test": {c: 40 for c in classes}},
                 "skipped": [{"path": "zero/bad.jpg", "reason": "truncated JPEG"}],
                 "converted": [{"path": "one/x.gif", "conversion": "P GIF -> RGB PNG"}]},
        "model": {"backbone": "mobilenet", "image_size": 32, "weights": "imagenet",
                  "detail": "keras download"},
        "training": {"head": {"history": {"step": [10, 20, 30], "train_loss": [1.0, 0.6, 0.4],
                                          "val_loss": [1.1, 0.8, 0.7]}, "l2": 0.01,
                              "steps_run": 30},
                     "finetune": {"history": {"loss": [0.5, 0.4], "val_loss": [0.7, 0.65],
                                              "accuracy": [0.8, 0.85],
                                              "val_accuracy": [0.75, 0.8]},
                                  "mode": "fine_tune", "chosen": "finetuned", "reason": "better",
                                  "trained_layers": ["a", "b"]}},
        "wrong": [{"index": i, "true": classes[labels[i]],
                   "predicted": classes[int(probabilities[i].argmax())],
                   "confidence": float(probabilities[i].max()),
                   "thumbnail": charts.thumbnail(images[i])}
                  for i in evaluation.most_confidently_wrong(labels, probabilities, 6)],
        "exports": {"saved_model_size_bytes": 2_600_000, "recommended": "fp16",
                    "keras_latency": {"latency_ms_median": 3.1, "latency_ms_p90": 3.5},
                    "tflite": {"float32": {"test_accuracy": 0.8, "size_bytes": 870_000,
                                           "latency_ms_median": 0.6, "latency_ms_p90": 0.7,
                                           "status": "accepted"},
                               "fp16": {"test_accuracy": 0.8, "size_bytes": 470_000,
                                        "latency_ms_median": 0.7, "latency_ms_p90": 0.8,
                                        "status": "accepted"},
                               "int8": {"test_accuracy": 0.75, "size_bytes": 320_000,
                                        "latency_ms_median": 0.6, "latency_ms_p90": 0.7,
                                        "status": "rejected"}},
                    "onnx": {"test_accuracy": 0.8, "size_bytes": 880_000,
                             "latency_ms_median": 0.5, "latency_ms_p90": 0.6,
                             "status": "accepted"},
                    "onnx_int8": {"test_accuracy": 0.79, "size_bytes": 300_000,
                                  "latency_ms_median": 0.4, "latency_ms_p90": 0.5,
                                  "status": "accepted"},
                    "recommended_onnx": "onnx_int8",
                    "recommended_onnx_reason": "the smallest accepted variant at most 2x as "
                                               "slow as onnx",
                    "tensorrt": {"status": "skipped", "reason": "no GPU"}},
    }


def test_html_is_self_contained_and_escaped(record):
    page = report.render_html(record)
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page)  # nothing fetched
    assert "/data/digits &lt;&amp;&gt;" in page  # user text escaped
    assert page.count("data:image/png;base64,") == len(record["wrong"]) == 6
    assert page.count("<svg") == 4  # three training curves and the reliability diagram
    assert "tflite fp16" in page and "(recommended)" in page and "skipped: no GPU" in page
    assert "<td>2.60 MB</td><td>3.10 / 3.50 ms</td>" in page  # the keras row
    assert "BLESSED" in page


def test_model_card_states_data_provenance_results_and_limits(record):
    text = card.render_model_card(record)
    low, high = record["intervals"]["accuracy"]
    assert f"{100 * low:.1f}-{100 * high:.1f}%" in text and "200 resamples" in text
    assert "ImageNet-pretrained" in text and "`zero/bad.jpg`: truncated JPEG" in text
    assert "| tflite int8 | 75.0% | 0.32 MB | 0.60 / 0.70 ms | rejected |" in text
    assert ("| onnx_int8 | 79.0% | 0.30 MB | 0.40 / 0.50 ms | accepted (recommended: the "
            "smallest accepted variant at most 2x as slow as onnx) |") in text
    assert "## Intended use" in text and "## Known limits" in text
    random_card = card.render_model_card({**record, "model": {**record["model"],
                                                              "weights": "random"}})
    assert "RANDOM initialisation" in random_card and "No pretrained weights" in random_card


def test_the_card_names_the_baseline_and_the_champion_challenger_verdict(record):
    explicit = {"uri": "/models/prod.keras", "metrics": record["metrics"]}
    text = card.render_model_card({**record, "baseline": explicit})
    assert "Baseline `/models/prod.keras`: accuracy" in text and "Champion" not in text
    challenged = card.render_model_card({
        **record, "baseline": {**explicit, "version": 4},
        "champion": {"model": "ants", "production_version": 4, "promote": "auto",
                     "comparable": True, "expected": "candidate",
                     "text": "is not blessed against production version 4: 0.80 vs 0.90"}})
    assert "Baseline (production version 4) `/models/prod.keras`" in challenged
    assert ("**Champion/challenger** (model registry, `ants`): this model is not blessed "
            "against production version 4: 0.80 vs 0.90. Outcome when registered: candidate "
            "(production stays version 4).") in challenged


def test_summary_text_has_verdict_metrics_and_formats(record):
    text = card.summary_text(record)
    assert text.startswith("BLESSED") and "95% CI" in text
    assert "tflite int8: 75.0%, 0.32 MB, rejected" in text


def test_report_renders_in_headless_chromium_without_errors(record, tmp_path):
    reason = chromium.unavailable_reason()
    if reason:
        pytest.skip(reason)
    path = tmp_path / "report.html"
    path.write_text(report.render_html(record), encoding="utf-8")
    driver = chromium.open_page(str(path))
    try:
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        assert driver.title == "tlpipe evaluation report"
        images = driver.find_elements("css selector", "img")
        assert len(images) == 6 and all(
            driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                  image) > 0 for image in images)
        tables = driver.find_elements("css selector", "table")
        assert len(tables) == 3  # confusion matrix, per class, exported formats
        confusion = tables[0].find_elements("css selector", "td")
        assert sum(int(cell.text) for cell in confusion) == record["metrics"]["examples"]
        assert len(driver.find_elements("css selector", "svg")) == 4
        assert "NOT BLESSED" not in driver.find_element("css selector", ".verdict").text
    finally:
        driver.quit()


def test_data_report_escapes_names_that_would_break_markdown():
    odd = ["cats/two\nlines.jpg", "cats/back`tick.png", "cats/pipe|star*.jpg"]
    manifest = {"source": "/data/my_photos", "classes": ["cats", "dogs|wolves"],
                "counts": {"train": {"cats": 3, "dogs|wolves": 2}},
                "image_sizes": {"min_width": 1, "max_width": 2, "median_width": 1,
                                "min_height": 1, "max_height": 2, "median_height": 1},
                "imbalance_ratio": 1.5, "fingerprint": "f",
                "skipped": [{"path": odd[0], "class": "cats", "reason": "not an image file"}],
                "converted": [], "label_conflicts": [], "odd_names": odd}
    text = data_report.render_data_report(manifest)
    lines = text.splitlines()
    assert "- `cats/two\\nlines.jpg`: not an image file" in lines  # one line, newline shown
    assert "- ``cats/back`tick.png``" in lines and "- `cats/pipe|star*.jpg`" in lines
    assert "| dogs\\|wolves | 2 |" in lines and "# Data report: /data/my\\_photos" in lines
    assert not [line for line in lines if line.startswith("lines.jpg")]


def test_the_report_shows_the_fine_tuning_recipe_and_the_search(record):
    tuned = {**record["training"]["finetune"],
             "recipe": {"epochs": 28, "learning_rate": 3e-4, "warmup_epochs": 2,
                        "unfreeze_fraction": 1.0, "min_crop_scale": 0.6, "class_weight": "none",
                        "weight_decay": 0.01, "selection": "last", "label_smoothing": 0.1,
                        "reasons": {"epochs": "about 50,000 images seen <over> 1,776",
                                    "learning_rate": "set in the config"}},
             "search": [{"trial": "learning_rate=0.0001 unfreeze_fraction=1 epochs=28",
                         "val_loss": 0.61, "val_accuracy": 0.8, "chosen": "finetuned",
                         "picked": False},
                        {"trial": "learning_rate=0.0003 unfreeze_fraction=1 epochs=28",
                         "val_loss": 0.52, "val_accuracy": 0.82, "chosen": "finetuned",
                         "picked": True}]}
    page = report.render_html({**record, "training": {**record["training"], "finetune": tuned}})
    recipe = page[page.index("Fine-tuning recipe"):page.index("Fine-tuning search")]
    assert "<th>epochs</th><td>28</td>" in recipe and "&lt;over&gt;" in recipe  # escaped
    trials = page[page.index("Fine-tuning search"):]
    assert trials.count("<tr><th>learning_rate=") == 2 and "0.5200" in trials
    assert "Fine-tuning recipe" not in report.render_html(record)  # older records: no section
    text = card.render_model_card({**record, "training": {**record["training"],
                                                           "finetune": tuned}})
    assert "- Recipe: 28 epochs, peak learning rate 0.0003 (AdamW, weight decay 0.01), 100% of " \
           "the backbone's layers, crops of 60% of the side or more" in text
    assert "- Search: 2 trials; shipped learning_rate=0.0003 unfreeze_fraction=1 epochs=28" in text
