#!/usr/bin/env bash
# Loads the plugin bundles in the two headless test hosts and plays the issue's scenarios.
#
# The bundles are built in debug (so nice-plug's `assert_process_allocs` aborts on any allocation
# in `process`) with the `test-continuer` feature (a scripted continuation stands in for the model,
# so playback is checked exactly, at 8x real time), then again without it: the real built-in
# model, played in real time, has to answer on the bar line after the musician's pause. Both
# plugins of the bundle are played: the MIDI effect and Continuator Instrument. A saved state is
# loaded into a fresh instance (parameters and the take come back, Replay plays it). The
# test-continuer CLAP bundle's editor is also opened under Xvfb in three states and screenshotted
# (target/editor/editor-{empty,listening,variations}.png). The product bundle is rebuilt
# afterwards, played in real time, and soaked (many takes in a row):
#   cargo xtask bundle continuator --release
set -euo pipefail
cd "$(dirname "$0")/.."
# Where cargo puts its builds (CARGO_TARGET_DIR when set, as cargo itself reads it).
t="${CARGO_TARGET_DIR:-target}"
cargo xtask bundle continuator --features test-continuer
cargo build -p continuator-clap-host -p continuator-vst3-host
"$t"/debug/continuator-clap-host "$t"/bundled/Continuator.clap --require-continuation
"$t"/debug/continuator-clap-host "$t"/bundled/Continuator.clap --instrument --require-continuation
"$t"/debug/continuator-clap-host "$t"/bundled/Continuator.clap --state-roundtrip
# The editor, opened on a virtual X display (Mesa's software OpenGL) and screenshotted.
if ! command -v xvfb-run >/dev/null 2>&1; then
    echo "xvfb-run is missing (apt-get install xvfb xauth): the editor check needs it" >&2
    exit 1
fi
LIBGL_ALWAYS_SOFTWARE=1 xvfb-run -a -s "-screen 0 1280x1024x24" \
    "$t"/debug/continuator-clap-host "$t"/bundled/Continuator.clap \
    --open-editor "$t"/editor
"$t"/debug/continuator-vst3-host "$t"/bundled/Continuator.vst3 --require-continuation
"$t"/debug/continuator-vst3-host "$t"/bundled/Continuator.vst3 --instrument --require-continuation
cargo xtask bundle continuator
"$t"/debug/continuator-clap-host "$t"/bundled/Continuator.clap --model-continuation
"$t"/debug/continuator-vst3-host "$t"/bundled/Continuator.vst3 --model-continuation
# Takes in a row with the real model, loop jumps, stops and bypass in between: no hanging note, no
# unanswered phrase, resident memory flat. 200 keeps CI at ~2.5 min; `--soak 1000` is the full run.
"$t"/debug/continuator-clap-host "$t"/bundled/Continuator.clap --soak 200
