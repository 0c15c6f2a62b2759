"""`udaseg sweep` tables against hand-made runs, and `udaseg report` in headless Chromium."""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from udaseg.cli import main
from udaseg.data.label_spaces import get_label_space
from udaseg.reporting import load_run

TINY = [
    "model.width=4",
    "train.steps=4",
    "train.log_every=1",
    "train.eval_every=2",
    "train.checkpoint_every=4",
    "train.tensorboard=false",
    "data.batch_size=2",
    "data.num_workers=0",
]
TINY_TOY = "--size 64x128 --num-source 8 --num-target 6 --num-val 4 --workers 1".split()

# Hand-made per-class IoUs of three seeds (classes 0, 1, 2; the other 16 are 0).
HAND = {0: [0.5, 0.2, None], 1: [0.6, 0.2, 0.4], 2: [0.7, 0.5, 0.8]}


def write_fake_run(run_dir: Path, seed: int, ious: list[float | None]) -> None:
    space = get_label_space("cityscapes19")
    per_class = [*ious, *[0.0] * (space.num_classes - len(ious))]
    kept = [v for v in per_class if v is not None]
    final = {
        "label_space": space.name,
        "class_names": list(space.class_names),
        "per_class_iou": per_class,
        "miou": {"mIoU19": sum(kept) / len(kept)},
        "pixel_accuracy": 0.9,
        "num_images": 4,
    }
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "final.json").write_text(json.dumps(final))
    config = {"seed": seed, "run_dir": str(run_dir), "method": {"name": "source_only"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def test_sweep_table_of_hand_made_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sweep"
    for seed, ious in HAND.items():
        write_fake_run(out / f"seed{seed}", seed, ious)
    # Every seed has eval/final.json: the sweep reuses them and trains nothing.
    code = main(["sweep", "toy/source_only.yaml", "--seeds", "0", "1", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    table = json.loads((out / "table.json").read_text())
    assert table["seeds"] == [0, 1, 2]
    road, sidewalk, building = table["classes"][:3]
    assert road["name"] == "road"
    assert road["values"] == pytest.approx([50, 60, 70])
    assert road["mean"] == pytest.approx(60.0)
    assert road["std"] == pytest.approx(10.0)  # sqrt((10² + 0 + 10²) / 2)
    assert sidewalk["mean"] == pytest.approx(30.0)
    assert sidewalk["std"] == pytest.approx(math.sqrt((10**2 + 10**2 + 20**2) / 2))
    # An undefined IoU (null) is left out of its class's mean and std.
    assert building["values"][0] is None
    assert building["mean"] == pytest.approx(60.0)
    assert building["std"] == pytest.approx(math.sqrt(2 * 20**2))
    miou = [100 * (0.5 + 0.2) / 18, 100 * (0.6 + 0.2 + 0.4) / 19, 100 * (0.7 + 0.5 + 0.8) / 19]
    assert table["miou"]["mIoU19"]["values"] == pytest.approx(miou)
    assert table["miou"]["mIoU19"]["mean"] == pytest.approx(sum(miou) / 3)
    markdown = (out / "table.md").read_text()
    assert "| road | 50.00 | 60.00 | 70.00 | 60.00 ± 10.00 |" in markdown
    assert "| building | n/a | 40.00 | 80.00 | 60.00 ± 28.28 |" in markdown
    # The report of runs without checkpoints still has the table, curves are just absent.
    assert (out / "report" / "index.html").is_file()
    assert "60.0 ± 10.0" in (out / "report" / "index.html").read_text()


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    assert main(["report", str(unfinished), "--out", str(tmp_path / "report")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no eval/final.json" in error
    finished = tmp_path / "finished"
    write_fake_run(finished, 0, HAND[0])
    existing = tmp_path / "file"
    existing.write_text("")
    assert main(["report", str(finished), "--out", str(existing)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is a file" in error
    assert main(["sweep", "toy/source_only.yaml", "seed=3", "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def open_in_chromium(page: Path, profile: Path, screenshot: Path) -> dict:
    """Load `page` in headless Chromium over the DevTools protocol.

    Returns {"errors": [console errors and uncaught exceptions], "images": [{src, width}]}
    and saves a full-page screenshot.
    """
    import websocket

    command = [
        find_chromium(),
        *"--headless --no-sandbox --disable-gpu --disable-quic --no-first-run".split(),
        *"--disable-background-networking --disable-component-update --disable-sync".split(),
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "--window-size=1280,900",
        "about:blank",
    ]
    browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            assert time.time() < deadline, "chromium did not start"
            assert browser.poll() is None, "chromium exited"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            targets = json.loads(answer.read())
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        counter = iter(range(1, 1000))
        events: list[dict] = []

        def call(method: str, **params) -> dict:
            number = next(counter)
            socket.send(json.dumps({"id": number, "method": method, "params": params}))
            while True:
                message = json.loads(socket.recv())
                if message.get("id") == number:
                    assert "error" not in message, message
                    return message["result"]
                events.append(message)

        for domain in ("Runtime", "Log", "Page"):
            call(f"{domain}.enable")
        call("Page.navigate", url=page.resolve().as_uri())
        while not any(e.get("method") == "Page.loadEventFired" for e in events):
            events.append(json.loads(socket.recv()))
        check = "JSON.stringify([...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]))"
        images = json.loads(call("Runtime.evaluate", expression=check)["result"]["value"])
        size = call("Page.getLayoutMetrics")["cssContentSize"]
        shot = call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        socket.close()
    finally:
        browser.terminate()
        browser.wait(timeout=10)
    errors = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"] + [
        e["params"]["entry"]
        for e in events
        if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
    ]
    errors += [
        e["params"]
        for e in events
        if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error"
    ]
    return {"errors": errors, "images": images}


@pytest.mark.slow
def test_sweep_of_tiny_runs_and_report_in_chromium(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # No skip: `make test` installs Chromium first (`make chromium`), and websocket-client is
    # in the test extra; a machine without them fails here with the reason.
    assert find_chromium() is not None, (
        "no chromium: run `make chromium` (apt-get install chromium)"
    )
    import websocket  # noqa: F401  (websocket-client, from the test extra)

    toy = tmp_path / "toy"
    assert main(["make-toy", "--out", str(toy), *TINY_TOY]) == 0
    roots = [
        f"data.source.root={toy / 'source'}",
        f"data.target.root={toy / 'target'}",
        f"data.val.root={toy / 'target'}",
    ]
    out = tmp_path / "sweep"
    arguments = ["sweep", "toy/source_only.yaml", *roots, *TINY, "--out", str(out)]
    arguments += ["--seeds", "0", "1", "--parallel", "2", "--samples", "2"]
    assert main(arguments) == 0, capsys.readouterr().err
    runs = [load_run(out / f"seed{seed}") for seed in (0, 1)]
    assert [run.seed for run in runs] == [0, 1]
    table = json.loads((out / "table.json").read_text())
    assert table["miou"]["mIoU19"]["values"] == pytest.approx(
        [100 * run.result.miou["mIoU19"] for run in runs]
    )

    # Run again: both seeds are reused, nothing retrains.
    finals = [(out / f"seed{seed}" / "eval" / "final.json").stat().st_mtime for seed in (0, 1)]
    assert main(arguments + ["--no-report"]) == 0
    assert finals == [
        (out / f"seed{seed}" / "eval" / "final.json").stat().st_mtime for seed in (0, 1)
    ]

    report = out / "report"
    names = sorted(path.name for path in report.glob("*.png"))
    assert names == [
        "confusion_source_only.png",
        "curves_source_only.png",
        "per_class_iou.png",
        "samples_source_only.png",
    ]
    html = (report / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and 'src="/' not in html
    screenshot = Path(os.environ.get("UDASEG_REPORT_SCREENSHOT", tmp_path / "report.png"))
    found = open_in_chromium(report / "index.html", tmp_path / "profile", screenshot)
    assert found["errors"] == []
    assert sorted(src for src, _, _ in found["images"]) == names
    assert all(complete and width > 0 for _, complete, width in found["images"]), found
    assert screenshot.stat().st_size > 10_000


def test_recipe_stages_group_by_seed_folder() -> None:
    """Paths that differ only by the seed's folder are one config; another stage is not."""
    from udaseg.reporting import config_key

    def stage(seed: int, init_stage: str) -> dict:
        return {
            "seed": seed,
            "run_dir": f"runs/st/seed{seed}/self_training",
            "init": {"segmentor": f"runs/st/seed{seed}/{init_stage}/checkpoints/last.pt"},
        }

    assert config_key(stage(0, "source_only")) == config_key(stage(2, "source_only"))
    assert config_key(stage(0, "source_only")) != config_key(stage(0, "adabn"))
