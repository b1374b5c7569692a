#!/usr/bin/env python3
"""Runs every test binary of `cargo test`, three at a time but those that boot VMs, and reports as cargo
test does.

`cargo test` runs its test binaries one after another. Many of ours spend much of their time waiting
(etcd's fsyncs, subprocesses, servers on loopback, mmdebstrap's downloads), so those run three at a time
on 2 cores: two at a time kept 1.7 cores busy and took 10.2 min, three at a time 9.1 min with more to
do (the packaging test's Debian image and bundle_format's cpr 1.1 built from cold; 2-core AMD EPYC).
The binaries that boot VMs under QEMU's software emulation (QEMU_HARNESS) run alone: their VMs keep
both cores busy, and their boot timeouts assume the VMs are not starved (boot_ha's three VMs timed out
with another binary beside them, CI of 6f81250).

Builds with `cargo test --no-run` first (a compile error fails here, as in cargo test), then runs
the binaries from the repository root, as cargo does, with cargo's environment for them. Each
binary's output goes to target/test-logs/NAME.log; target/test.log gets them all, one after
another, for the summary line of scripts/test. Prints a line per binary as it ends, then the whole
output of every binary that failed. Exit status 1 if any failed (all run, as --no-fail-fast).

usage: scripts/lib/test-lanes.py   (scripts/test runs it after its builds: the build here is then a no-op)
"""

import json
import os
import subprocess
import sys
import threading
import time

LANES = 3
# A test binary boots VMs under QEMU when its source includes the QEMU harness.
QEMU_HARNESS = "common/qemu.rs"
# Run beside the test binaries, reported as they are: the doubles' own tests (tests/doubles/README.md).
OTHER_TESTS = [("kubeadm double self-test", ["python3", "-m", "unittest", "discover", "-s", "tests/doubles"])]


def test_binaries(repo):
    """(name, executable, boots VMs) of every test harness `cargo test` would run, in cargo's order."""
    build = subprocess.run(
        ["cargo", "test", "--no-run", "--quiet", "--message-format=json-render-diagnostics"],
        cwd=repo, stdout=subprocess.PIPE, text=True)
    if build.returncode != 0:
        sys.exit(f"tests: `cargo test --no-run` failed (exit {build.returncode}); the compiler's errors are above")
    binaries = []
    for line in build.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact" or not message.get("profile", {}).get("test"):
            continue
        target = message["target"]
        kind = target["kind"][0]
        name = target["name"] if kind == "test" else f"{target['name']} ({kind} unit tests)"
        with open(target["src_path"]) as source:
            boots_vms = kind == "test" and QEMU_HARNESS in source.read()
        binaries.append((name, message["executable"], boots_vms))
    return binaries


class Run:
    """One test command: a cargo test harness (`harness`: its summary is a `test result:` line) or
    another (its summary is its output's last line)."""

    def __init__(self, name, command, log, harness=True, boots_vms=False):
        self.name, self.command, self.log, self.harness, self.boots_vms = name, command, log, harness, boots_vms
        self.status = None
        self.seconds = 0.0
        self.result = ""

    def __call__(self, repo, env):
        started = time.monotonic()
        with open(self.log, "w") as out:
            self.status = subprocess.run(self.command, cwd=repo, env=env, stdout=out,
                                         stderr=subprocess.STDOUT).returncode
        self.seconds = time.monotonic() - started
        with open(self.log) as out:
            lines = [line.strip() for line in out if line.strip()]
        if self.harness:
            results = [line for line in lines if line.startswith("test result:")]
            self.result = results[-1] if results else "no `test result:` line (the binary crashed?)"
        else:
            self.result = lines[-1] if lines else "no output"

    @property
    def passed(self):
        return self.status == 0 and (not self.harness or self.result.startswith("test result: ok"))


def run_all(repo, runs, lanes):
    """Runs `runs` on `lanes` workers. A free worker takes the first VM binary if nothing runs, else the
    first other binary if no VM binary runs; so the VM binaries run first, one after another, alone."""
    env = dict(os.environ, CARGO=os.environ.get("CARGO", "cargo"), CARGO_MANIFEST_DIR=repo)
    pending = list(runs)
    lock = threading.Condition()
    running = []

    def startable():
        vms = [r for r in pending if r.boots_vms]
        others = [r for r in pending if not r.boots_vms]
        if vms and not running:
            return vms[0]
        if others and not any(r.boots_vms for r in running):
            return others[0]
        return None

    def take():
        with lock:
            while pending:
                run = startable()
                if run is not None:
                    pending.remove(run)
                    running.append(run)
                    return run
                lock.wait()
            return None

    def worker():
        while (run := take()) is not None:
            run(repo, env)
            with lock:
                running.remove(run)
                lock.notify_all()
                print(f"tests: {run.name}: {'ok' if run.passed else 'FAILED'} in {run.seconds:.0f} s: {run.result}",
                      flush=True)

    workers = [threading.Thread(target=worker) for _ in range(lanes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def main():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    logs = os.path.join(repo, "target", "test-logs")
    os.makedirs(logs, exist_ok=True)
    runs = [Run(name, [exe], os.path.join(logs, os.path.basename(exe) + ".log"), boots_vms=vms)
            for name, exe, vms in test_binaries(repo)]
    runs += [Run(name, command, os.path.join(logs, name.replace(" ", "-") + ".log"), harness=False)
             for name, command in OTHER_TESTS]
    started = time.monotonic()
    print(f"tests: {len(runs)} test commands, {LANES} at a time (those that boot VMs alone); logs in {logs}",
          flush=True)
    run_all(repo, runs, LANES)
    with open(os.path.join(repo, "target", "test.log"), "w") as all_logs:
        for run in runs:
            with open(run.log) as out:
                all_logs.write(f"     Running {run.name} ({' '.join(run.command)})\n{out.read()}\n")
    failed = [run for run in runs if not run.passed]
    for run in failed:
        print(f"\n==== {run.name} FAILED (exit {run.status}); its output ({run.log}):", flush=True)
        with open(run.log) as out:
            sys.stdout.write(out.read())
    print(f"tests: {len(runs) - len(failed)} of {len(runs)} test commands passed in "
          f"{(time.monotonic() - started) / 60:.1f} min" + (f"; failed: {', '.join(r.name for r in failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
