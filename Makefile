# The two commands a fresh machine needs (each installs what it needs first):
#   make serve  - the main job: the built-in `tiny` model playing endlessly to the default audio
#                 device (the null output where there is none); type commands on stdin
#   make test   - the whole test suite (what CI runs)
.PHONY: serve test setup demo

setup:
	@bash scripts/setup.sh

serve: setup
	.venv/bin/musicgen-live serve --model tiny

demo: setup
	@mkdir -p out
	.venv/bin/musicgen-live render --model tiny --prompt "demo: random weights, this is noise" --seconds 10 --out out/tiny-demo.wav --codes-out out/tiny-demo.npy

test: setup
	.venv/bin/python -m pytest -q
