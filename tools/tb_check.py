#!/usr/bin/env python3
"""TensorBoard event files of `train.tensorboard: true`, read back with the tensorboard package.

    tools/tb_check.py build/ssmtrain [--workdir DIR]

Trains configs/quickstart.yaml for 20 steps on the CPU (log every 5, evaluate every 10,
stop at 12 with --max-steps, resume to 20: the resumed run writes a second event file),
then checks with tensorboard's own code that

  - every record's length and data CRCs verify (tensorboard's PyRecordReader raises
    DataLossError otherwise) and every record parses as an Event whose re-serialization by
    protobuf is the same bytes (so the hand-written encoder writes canonical protobuf);
  - each file begins with file_version "brain.Event:2"; the resumed file then holds a
    session_log START at step 12;
  - EventAccumulator over the run directory lists the scalars train/loss, train/lr,
    train/grad_norm, train/tokens_per_s, val/loss and val/bpb, with the steps and values of
    metrics.jsonl (float32 rounding of the f64 records: relative 2^-24).

Exit codes: 0 passed, 1 a check failed, 77 tensorboard is not installed.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New
except ImportError as e:
    print(f"tb_check: skipped: {e}")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []


def check(ok, what):
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def records(path):
    reader = PyRecordReader_New(path.encode())
    out = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return out
        out.append(reader.record())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ssmtrain")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="tb_check_")
    run_dir = os.path.join(workdir, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    base = [args.ssmtrain, "train", os.path.join(ROOT, "configs/quickstart.yaml"), "--run-dir", run_dir, "--quiet",
            "budget.steps=20", "schedule.warmup_steps=2", "train.log_every=5", "train.eval_every=10",
            "train.sample_tokens=0", "train.checkpoint_every=4", "train.tensorboard=true", "train.seq_len=64"]
    subprocess.run(base + ["--max-steps", "12"], check=True)
    files = sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*")))
    if len(files) == 1:
        # Event files are named by the second they were created: a resume within the same
        # second appends to the same name, so wait for the next one.
        import time
        time.sleep(1.1)
    subprocess.run(base + ["--resume", "auto"], check=True)
    files = sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*")))
    check(len(files) == 2, f"two event files (first run, resumed run): {[os.path.basename(f) for f in files]}")

    for i, f in enumerate(files):
        try:
            recs = records(f)
        except errors.DataLossError as e:
            check(False, f"{os.path.basename(f)}: CRC check failed: {e}")
            continue
        events = [event_pb2.Event.FromString(r) for r in recs]
        canonical = all(e.SerializeToString() == r for e, r in zip(events, recs))
        check(canonical, f"{os.path.basename(f)}: {len(recs)} records, CRCs verify, each the canonical protobuf bytes")
        check(events[0].file_version == "brain.Event:2", f"{os.path.basename(f)}: first event file_version "
              f"'{events[0].file_version}'")
        if i == 1:
            starts = [e.step for e in events if e.HasField("session_log")]
            check(starts == [12] and events[1].session_log.status == event_pb2.SessionLog.START,
                  f"resumed file: session_log START at steps {starts}")

    acc = event_accumulator.EventAccumulator(run_dir)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss", "val/bpb"}
    check(want <= tags, f"scalars present: {sorted(tags)}")

    records_jsonl = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    for tag, split, key in [("train/loss", None, "loss"), ("train/lr", None, "lr"), ("val/loss", "val", "loss"),
                            ("val/bpb", "val", "bpb")]:
        ref = [(r["step"], r[key]) for r in records_jsonl if r.get("split") == split]
        got = [(e.step, e.value) for e in acc.Scalars(tag)] if tag in tags else []
        ok = len(got) == len(ref) and all(s == rs and abs(v - rv) <= 2 ** -24 * abs(rv) * 2
                                          for (s, v), (rs, rv) in zip(got, ref))
        check(ok, f"{tag}: steps {[s for s, _ in got]} and values match metrics.jsonl "
              f"(first {got[0][1] if got else None:.6g} vs {ref[0][1] if ref else None:.6g})")

    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        print(f"tb_check: {len(failures)} failed")
        return 1
    print("tb_check: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
