#!/usr/bin/env bash
# The randomized fault run on release binaries, e.g.
#   scripts/fault-run.sh --orders 20000 --minutes 10 --seed 7 --db sqlite
#   scripts/fault-run.sh --orders 20000 --minutes 10 --seed 7 --db postgres   # DATABASE_URL: the server
# Every argument goes to ordersync-fault-run (--help lists them). Exit 0: every invariant held; 1: one broke
# (the seed, the invariant and the order's history are printed, the run's files kept); 2: setup failed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --quiet --bin ordersync --bin ordersync-fault-run
exec target/release/ordersync-fault-run --ordersync target/release/ordersync "$@"
